"""Paired image + mask models through the trainer, checkpoints and ``medvol generate``: the label
maps written beside the images come from G's mask channels, voxel for voxel, and are marked synthetic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvol.config import load_config
from medvol.data.preprocess import to_intensity
from medvol.errors import MedvolError
from medvol.models.system import GANSystem
from medvol.train import checkpoint as ckpt
from medvol.sample.generate import generate_volumes
from medvol.train.trainer import train

sitk = pytest.importorskip("SimpleITK")  # writing NIfTI (optional package)
SIZE = 32


def paired_config(out, *overrides: str, name: str = "crfgan", iterations: int = 2, k: int = 2):
    """A tiny paired config on phantoms with nodules (K = 2: lungs and nodules)."""
    return load_config(None, [
        "--model.name", name, "--model.size", str(SIZE), "--model.base_width", "2", "--model.latent_dim", "8",
        "--model.mask_channels", str(k), "--data.source", "phantom", "--data.phantom_n", "2",
        "--data.phantom_nodules", "true", "--data.workers", "0", "--data.batch", "2",
        "--train.iterations", str(iterations), "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "2", "--train.log_every", "1", "--train.sample_every", "1",
        "--train.progress", "false", "--train.out", str(out), *overrides,
    ])


@pytest.fixture(scope="module")
def paired_run(tmp_path_factory):
    return train(paired_config(tmp_path_factory.mktemp("paired") / "run"))


def test_checkpoint_records_the_mask_channels_and_labels(paired_run):
    system, cfg, state = ckpt.load_checkpoint(paired_run)
    assert cfg.model.mask_channels == 2 and system.channels == 3
    assert state["data"]["mask_labels"] == ["lungs", "nodules"]
    # The training samples show every channel (a row each: image, lungs, nodules).
    samples = np.load(sorted((paired_run / "samples").glob("slices_*.npz"))[-1])
    assert samples["real"].shape == (2, 1, 3 * SIZE, 3 * SIZE)


def _known_channels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(channels [3, S, S, S], the label map they must decode to)``.

    Voxels of class c > 0 get their channel the largest value and above 0; the other channel is
    drawn below it, often also above 0 (so "the largest", not "the first above 0", decides).
    Background voxels have both mask channels at or below 0.
    """
    rng = np.random.default_rng(seed)
    shape = (SIZE,) * 3
    labels = rng.integers(0, 3, size=shape).astype(np.uint8)
    top = rng.uniform(0.05, 1.0, size=shape)
    other = top - rng.uniform(0.01, 1.0, size=shape)
    channels = np.empty((3, *shape), dtype=np.float32)
    channels[0] = rng.uniform(-1, 1, size=shape)
    channels[1] = np.where(labels == 1, top, np.where(labels == 2, other, -rng.uniform(0, 1, size=shape)))
    channels[2] = np.where(labels == 2, top, np.where(labels == 1, other, -rng.uniform(0, 1, size=shape)))
    return channels, labels


def test_generate_writes_the_label_map_of_the_channels(paired_run, tmp_path, monkeypatch):
    known = [_known_channels(seed) for seed in (1, 2)]
    calls = []

    def fake_generate(self, z, labels=None, tile_depth=None):
        calls.append(z.shape[0])
        return torch.from_numpy(known[len(calls) - 1][0])[None]

    monkeypatch.setattr(GANSystem, "generate", fake_generate)
    paths = generate_volumes(paired_run, 2, tmp_path / "g", seed=0)
    assert [p.name for p in paths] == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    window = (-1024.0, 600.0)
    listing = json.loads((tmp_path / "g" / "generated.json").read_text(encoding="utf-8"))
    assert listing["mask_labels"] == ["lungs", "nodules"]
    for i, (channels, labels) in enumerate(known):
        image = sitk.ReadImage(str(tmp_path / "g" / f"sample_{i:04d}.nii.gz"))
        mask = sitk.ReadImage(str(tmp_path / "g" / f"sample_{i:04d}_mask.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), labels)
        # The HU image is channel 0 alone, as an unpaired model's would be.
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), to_intensity(channels[0], window), atol=1e-3)
        assert mask.GetSpacing() == image.GetSpacing() and mask.GetOrigin() == image.GetOrigin()
        assert mask.GetDirection() == image.GetDirection()
        # Marked synthetic like the image: header and sidecar, and listed with its classes.
        from medvol.data.provenance import provenance_of

        found = provenance_of(tmp_path / "g" / f"sample_{i:04d}_mask.nii.gz", verify=True)
        assert found["synthetic"] and found["voxels_match"]
        assert any("descrip" in mark for mark in found["evidence"])
        side = json.loads((tmp_path / "g" / f"sample_{i:04d}_mask.json").read_text(encoding="utf-8"))
        assert side["synthetic"] and side["kind"] == "mask" and side["mask_labels"] == ["lungs", "nodules"]
        assert side["image"] == f"sample_{i:04d}.nii.gz"
        image_side = json.loads((tmp_path / "g" / f"sample_{i:04d}.json").read_text(encoding="utf-8"))
        assert image_side["mask_labels"] == ["lungs", "nodules"] and image_side["mask"] == f"sample_{i:04d}_mask.nii.gz"
        assert listing["files"][f"sample_{i:04d}_mask.nii.gz"]["kind"] == "mask"
    # One folder, one meaning of its labels.
    state = ckpt.read_checkpoint(paired_run)
    other = tmp_path / "other" / ckpt.checkpoint_name(state["iteration"])
    other.parent.mkdir()
    state["data"]["mask_labels"] = ["liver", "tumour"]
    ckpt.save_checkpoint(other, {k: v for k, v in state.items() if k not in ("path", "format", "version")})
    with pytest.raises(MedvolError, match="holds the outputs of another medvol generate"):
        generate_volumes(other, 1, tmp_path / "g")
    # --overwrite removes the other checkpoint's files (and their listing) first.
    monkeypatch.undo()
    generate_volumes(other, 1, tmp_path / "g", overwrite=True)
    listing = json.loads((tmp_path / "g" / "generated.json").read_text(encoding="utf-8"))
    assert listing["mask_labels"] == ["liver", "tumour"] and not (tmp_path / "g" / "sample_0001.nii.gz").exists()


def test_generated_masks_of_the_trained_model(paired_run, tmp_path):
    # Without stand-ins: the written files are the model's own channels, decoded.
    from medvol.data.paired import labels_from_channels

    system, _, _ = ckpt.load_checkpoint(paired_run)
    generate_volumes(paired_run, 1, tmp_path / "m", seed=4)
    z = system.sample_latent(1, generator=torch.Generator().manual_seed(4), device=torch.device("cpu"))
    x = system.generate(z)[0].numpy()
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m" / "sample_0000_mask.nii.gz")))
    np.testing.assert_array_equal(mask, labels_from_channels(x[1:]))


def test_resume_with_mask_channels_is_bit_exact(tmp_path):
    straight = paired_config(tmp_path / "straight", iterations=4)
    train(straight)
    train(paired_config(tmp_path / "split", iterations=2))
    train(paired_config(tmp_path / "split", iterations=4), resume="auto")
    a, b = ckpt.read_checkpoint(tmp_path / "straight"), ckpt.read_checkpoint(tmp_path / "split")
    assert a["iteration"] == b["iteration"] == 4
    for key in a["system"]:
        assert torch.equal(a["system"][key], b["system"][key]), key
    # Resuming with another K is refused (the networks differ).
    with pytest.raises(MedvolError, match="mask_channels 2 vs 1"):
        train(paired_config(tmp_path / "split", iterations=6, k=1), resume="auto")


@pytest.mark.parametrize("overrides, match", [
    (["--model.mask_channels", "3"], "2 class\\(es\\) \\(lungs, nodules\\), fewer than model.mask_channels 3"),
    (["--data.phantom_nodules", "false"], "nodules\\) never appears without data.phantom_nodules"),
])
def test_paired_data_errors(tmp_path, overrides, match):
    with pytest.raises(MedvolError, match=match):
        train(paired_config(tmp_path / "run", *overrides))


def test_trains_on_a_cache_with_label_maps(tmp_path):
    """A cache built from phantoms with their label maps feeds a paired model: its training items
    carry the cached label maps as one-hot channels, and the checkpoint names the cache's classes."""
    from medvol.data.cache import build_cache, load_labels
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams
    from medvol.train.data import build_dataset

    write_phantoms(4, SIZE, tmp_path / "ct", nodules=True)
    build_cache(tmp_path / "ct", tmp_path / "cache", PreprocessParams(size=SIZE), val_fraction=0.25,
                mask_labels=("lungs", "nodules"))
    cfg = paired_config(tmp_path / "run", "--data.source", str(tmp_path / "cache"))
    dataset = build_dataset(cfg.data, SIZE, mask_channels=2)
    for index in range(len(dataset)):
        item = dataset[index]["image"].numpy()
        labels = load_labels(tmp_path / "cache", dataset.base.entries[index]["name"]).array
        assert item.shape == (3, SIZE, SIZE, SIZE)
        assert (labels == 1).any()
        for c in (1, 2):
            np.testing.assert_array_equal(item[c] > 0, labels == c)
    _, _, state = ckpt.load_checkpoint(train(cfg))
    assert state["data"]["mask_labels"] == ["lungs", "nodules"] and state["data"]["source"] == str(tmp_path / "cache")


def test_cache_without_labels_is_refused(tmp_path):
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    write_phantoms(2, SIZE, tmp_path / "ct")
    for label_map in (tmp_path / "ct").glob("*_mask.*"):
        label_map.unlink()  # images alone: the cache can hold no label maps
    build_cache(tmp_path / "ct", tmp_path / "cache", PreprocessParams(size=SIZE), val_fraction=0.5)
    cfg = paired_config(tmp_path / "run", "--data.source", str(tmp_path / "cache"))
    with pytest.raises(MedvolError, match=f"data.source {tmp_path / 'cache'}: has no label maps"):
        train(cfg)


@pytest.mark.parametrize("overrides, match", [
    (["--model.name", "dcgan", "--data.masks", "true"], "use one of them"),
    (["--model.name", "dcgan", "--model.channels", "2"], "leave it at 1"),
    (["--model.mask_channels", "-1"], "model.mask_channels: must be non-negative"),
])
def test_contradictory_settings(tmp_path, overrides, match):
    with pytest.raises(MedvolError, match=match):
        paired_config(tmp_path / "run", *overrides)


def test_conditional_2d_models_refuse_mask_channels(tmp_path):
    cfg = paired_config(tmp_path / "run", "--model.name", "spade")
    with pytest.raises(MedvolError, match="mask_channels: spade draws images from given masks"):
        train(cfg)


def test_demo_masks_config_gives_paired_volumes(tmp_path):
    from pathlib import Path

    from medvol.train.data import build_dataset

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "demo_masks.yaml", ["--data.phantom_n", "2"])
    assert cfg.model.mask_channels == 2 and cfg.data.phantom_nodules
    dataset = build_dataset(cfg.data, cfg.model.size, mask_channels=cfg.model.mask_channels)
    item = dataset[1]["image"]
    assert item.shape == (3, 32, 32, 32) and (item[2] > 0).any()  # item 1 carries nodules


def test_no_label_map_is_left_without_its_image(paired_run, tmp_path, medvol_with_file_limit):
    # 40 kB per file: the uint8 label map and the sidecars fit, the float32 image does not.
    out = tmp_path / "samples"
    done = medvol_with_file_limit(["generate", "--ckpt", paired_run, "--n", 2, "--out", out], limit=40_000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"medvol generate: error: cannot write volume {out / 'sample_0000.nii.gz'}: short write")
    assert not out.exists()  # the label map written first was removed, and the folder generate made
