"""The 2D models on a 2D image cache: the items they see (image, mask channel, one-hot classes),
and a few training steps of spade and pix2pix on real image + mask pairs, and of dcgan on RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image")

from medvol.config import load_config  # noqa: E402
from medvol.data.image_cache import ImageParams, build_image_cache  # noqa: E402
from medvol.errors import MedvolError  # noqa: E402
from medvol.train import checkpoint as ckpt  # noqa: E402
from medvol.train.data import build_dataset  # noqa: E402
from medvol.train.trainer import train  # noqa: E402

SIZE = 32


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(array).save(path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Eight 32x32 grey images with masks of labels 1 and 2 (masks/ beside images/), cached."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for i in range(8):
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[4 + i:14 + i, 6:20] = 1
        mask[8 + i:10 + i, 8:10] = 2 if i % 2 else 0
        image = (rng.integers(0, 60, (SIZE, SIZE)) + 150 * (mask > 0)).astype(np.uint8)
        _save(root / "src" / "images" / f"case{i}.png", image)
        _save(root / "src" / "masks" / f"case{i}.png", mask)
    build_image_cache(root / "src", root / "cache", ImageParams(size=SIZE), split="seeded", val_fraction=0.25)
    return root


def _config(out, source, name, *overrides):
    return load_config(None, [
        "--model.name", name, "--model.size", str(SIZE), "--model.base_width", "4", "--model.latent_dim", "8",
        "--data.source", str(source), "--data.workers", "0", "--data.batch", "2",
        "--train.iterations", "2", "--train.mode", "reference", "--train.device", "cpu", "--train.amp", "none",
        "--train.ckpt_every", "2", "--train.log_every", "1", "--train.sample_every", "2",
        "--train.progress", "false", "--train.out", str(out), *overrides])


def test_items_carry_the_mask_channel_and_the_one_hot_classes(pairs):
    cfg = _config(pairs / "unused", pairs / "cache", "spade", "--model.channels", "2", "--data.masks", "true")
    dataset = build_dataset(cfg.data, SIZE, dims=2, channels=2)
    assert len(dataset) == 6 and dataset.spacing == (1.0, 1.0) and dataset.window is None
    for index in range(len(dataset)):
        image, labels = dataset.image_and_labels(index)
        item = dataset[index]["image"]
        assert item.shape == (2, SIZE, SIZE)
        torch.testing.assert_close(item[0], torch.from_numpy(image[0]))
        torch.testing.assert_close(item[1], torch.from_numpy(np.where(labels > 0, 1.0, -1.0).astype(np.float32)))
    cfg = _config(pairs / "unused", pairs / "cache", "dcgan", "--model.mask_channels", "2")
    paired = build_dataset(cfg.data, SIZE, dims=2, channels=3, mask_channels=2)
    image, labels = paired.image_and_labels(1)
    item = paired[1]["image"].numpy()
    assert item.shape == (3, SIZE, SIZE) and paired.mask_labels == ("label_1", "label_2")
    for c in (1, 2):
        np.testing.assert_array_equal(item[c] == 1, labels == c)
    half = build_dataset(_config(pairs / "unused", pairs / "cache", "dcgan").data, 16, dims=2, channels=1)
    torch.testing.assert_close(half[0]["image"][0], torch.nn.functional.avg_pool2d(dataset[0]["image"][:1], 2)[0])


def test_slice_labels_and_classes_come_from_the_masks(pairs):
    cfg = _config(pairs / "unused", pairs / "cache", "dcgan", "--data.slice_labels", "mask",
                  "--data.split", "val")
    dataset = build_dataset(cfg.data, SIZE, dims=2, channels=1)
    assert [dataset.label(i) for i in range(len(dataset))] == [1] * len(dataset)


def test_wrong_channels_and_3d_models_are_refused(pairs):
    cfg = _config(pairs / "unused", pairs / "cache", "spade", "--model.channels", "2", "--data.masks", "true")
    with pytest.raises(MedvolError, match=r"model.channels: 3 does not match the data's 2"):
        build_dataset(cfg.data, SIZE, dims=2, channels=3)
    with pytest.raises(MedvolError, match="a 2D image cache; 3D models train on volume caches"):
        build_dataset(cfg.data, SIZE, dims=3)
    from medvol.data.datasets import CachedVolumeDataset

    with pytest.raises(MedvolError, match="a 2D image cache"):
        CachedVolumeDataset(pairs / "cache")


@pytest.mark.parametrize("name", ["spade", "pix2pix"])
def test_mask_conditioned_models_train_on_real_pairs(pairs, tmp_path, name):
    run = train(_config(tmp_path / name, pairs / "cache", name, "--model.channels", "2", "--data.masks", "true"))
    system, cfg, state = ckpt.load_checkpoint(run)
    assert state["iteration"] == 2 and cfg.data.source == str(pairs / "cache") and system.channels == 2
    assert state["data"]["volumes"] == 6 and state["data"]["synthetic_volumes"] == 0
    masks = torch.where(torch.rand(2, 1, SIZE, SIZE) > 0.5, 1.0, -1.0)
    out = system.generate(torch.randn(2, system.latent_dim), masks=masks)
    assert out.shape == (2, 2, SIZE, SIZE) and torch.isfinite(out).all()


def test_dcgan_trains_on_rgb_images(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        _save(tmp_path / "src" / f"rgb{i}.png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    build_image_cache(tmp_path / "src", tmp_path / "cache", ImageParams(size=SIZE, colour="rgb"))
    run = train(_config(tmp_path / "run", tmp_path / "cache", "dcgan", "--model.channels", "3",
                        "--data.split", "train"))
    system, _, state = ckpt.load_checkpoint(run)
    assert system.channels == 3 and state["iteration"] == 2


def test_a_volume_cache_with_label_maps_gives_the_mask_channel(phantom_cache, tmp_path):
    from medvol.data.cache import load_labels, load_manifest

    cfg = _config(tmp_path / "unused", phantom_cache, "spade", "--model.channels", "2", "--data.masks", "true",
                  "--data.skip_blank", "false")
    slices = build_dataset(cfg.data, SIZE, dims=2, channels=2)
    name = slices.volumes.names[0]
    labels = load_labels(phantom_cache, name).array
    assert load_manifest(phantom_cache)["mask_labels"] and labels[SIZE // 2].max() >= 1
    for z in (SIZE // 2, SIZE // 2 + 3):
        expected = np.where(labels[z] > 0, 1.0, -1.0).astype(np.float32)
        torch.testing.assert_close(slices[z]["image"][1], torch.from_numpy(expected))
