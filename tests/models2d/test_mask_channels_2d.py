"""Paired image + mask generation in the unconditional 2D models (``mask_channels`` K): the layers
that change, one step each, the trainer on phantom slices and the label maps generate2d writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvol.errors import MedvolError
from medvol.models import build
from medvol.train import checkpoint as ckpt
from medvol.sample import sampler as generate_module
from medvol.sample.generate import generate

#: Parameters K changes per model (G's output layers, D's input layers, FastGAN's D decoders that
#: reconstruct the real image), and the dimension that grows by K.
CHANGED = {
    "dcgan": {"G.net.12.weight": 1, "D.features.0.weight": 1},
    "mlpgan": {"G.net.6.weight": 0, "G.net.6.bias": 0, "D.features.0.weight": 1},
    "stylegan2": {**{f"{g}.synthesis.to_rgb.{i}.{p}": 0 for g in ("G", "G_ema") for i in range(7)
                     for p in ("weight", "bias")}, "D.from_rgb.weight": 1},
    "fastgan": {"G.to_image.0.bias": 0, "G.to_image.0.parametrizations.weight.original": 0,
                "D.stem.0.parametrizations.weight.original": 1,
                **{f"D.decoder_{part}.4.{p}": 0 for part in ("whole", "part")
                   for p in ("bias", "parametrizations.weight.original")}},
}
SIZES = {"dcgan": 64, "mlpgan": 64, "stylegan2": 256, "fastgan": 256}


def _params(name, k):
    with torch.device("meta"):
        system = build(name, SIZES[name], mask_channels=k)
    return system, {key: tuple(p.shape) for key, p in system.named_parameters()}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_only_the_image_layers_change(name):
    plain_system, plain = _params(name, 0)
    paired_system, paired = _params(name, 2)
    assert plain.keys() == paired.keys()
    assert {key for key in plain if plain[key] != paired[key]} == set(CHANGED[name])
    for key, dim in CHANGED[name].items():
        grown = list(plain[key])
        grown[dim] *= 3  # 1 channel -> 1 + 2
        assert list(paired[key]) == grown, key
    assert plain_system.channels == 1 and paired_system.channels == 3 and paired_system.mask_channels == 2
    with torch.device("meta"):
        assert build(name, SIZES[name], mask_channels=0).param_counts() == build(name, SIZES[name]).param_counts()


def test_k0_keeps_the_published_mlpgan():
    assert build("mlpgan", 64, mask_channels=0).param_counts() == {"G": 4_881_152, "D": 2_229_249, "total": 7_110_401}


@pytest.mark.parametrize("name, options", [
    ("dcgan", {}), ("mlpgan", {}), ("stylegan2", {"mapping_layers": 2}), ("fastgan", {}),
])
def test_one_paired_step(name, options):
    torch.manual_seed(0)
    system = build(name, 32, base_width=4, latent_dim=8, mask_channels=2, **options)
    g = torch.Generator().manual_seed(0)
    real = torch.cat([torch.rand(4, 1, 32, 32, generator=g) * 2 - 1,
                      torch.randint(0, 2, (4, 2, 32, 32), generator=g).float() * 2 - 1], dim=1)
    losses = system.train_step(real, system.make_optimizers(), 0, generator=g)
    assert all(torch.isfinite(v) for v in losses.values())
    assert system.generate(system.sample_latent(2)).shape == (2, 3, 32, 32)
    with pytest.raises(MedvolError, match=r"expected shape \[B, 3, 32, 32\]"):
        system.train_step(real[:, :1], system.make_optimizers(), 0)


def test_conflicting_build_options():
    with pytest.raises(MedvolError, match="channels: 2 with mask_channels 2"):
        build("dcgan", 32, channels=2, mask_channels=2)
    for name in ("spade", "pix2pix"):
        with pytest.raises(MedvolError, match=f"mask_channels: {name} draws images from given masks"):
            build(name, 32, mask_channels=1)


def _config(out, *overrides):
    """test_generate_2d's tiny dcgan with K = 2 on phantoms with nodules, sampled every step."""
    from tests.models2d.test_generate_2d import _config as plain  # here: no tests package on a bare machine

    return plain(out, "--model.mask_channels", "2", "--data.phantom_nodules", "true",
                 "--train.sample_every", "1", *overrides)


@pytest.fixture(scope="module")
def paired2d(tmp_path_factory):
    from medvol.train.trainer import train

    return train(_config(tmp_path_factory.mktemp("paired2d") / "run"))


def test_trained_on_one_hot_label_slices(paired2d):
    from medvol.data.datasets import PhantomVolumeDataset
    from medvol.train.data import build_dataset

    system, cfg, state = ckpt.load_checkpoint(paired2d)
    assert system.channels == 3 and state["data"]["mask_labels"] == ["lungs", "nodules"]
    slices = build_dataset(cfg.data, 32, dims=2, channels=3, mask_channels=2)
    volumes = PhantomVolumeDataset(32, 2, seed=0, nodules=True)
    _, labels = volumes.volume_and_labels(1)  # item 1 has nodules
    checked = 0
    for k, (v, z, _) in enumerate(slices.index):
        if v == 1 and (labels[z] == 2).any():
            item = slices[k]["image"]
            for c in (1, 2):
                np.testing.assert_array_equal(item[c].numpy(), np.where(labels[z] == c, 1.0, -1.0))
            checked += 1
    assert checked > 0


def _known(n: int, seed: int = 0):
    """``n`` generated images [n, 3, 32, 32] whose mask channels decode to the returned labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(n, 32, 32))
    top = rng.uniform(0.05, 1, size=labels.shape)
    below = top - rng.uniform(0.01, 1, size=labels.shape)
    negative = -rng.uniform(0, 1, size=labels.shape)
    lungs = np.where(labels == 1, top, np.where(labels == 2, below, negative))
    nodules = np.where(labels == 2, top, np.where(labels == 1, below, negative))
    image = rng.uniform(-1, 1, size=labels.shape)
    return torch.from_numpy(np.stack([image, lungs, nodules], axis=1).astype(np.float32)), labels


@pytest.mark.parametrize("volume", [False, True])
def test_generate2d_writes_label_maps_of_the_channels(paired2d, tmp_path, monkeypatch, volume):
    import SimpleITK as sitk

    from medvol.data.preprocess import to_intensity
    from medvol.data.provenance import is_marked, provenance_of, read_header_fields
    from medvol.sample.images import stack_slices

    system, cfg, state = ckpt.load_checkpoint(paired2d)
    n = 32 if volume else 3
    x, labels = _known(n)
    drawn = []

    def fake_generate(z, **_):
        start = sum(drawn)
        drawn.append(z.shape[0])
        return x[start:start + z.shape[0]]

    monkeypatch.setattr(system, "generate", fake_generate)
    monkeypatch.setattr(generate_module, "load_checkpoint", lambda path: (system, cfg, state))
    out = tmp_path / "g"
    generate(paired2d, 1 if volume else n, out, volume=volume)
    if volume:
        want = [stack_slices(labels.astype(np.uint8), cfg.data.plane)]
        images = [stack_slices(x[:, 0].numpy(), cfg.data.plane)]
    else:
        want, images = list(labels.astype(np.uint8)), list(x[:, 0].numpy())
    for i, (mask, image) in enumerate(zip(want, images)):
        written = sitk.ReadImage(str(out / f"sample_{i:04d}_mask.nii.gz"))
        assert written.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"sample_{i:04d}.nii.gz")))
        np.testing.assert_allclose(hu, to_intensity(image, (-1024.0, 600.0)), atol=1e-3)
        if volume:
            assert provenance_of(out / f"sample_{i:04d}_mask.nii.gz", verify=True)["synthetic"]
        else:
            assert is_marked(read_header_fields(out / f"sample_{i:04d}_mask.nii.gz"))
        side = json.loads((out / f"sample_{i:04d}_mask.json").read_text(encoding="utf-8"))
        assert side["mask_labels"] == ["lungs", "nodules"] and side["intensity"].startswith("label map 0..2")
    listing = json.loads((out / "generated.json").read_text(encoding="utf-8"))
    assert listing["mask_labels"] == ["lungs", "nodules"]
