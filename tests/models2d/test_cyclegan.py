"""cyclegan's objective pieces: the cycle-consistency term against closed forms, the image pool,
the options, and translation (generate) checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medvol.errors import MedvolError
from medvol.models import build
from medvol.models.gan2d.cyclegan import ImagePool, cycle_losses
from medvol.models.gan2d.pix2pix import receptive_field


def _images(seed: int, batch: int = 3, side: int = 16) -> torch.Tensor:
    return torch.rand(batch, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Shift(nn.Module):
    """A generator that adds a fixed image ``delta``: its cycle with the identity is off by |delta|."""

    def __init__(self, delta: torch.Tensor):
        super().__init__()
        self.delta = delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta


def test_cycle_and_identity_terms_are_zero_for_identity_generators():
    a, b = _images(0), _images(1)
    fake_b, fake_a, cycle, identity = cycle_losses(nn.Identity(), nn.Identity(), a, b)
    assert torch.equal(fake_b, a) and torch.equal(fake_a, b)
    assert cycle.item() == 0.0 and identity.item() == 0.0


@pytest.mark.parametrize("scale", [0.01, 0.1, 0.5])
def test_cycle_term_grows_with_a_perturbation_as_its_closed_form(scale):
    a, b = _images(0), _images(1)
    delta = scale * _images(7, batch=1)
    # G.AB adds delta, G.BA is the identity: both cycles and both identity terms are off by delta.
    _, _, cycle, identity = cycle_losses(Shift(delta), nn.Identity(), a, b)
    expected = 2 * delta.abs().mean().item()
    assert cycle.item() == pytest.approx(expected, rel=1e-5)
    assert identity.item() == pytest.approx(delta.abs().mean().item(), rel=1e-5)
    # An inverse pair cycles back exactly although neither is the identity.
    _, _, cycle, identity = cycle_losses(Shift(delta), Shift(-delta), a, b)
    assert cycle.item() == pytest.approx(0.0, abs=1e-6)
    assert identity.item() == pytest.approx(2 * delta.abs().mean().item(), rel=1e-5)


def test_image_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(4, 8)
    g = torch.Generator().manual_seed(0)
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    assert torch.equal(pool.query(first, g), first)  # filling: every fake goes through
    assert int(pool.count) == 4 and torch.equal(pool.images, first)
    returned_old = 0
    for step in range(50):
        new = torch.full((1, 1, 8, 8), 100.0 + step)
        before = pool.images.clone()
        out = pool.query(new, g)
        if torch.equal(out, new):  # passed through, the pool unchanged
            assert torch.equal(pool.images, before)
        else:  # a stored fake came back and the new one took its slot
            returned_old += 1
            slot = int((before[:, 0, 0, 0] == out[0, 0, 0, 0]).nonzero()[0])
            assert torch.equal(pool.images[slot], new[0])
            assert int((pool.images != before).any(dim=(1, 2, 3)).sum()) == 1
    assert 15 <= returned_old <= 35  # probability 1/2 over 50 draws
    assert ImagePool(0, 8).query(first, g) is first  # pool_size 0: the newest fakes only
    assert {"images", "count"} <= set(pool.state_dict())  # checkpoints carry the pool


def test_patch_option_sets_the_discriminators_receptive_field():
    for patch in (10, 22, 46):
        system = build("cyclegan", 32, base_width=4, patch=patch)
        for d in system.D.values():
            assert receptive_field(list(d.net)) == patch
    with pytest.raises(MedvolError, match="patch"):
        build("cyclegan", 32, base_width=4, patch=70)
    for bad in ({"cycle_weight": -1.0}, {"identity": float("nan")}, {"pool_size": -1}, {"blocks": 1.5}):
        with pytest.raises(MedvolError):
            build("cyclegan", 32, base_width=4, **bad)


def test_published_generators_have_six_or_nine_blocks():
    with torch.device("meta"):
        small, large = build("cyclegan", 128), build("cyclegan", 256)
    count = lambda s: sum(1 for m in s.G["AB"].modules() if type(m).__name__ == "ResidualBlock")  # noqa: E731
    assert count(small) == 6 and count(large) == 9


def test_translation_is_per_image_and_directional():
    torch.manual_seed(0)
    system = build("cyclegan", 32, base_width=4)
    images = _images(3, batch=4, side=32)
    z = system.sample_latent(4)
    ab = system.generate(z, images=images, direction="AB")
    ba = system.generate(z, images=images, direction="BA")
    assert ab.shape == (4, 2, 32, 32) and torch.equal(ab[:, 1:], images)
    assert not torch.equal(ab[:, :1], ba[:, :1])  # two generators
    alone = system.generate(z[:1], images=images[2:3])  # instance norm: no batch statistics
    torch.testing.assert_close(alone[0], ab[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(MedvolError, match="direction"):
        system.generate(z, images=images, direction="AA")
    with pytest.raises(MedvolError, match="shape"):
        system.generate(z, images=images[:, :, 1:])
    with pytest.raises(MedvolError, match="NaN"):
        system.generate(z, images=torch.full_like(images, float("nan")))
    with pytest.raises(MedvolError, match="masks"):
        system.generate(z, images=images, masks=torch.ones_like(images))
