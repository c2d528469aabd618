"""Paired image + mask generation in the 3D models (``mask_channels`` K): shapes, the layers that
change, one training step, and the HA-GAN crop / low-resolution inputs carrying the mask channels."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from medvol.errors import MedvolError
from medvol.models import build

SUBSTEPS = {"crfgan": ["D", "G", "crf", "E"], "hagan": ["D", "G", "E", "sub_E"]}
#: The only parameters K changes, and the dimension that grows by K (out 0, in 1).
CHANGED = {
    "crfgan": {"G.head.1.conv.weight": 0, "G.head.1.conv.bias": 0, "D.convs.0.weight": 1, "E.net.0.weight": 1},
    "hagan": {"G.head.1.conv.weight": 0, "G.head.1.conv.bias": 0, "G.low.2.conv.weight": 0,
              "G.low.2.conv.bias": 0, "D.high.convs.0.weight": 1, "D.low.convs.0.weight": 1, "E.net.0.weight": 1},
}


def _paired_volume(batch: int, size: int, k: int, seed: int = 0) -> torch.Tensor:
    """``[B, 1 + K, S, S, S]``: a random image and a random label map's one-hot channels."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, size, generator=g) * 2 - 1
    labels = torch.randint(0, k + 1, (batch, size, size, size), generator=g)
    one_hot = torch.stack([(labels == c).float() * 2 - 1 for c in range(1, k + 1)], dim=1)
    return torch.cat([image, one_hot], dim=1)


def _shapes(name, size, k):
    with torch.device("meta"):
        return {key: tuple(v.shape) for key, v in build(name, size, mask_channels=k).state_dict().items()}


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
@pytest.mark.parametrize("size", [64, 256])
def test_only_the_first_and_last_layers_change(name, size):
    plain, paired = _shapes(name, size, 0), _shapes(name, size, 3)
    assert plain.keys() == paired.keys()
    changed = {key for key in plain if plain[key] != paired[key]}
    assert changed == set(CHANGED[name])
    for key, dim in CHANGED[name].items():
        grown = list(plain[key])
        grown[dim] += 3
        assert list(paired[key]) == grown, key
    with torch.device("meta"):
        published = {key: tuple(v.shape) for key, v in build(name, size).state_dict().items()}
    assert plain == published  # K = 0 is the network built without the option


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_k0_is_the_published_network(name):
    with torch.device("meta"):
        default = build(name, 256).param_counts()
        zero = build(name, 256, mask_channels=0).param_counts()
        two = build(name, 256, mask_channels=2).param_counts()
    assert zero == default
    published_total = {"crfgan": 57.24e6, "hagan": 79.74e6}[name]  # shared/DESIGN.md, rounded to 0.01M
    assert abs(zero["total"] - published_total) <= 0.005e6
    # K = 2 at 256^3: G's output conv(s) 2 x (27 c + 1) [+ G^L's 2 x (27 c/2 + 1)], D's and E's
    # first convs 2 x 64 x their widths (c = 32; D^H 16, D^L 32, E 32).
    grow_g = 2 * (27 * 32 + 1) + (2 * (27 * 16 + 1) if name == "hagan" else 0)
    grow_d = 2 * 64 * 16 + (2 * 64 * 32 if name == "hagan" else 0)
    assert two["G"] - zero["G"] == grow_g and two["D"] - zero["D"] == grow_d
    assert two["E"] - zero["E"] == 2 * 64 * 32
    assert two["total"] - zero["total"] == grow_g + grow_d + 2 * 64 * 32


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_paired_shapes(tiny, name):
    system = tiny(name, mask_channels=2)
    assert system.channels == 3 and system.mask_channels == 2
    z = system.sample_latent(2, generator=torch.Generator().manual_seed(0))
    emb = system.G.embed(z)
    assert system.G.render(system._crop_emb(emb, 0)).shape == (2, 3, 4, 32, 32)
    if name == "hagan":
        assert system.G.render_low(emb).shape == (2, 3, 8, 8, 8)
    volumes = system.generate(z)
    assert volumes.shape == (2, 3, 32, 32, 32) and volumes.abs().max() <= 1
    torch.testing.assert_close(system.generate(z, tile_depth=2), volumes, rtol=1e-5, atol=1e-5)
    assert system.encode(_paired_volume(1, 32, 2)).shape == (1, 8, 8, 8, 8)
    with pytest.raises(MedvolError, match=r"expected shape \[B, 3, 32, 32, 32\]"):
        system.train_step(torch.zeros(2, 1, 32, 32, 32), system.make_optimizers(), 0)


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_paired_training_step(tiny, name):
    system = tiny(name, mask_channels=2)
    optimizers = system.make_optimizers()
    seen = []

    def snapshot():
        return {n: [p.detach().clone() for p in net.parameters()] for n, net in system.groups().items()}

    @contextlib.contextmanager
    def substep(step):
        before = snapshot()
        yield
        after = snapshot()
        seen.append((step, {n for n in before if any(not torch.equal(a, b) for a, b in zip(before[n], after[n]))}))

    head = system.G.head[1].conv.weight.detach().clone()
    losses = system.train_step(_paired_volume(2, 32, 2), optimizers, 0, substep=substep,
                               generator=torch.Generator().manual_seed(0))
    assert seen == [(step, {step}) for step in SUBSTEPS[name]]
    assert all(torch.isfinite(v) for v in losses.values())
    # The mask channels' output filters are trained, not only the image's.
    assert not torch.equal(system.G.head[1].conv.weight[1:], head[1:])


def test_paired_crfgan_modes_agree(tiny):
    # The fused upsample-conv and the CRF's fused backend take the 3-channel output and the
    # 3-channel encoder input as the reference ops do.
    system, real = tiny("crfgan", mask_channels=2), _paired_volume(2, 32, 2, seed=3)
    results = {}
    for mode in ("reference", "optimized"):
        clone = copy.deepcopy(system).set_mode(mode)
        results[mode] = clone.train_step(real, clone.make_optimizers(), 0, generator=torch.Generator().manual_seed(7))
    for key in results["reference"]:
        torch.testing.assert_close(results["optimized"][key], results["reference"][key], rtol=1e-4, atol=1e-5,
                                   msg=key)


def test_hagan_crop_and_low_resolution_carry_the_mask_channels(tiny, monkeypatch):
    system = tiny("hagan", mask_channels=2)
    real = _paired_volume(2, 32, 2, seed=5)
    calls = []
    forward = type(system.D).forward

    def spy(self, crop, low, position):
        calls.append((crop.detach().clone(), low.detach().clone()))
        return forward(self, crop, low, position)

    monkeypatch.setattr(type(system.D), "forward", spy)
    start = system._sample_crop(torch.Generator().manual_seed(11))
    system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(11))
    crop, low = calls[0]  # the D step's real inputs
    torch.testing.assert_close(crop, real[:, :, start:start + 4], rtol=0, atol=0)
    torch.testing.assert_close(low, F.interpolate(real, scale_factor=0.25, mode="nearest"), rtol=0, atol=0)
    assert low.shape == (2, 3, 8, 8, 8)
    # Nearest neighbour keeps the channels one-hot: every voxel has at most one +1 among 1..K.
    assert set(low[:, 1:].unique().tolist()) == {-1.0, 1.0}
    assert ((low[:, 1:] > 0).sum(dim=1) <= 1).all()
    # ... and aligned with the image: the image channel is subsampled at the same voxels.
    torch.testing.assert_close(low[:, 0], real[:, 0, ::4, ::4, ::4], rtol=0, atol=0)
    torch.testing.assert_close(low[:, 1:], real[:, 1:, ::4, ::4, ::4], rtol=0, atol=0)


def test_mask_channels_build_errors():
    for bad in (-1, 1.5, True):
        with pytest.raises(MedvolError, match="mask_channels: expected an integer >= 0"):
            build("crfgan", 32, base_width=4, latent_dim=8, mask_channels=bad)


def test_info_counts_the_paired_variant(capsys):
    import json

    from medvol.cli import main

    assert main(["info", "--model", "hagan", "--size", "256", "--mask-channels", "2", "--json"]) == 0
    with torch.device("meta"):
        assert json.loads(capsys.readouterr().out) == build("hagan", 256, mask_channels=2).param_counts()
    assert main(["info", "--model", "hagan", "--size", "256", "--mask-channels", "2"]) == 0
    assert "mask channels 2" in capsys.readouterr().out
