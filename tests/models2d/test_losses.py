"""Each loss against values computed by hand with ``math`` on fixed logits; the gradient penalty
against an explicit per-sample autograd computation and a closed form."""

from __future__ import annotations

import math

import pytest
import torch

from medvol.models.gan2d.losses import (discriminator_loss, feature_matching, generator_loss,
                                        gradient_penalty)

REAL = [2.0, -1.0]
FAKE = [0.5, -3.0]


def _bce(x: float, target: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


EXPECTED_D = {
    "bce": (_mean(_bce(x, 1) for x in REAL), _mean(_bce(x, 0) for x in FAKE)),
    "lsgan": (0.5 * _mean((x - 1) ** 2 for x in REAL), 0.5 * _mean(x ** 2 for x in FAKE)),
    "wgan": (-_mean(REAL), _mean(FAKE)),
    "wgan-gp": (-_mean(REAL), _mean(FAKE)),
    "hinge": (_mean(max(0, 1 - x) for x in REAL), _mean(max(0, 1 + x) for x in FAKE)),
}
EXPECTED_G = {
    "bce": _mean(_bce(x, 1) for x in FAKE),
    "lsgan": 0.5 * _mean((x - 1) ** 2 for x in FAKE),
    "wgan": -_mean(FAKE), "wgan-gp": -_mean(FAKE), "hinge": -_mean(FAKE),
}


def test_expected_values_by_hand():
    # The tables above, once more as plain numbers (so a wrong helper cannot hide a wrong loss).
    assert EXPECTED_D["bce"] == pytest.approx((0.720095, 0.511332), abs=1e-6)
    assert EXPECTED_D["lsgan"] == (1.25, 2.3125)
    assert EXPECTED_D["hinge"] == (1.0, 0.75)
    assert EXPECTED_G["bce"] == pytest.approx(1.761332, abs=1e-6)
    assert EXPECTED_G["lsgan"] == 4.0625


@pytest.mark.parametrize("kind", list(EXPECTED_D))
def test_discriminator_loss(kind):
    real, fake = discriminator_loss(kind, torch.tensor(REAL), torch.tensor(FAKE))
    assert (float(real), float(fake)) == pytest.approx(EXPECTED_D[kind], abs=1e-6)


@pytest.mark.parametrize("kind", list(EXPECTED_G))
def test_generator_loss(kind):
    assert float(generator_loss(kind, torch.tensor(FAKE))) == pytest.approx(EXPECTED_G[kind], abs=1e-6)


@pytest.mark.parametrize("kind, expected", [
    ("bce", _mean(_bce(x, 0.9) for x in REAL)),
    ("lsgan", 0.5 * _mean((x - 0.9) ** 2 for x in REAL)),
])
def test_label_smoothing(kind, expected):
    real, _ = discriminator_loss(kind, torch.tensor(REAL), torch.tensor(FAKE), real_target=0.9)
    assert float(real) == pytest.approx(expected, abs=1e-6)


def test_unknown_loss():
    with pytest.raises(ValueError):
        discriminator_loss("nope", torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError):
        generator_loss("nope", torch.zeros(1))


def _critic():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, 2, 1), torch.nn.ELU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 4 * 4, 1)).double()


def test_gradient_penalty_matches_per_sample_autograd():
    critic = _critic()
    g = torch.Generator().manual_seed(1)
    real = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    fake = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.rand(4, generator=g, dtype=torch.float64)

    penalty = gradient_penalty(lambda x: critic(x).reshape(-1), real, fake, eps)
    grads = torch.autograd.grad(penalty, list(critic.parameters()), allow_unused=True)

    terms = []
    for b in range(4):
        x = (eps[b] * real[b:b + 1] + (1 - eps[b]) * fake[b:b + 1]).requires_grad_(True)
        (gx,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        terms.append((torch.sqrt((gx ** 2).sum()) - 1) ** 2)
    explicit = torch.stack(terms).mean()
    explicit_grads = torch.autograd.grad(explicit, list(critic.parameters()), allow_unused=True)

    assert penalty.item() == pytest.approx(explicit.item(), rel=1e-6)
    assert penalty.item() > 1e-3
    # The last bias does not change the input gradient: no gradient in either.
    assert grads[-1] is None and explicit_grads[-1] is None
    for a, b in zip(grads[:-1], explicit_grads[:-1]):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-8)


def test_gradient_penalty_linear_critic_closed_form():
    """For D(x) = <w, x> the gradient is w everywhere: GP = (||w|| - 1)^2."""
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]]).reshape(1, 1, 2, 2)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    assert float(gradient_penalty(critic, real, fake, torch.rand(3))) == pytest.approx(16.0)


def test_feature_matching():
    fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]])   # batch means 2, 3
    real = torch.tensor([[0.0, 0.0], [2.0, 2.0]])   # batch means 1, 1
    assert float(feature_matching(fake, real)) == pytest.approx((1 + 4) / 2)
