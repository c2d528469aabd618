"""CRF-GAN's training step is the published one: weights transplanted into an independent
transcription of the published iteration (tests/models/published_crfgan.py) give the same losses
and the same updated weights, in both modes; medvol's named alternatives are different steps."""

import copy

import pytest
import torch

from published_crfgan import LR, make_optimizers, published_step


def _transplant(system):
    G, D, E = (copy.deepcopy(net) for net in (system.G, system.D, system.E))
    W = torch.nn.Parameter(system.crf.compat.detach().clone())
    return G, D, E, W


def _randomise_compat(system, seed=5):
    # W starts at zeros (as published); a random W makes the pairwise terms and their gradients count.
    with torch.no_grad():
        system.crf.compat.copy_(torch.randn(system.crf.compat.shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("mode,size,iteration", [("reference", 32, 0), ("optimized", 32, 1234), ("reference", 64, 7)])
def test_step_matches_the_published_iteration(tiny, volume, mode, size, iteration):
    system = tiny("crfgan", size)
    _randomise_compat(system)
    G, D, E, W = _transplant(system)
    real = volume(2, size, seed=1)
    expected = published_step(G, D, E, W, real, iteration, torch.Generator().manual_seed(11),
                              make_optimizers(G, D, E, W), system.latent_dim)

    system.set_mode(mode)
    got = system.train_step(real, system.make_optimizers(), iteration, generator=torch.Generator().manual_seed(11))
    for key, value in expected.items():
        assert float(got[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for name, net in (("G", G), ("D", D), ("E", E)):
        mine = dict(getattr(system, name).named_parameters())
        for key, param in net.named_parameters():
            _assert_same_update(mine[key], param, LR[name], f"{name}.{key}")
    torch.testing.assert_close(system.crf.compat, W, rtol=1e-4, atol=2e-6)


def _assert_same_update(mine, theirs, lr, label):
    """Adam's first step moves each weight by about lr * sign(grad), so an element whose gradient
    is float noise (a sum of terms that cancel) may step either way. Nearly every element must agree;
    a bias that a normalisation layer follows has a zero gradient in exact arithmetic, so all of
    its elements are noise and it is only held to within one step."""
    off = (mine - theirs).abs() > 2e-6 + 1e-4 * theirs.abs()
    if label.endswith("bias") and theirs.numel() <= 64:
        assert float((mine - theirs).abs().max()) <= 2.05 * lr, label
    else:
        assert float(off.float().mean()) <= 1e-3, f"{label}: {int(off.sum())} of {off.numel()} differ"


@pytest.mark.parametrize("options", [dict(crf_forwards="reuse"), dict(crf_layout="depth"),
                                     dict(crf_self_pairs=False)])
def test_each_named_alternative_is_a_different_step(tiny, volume, options):
    """The options are real alternatives: each changes the CRF loss or W's update."""
    system = tiny("crfgan", 32, **options)
    _randomise_compat(system)
    G, D, E, W = _transplant(system)
    real = volume(2, 32, seed=1)
    expected = published_step(G, D, E, W, real, 0, torch.Generator().manual_seed(11),
                              make_optimizers(G, D, E, W), system.latent_dim)
    got = system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(11))
    assert float(got["D"]) == pytest.approx(expected["D"], rel=1e-5)  # the D step is the same
    differs = abs(float(got["crf"]) - expected["crf"]) > 1e-4 or not torch.allclose(system.crf.compat, W, atol=1e-5)
    assert differs


def test_crop_start_is_any_voxel_and_the_fake_crop_starts_at_its_quarter(tiny):
    system = tiny("crfgan", 64)
    g = torch.Generator().manual_seed(0)
    starts = {system._sample_crop(g) for _ in range(400)}
    assert min(starts) == 0 and max(starts) == 56  # 0 .. S - S/8, inclusive
    assert any(s % 4 for s in starts)
    emb = torch.arange(16.0).reshape(1, 1, 16, 1, 1).expand(1, 2, 16, 1, 1)
    assert system._crop_emb(emb, 7)[0, 0, :, 0, 0].tolist() == [1.0, 2.0]  # S/32 = 2 slices from 7 // 4
    assert float(system._position(56, 1, torch.device("cpu"))) == 1.0


def test_model_options_are_checked(tiny):
    from medvol.errors import MedvolError
    from medvol.models import build

    with pytest.raises(MedvolError, match="crf_forwards"):
        tiny("crfgan", crf_forwards="sometimes")
    with pytest.raises(MedvolError, match="hagan has no such option"):
        build("hagan", 32, crf_layout="depth")
    assert tiny("crfgan", crf_layout="depth").options()["crf_layout"] == "depth"


@pytest.mark.parametrize("tile", [1, 3, 100])
def test_tiled_encoder_is_the_whole_volume_encoder(tiny, volume, tile):
    """Optimized mode runs the CRF step's whole-volume E in depth tiles (global GroupNorm
    statistics, explicit zero padding at the borders); it is the same function."""
    system = tiny("crfgan", 32)
    with torch.no_grad():
        for p in system.E.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    x = volume(2, 32, seed=3)
    expected = system.E(x)
    torch.testing.assert_close(system.E.forward_tiled(x, tile), expected, rtol=1e-5, atol=1e-5)
