"""spade: SPADE normalisation against plain normalisation, the networks' layout and parameter counts,
generation from masks, the losses of both sub-steps, and training through the trainer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medvol import cli
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.errors import MedvolError
from medvol.models import build
from medvol.models.gan2d.spade import SPADE, MultiScaleDiscriminator, generator_widths, paired_feature_matching
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train


def _affine_at(spade: SPADE, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma and beta ``[C]`` of a mask that is ``value`` everywhere, from the weights by hand:
    a 3x3 conv of a constant (replicated at the border) is the constant times its weights' sum."""
    hidden = F.relu(value * spade.shared.weight.sum(dim=(1, 2, 3)) + spade.shared.bias)
    gamma = spade.gamma.weight.sum(dim=(2, 3)) @ hidden + spade.gamma.bias
    beta = spade.beta.weight.sum(dim=(2, 3)) @ hidden + spade.beta.bias
    return gamma, beta


def _plain(norm: str, channels: int, gamma: torch.Tensor, beta: torch.Tensor) -> nn.Module:
    kind = dict(dtype=torch.float64)
    layer = nn.BatchNorm2d(channels, **kind) if norm == "batch" else nn.InstanceNorm2d(channels, affine=True, **kind)
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
    return layer


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("value", [-1.0, 1.0, 0.3])
@pytest.mark.parametrize("mask_side", [12, 24])
def test_constant_mask_is_plain_norm_with_the_learned_affine(norm, value, mask_side):
    torch.manual_seed(0)
    spade = SPADE(5, 7, norm).double()
    with torch.no_grad():
        for p in spade.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(3, 5, 12, 12, dtype=torch.float64) * 2 + 1
    mask = torch.full((3, 1, mask_side, mask_side), value, dtype=torch.float64)
    gamma, beta = _affine_at(spade, value)
    expected = _plain(norm, 5, gamma, beta)(x)
    torch.testing.assert_close(spade(x, mask), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_modulation_is_per_pixel(norm):
    """Left half -1, right half 1: two pixels away from the edge (the footprint of two 3x3 convs)
    each side is normalised with its own value's affine."""
    torch.manual_seed(1)
    spade = SPADE(4, 6, norm).double()
    with torch.no_grad():
        for p in spade.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.float64)
    mask[..., :8] = -1
    out = spade(x, mask)
    for value, cols in ((-1.0, slice(0, 6)), (1.0, slice(10, 16))):
        expected = _plain(norm, 4, *_affine_at(spade, value))(x)
        torch.testing.assert_close(out[..., cols], expected[..., cols], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[..., 6:10], _plain(norm, 4, *_affine_at(spade, 1.0))(x)[..., 6:10])


def test_mask_is_area_resized_to_the_features():
    """A 24^2 mask on 12^2 features acts as its 2x2 average: a lone mask pixel counts a quarter."""
    torch.manual_seed(2)
    spade = SPADE(3, 4, "instance").double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    mask = -torch.ones(2, 1, 24, 24, dtype=torch.float64)
    mask[:, :, 7, 9] = 1
    torch.testing.assert_close(spade(x, mask), spade(x, F.avg_pool2d(mask, 2)), rtol=0, atol=0)
    assert F.avg_pool2d(mask, 2)[0, 0, 3, 4] == -0.5


def test_fresh_spade_starts_near_plain_norm():
    torch.manual_seed(0)
    spade = SPADE(8, 16, "batch")
    assert torch.equal(spade.gamma.bias, torch.ones(8)) and not spade.norm.affine


def test_generator_widths():
    assert generator_widths(256, 64) == [1024, 1024, 1024, 512, 256, 128, 64]
    assert generator_widths(128, 64) == [1024, 1024, 512, 256, 128, 64]
    assert generator_widths(64, 64) == [1024, 512, 256, 128, 64]
    assert generator_widths(32, 8) == [64, 32, 16, 8]


def _spade_counts(size: int, c: int, latent: int, scales: int = 2) -> tuple[int, int]:
    """By hand: every conv and linear with its bias except D's InstanceNorm-ed convs; SPADE's
    hidden width 2c; norms without parameters; spectral norm's vectors are buffers."""
    h = 2 * c
    spade = lambda ch: (9 * h + h) + 2 * (9 * h * ch + ch)
    conv = lambda a, b: 9 * a * b + b
    widths = {32: [8, 4, 2, 1], 64: [16, 8, 4, 2, 1], 128: [16, 16, 8, 4, 2, 1],
              256: [16, 16, 16, 8, 4, 2, 1]}[size]
    w = [c * k for k in widths]
    g = latent * 16 * w[0] + 16 * w[0] + 9 * w[-1] + 1
    for a, b in zip([w[0]] + w[:-1], w):
        g += spade(a) + conv(a, b) + spade(b) + conv(b, b)
        if a != b:
            g += spade(a) + conv(a, b)
    d = 16 * 2 * c + c + 16 * (c * 2 * c + 2 * c * 4 * c + 4 * c * 8 * c) + 16 * 8 * c + 1
    return g, scales * d


@pytest.mark.parametrize("size", [64, 128, 256])
def test_param_counts_at_the_paper_widths(size):
    with torch.device("meta"):
        counts = build("spade", size).param_counts()
    g, d = _spade_counts(size, 64, 256)
    assert counts == {"G": g, "D": d, "total": g + d}


def test_param_counts_pinned():
    with torch.device("meta"):
        assert build("spade", 64).param_counts() == {"G": 54_567_169, "D": 5_525_634, "total": 60_092_803}
        assert build("spade", 32, base_width=4, latent_dim=8, d_scales=1).param_counts()["D"] == \
            _spade_counts(32, 4, 8, 1)[1]
        meta = build("spade", 32, base_width=4, latent_dim=8).param_counts()
    # On the meta device spectral norm is left off (slow there); it changes no count.
    assert build("spade", 32, base_width=4, latent_dim=8).param_counts() == meta


def test_every_layer_is_spectral_normed():
    system = build("spade", 32, base_width=4, latent_dim=8)
    layers = [m for m in system.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    assert system.lr == {"D": 4e-4, "G": 1e-4} and system.betas == (0.0, 0.999) and system.loss == "hinge"


def test_multiscale_discriminator_sees_the_pooled_input():
    torch.manual_seed(0)
    d = MultiScaleDiscriminator(2, 4, 2).eval()
    x = torch.randn(2, 2, 32, 32)
    (l0, f0), (l1, f1) = d(x)
    assert l0.shape == (2, 1, 7, 7) and l1.shape == (2, 1, 5, 5) and len(f0) == len(f1) == 4
    pooled = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(l1, d.scales[1](pooled)[0])


def test_paired_feature_matching_by_hand():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    c, e = torch.randn(2, 5, 2, 2), torch.randn(2, 5, 2, 2)
    fake = [(None, [a]), (None, [c])]
    real = [(None, [b]), (None, [e])]
    expected = (a - b).abs().mean() + (c - e).abs().mean()
    torch.testing.assert_close(paired_feature_matching(fake, real), expected)
    # Per pair, not by batch means: swapping the fakes' order changes it.
    swapped = [(None, [a.flip(0)]), (None, [c.flip(0)])]
    assert not torch.allclose(paired_feature_matching(swapped, real), expected)


def _masks(batch: int, size: int) -> torch.Tensor:
    m = -torch.ones(batch, 1, size, size)
    m[0, :, 10:16, 12:20] = 1
    return m


def test_generate_from_masks():
    torch.manual_seed(0)
    system = build("spade", 32, base_width=4, latent_dim=8)
    masks = _masks(3, 32)
    z = system.sample_latent(3)
    x = system.generate(z, masks=masks)
    assert x.shape == (3, 2, 32, 32) and torch.equal(x[:, 1:], masks)
    assert x[:, 0].abs().max() <= 1
    assert torch.equal(system.generate(z, masks=masks), x)  # eval mode: deterministic
    other = system.generate(z, masks=-masks)
    assert not torch.allclose(other[:, 0], x[:, 0])  # the mask conditions the image
    assert not torch.allclose(system.generate(system.sample_latent(3), masks=masks)[:, 0], x[:, 0])
    assert system.conditional is True


@pytest.mark.parametrize("kwargs, match", [
    ({}, "masks: spade generates images from masks"),
    ({"masks": -torch.ones(3, 1, 16, 16)}, r"masks: expected shape \[3, 1, 32, 32\]"),
    ({"masks": -torch.ones(3, 32, 32)}, "masks: expected shape"),
    ({"masks": torch.zeros(3, 1, 32, 32)}, "masks: values must be -1"),
    ({"masks": -torch.ones(3, 1, 32, 32), "labels": torch.zeros(3)}, "labels"),
    ({"masks": -torch.ones(3, 1, 32, 32), "tile_depth": 2}, "tile_depth"),
])
def test_generate_errors(kwargs, match):
    system = build("spade", 32, base_width=4, latent_dim=8)
    with pytest.raises(MedvolError, match=match):
        system.generate(system.sample_latent(3), **kwargs)


@pytest.mark.parametrize("options, key", [({"channels": 1}, "channels: spade"), ({"norm": "none"}, "norm"),
                                          ({"d_scales": 0}, "d_scales"), ({"fm_l1_weight": -1}, "fm_l1_weight")])
def test_bad_options(options, key):
    with pytest.raises(MedvolError, match=key):
        build("spade", 32, base_width=4, latent_dim=8, **options)


@pytest.fixture(scope="module")
def real_pairs():
    slices = SliceDataset(PhantomVolumeDataset(32, 2, nodules=True), masks=True, labels="mask", keep_class=1)
    return torch.stack([slices[k]["image"] for k in range(len(slices))][:4])


def test_losses_of_both_substeps_by_hand(real_pairs):
    """D: hinge summed over the scales; G: -D(fake) summed over the scales + 10 x paired L1 features.

    The expected values come from a copy of the system at the same state, fed the same draws."""
    torch.manual_seed(0)
    system = build("spade", 32, base_width=4, latent_dim=8)
    optimizers = system.make_optimizers()
    mask = real_pairs[:, 1:]
    twin = copy.deepcopy(system)
    with torch.no_grad():
        fake = twin.G(twin.sample_latent(4, torch.Generator().manual_seed(3)), mask)
        real_out, fake_out = twin.D(real_pairs), twin.D(torch.cat([fake, mask], 1))
    expected_d = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real_out, fake_out))
    state = system._prepare_step(real_pairs, None, optimizers, 0, None, None, torch.Generator().manual_seed(3))
    system._train_only("D")
    system._step_D(state)
    torch.testing.assert_close(state.out["D"], expected_d)

    twin = copy.deepcopy(system)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        fake = twin.G(twin.sample_latent(4, torch.Generator().manual_seed(4)), mask)
        fake_out = twin.D(torch.cat([fake, mask], 1))
        real_out = twin.D(real_pairs)
    adversarial = sum(-f.mean() for f, _ in fake_out)
    matching = sum((a - b).abs().mean() for (_, fa), (_, fb) in zip(fake_out, real_out) for a, b in zip(fa, fb))
    state = system._prepare_step(real_pairs, None, optimizers, 0, None, None, generator)
    system._train_only("G")
    system._step_G(state)
    system._unfreeze()
    torch.testing.assert_close(state.out["G_fm"], matching)
    torch.testing.assert_close(state.out["G"], adversarial + 10 * matching)


def test_one_d_step_separates_better(real_pairs):
    torch.manual_seed(0)
    system = build("spade", 32, base_width=8, latent_dim=16)
    optimizers = system.make_optimizers()
    mask = real_pairs[:, 1:]
    with torch.no_grad():
        fake = system.G(system.sample_latent(4, torch.Generator().manual_seed(5)), mask)
    fake_pairs = torch.cat([fake, mask], 1)

    def separation():
        d = copy.deepcopy(system.D).eval()  # no power iteration while measuring
        with torch.no_grad():
            real_out, fake_out = d(real_pairs), d(fake_pairs)
        gap = sum(float(r.mean() - f.mean()) for (r, _), (f, _) in zip(real_out, fake_out))
        loss = sum(float(F.relu(1 - r).mean() + F.relu(1 + f).mean()) for (r, _), (f, _) in zip(real_out, fake_out))
        return gap, loss

    before = separation()
    state = system._prepare_step(real_pairs, None, optimizers, 0, None, None, torch.Generator().manual_seed(5))
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    after = separation()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


MASKED = ["--model.channels", "2", "--data.masks", "true", "--data.phantom_nodules", "true"]


def test_two_trainer_steps_on_phantom_slices_with_masks(tiny2d):
    cfg = tiny2d(*MASKED, name="spade")
    run = train(cfg)
    state = ckpt.read_checkpoint(run)
    assert state["iteration"] == 2
    system, _, _ = ckpt.load_checkpoint(run)
    assert system.name == "spade" and system.options()["fm_l1_weight"] == 10.0
    x = system.generate(system.sample_latent(2), masks=_masks(2, 32))
    assert x.shape == (2, 2, 32, 32) and torch.isfinite(x).all()
    assert list(run.glob("samples/slices_*.npz"))  # the trainer's samples, drawn from the real masks


def test_config_errors_name_the_key(tmp_path, capsys):
    from tests.models2d.conftest import assert_config_error  # here: a bare machine has no tests package
    for overrides, key in ((["--model.channels", "1"], "channels"), (["--model.patch", "22"], "model.patch"),
                           (["--model.norm", "none"], "norm")):
        assert_config_error(tmp_path, capsys, "{name: spade, size: 32, base_width: 4, latent_dim: 8, channels: 2}", overrides, key,
                            data=", masks: true, phantom_nodules: true")


def test_info_counts(capsys):
    assert cli.main(["info", "--model", "spade", "--size", "128", "--json"]) == 0
    g, d = _spade_counts(128, 64, 256)
    assert json.loads(capsys.readouterr().out) == {"G": g, "D": d, "total": g + d}


@pytest.mark.parametrize("name", ["spade_64", "spade_128", "spade_256", "spade_tiny"])
def test_shipped_configs(name):
    from pathlib import Path

    from medvol.config import load_config
    from medvol.models import build_from_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert cfg.model.name == "spade" and cfg.model.channels == 2 and cfg.data.masks and cfg.data.phantom_nodules
    with torch.device("meta"):
        build_from_config(cfg.model)
    if name != "spade_tiny":  # counts and widths: tests/models/test_contract.py
        assert cfg.train.lr in ({}, {"G": 1e-4, "D": 4e-4})
