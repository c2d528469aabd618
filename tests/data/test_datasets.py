"""Datasets: phantoms on the fly, the memory-mapped cache, and 2D slices of either."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medvol.data.cache import build_cache
from medvol.data.datasets import CachedVolumeDataset, PhantomVolumeDataset, SliceDataset
from medvol.data.io import read_volume
from medvol.data.preprocess import PreprocessParams, preprocess_volume
from medvol.errors import MedvolError


def test_phantom_dataset_items_are_deterministic_and_labelled():
    ds = PhantomVolumeDataset(32, length=4, seed=1, nodules=True)
    item = ds[1]
    assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert [ds.label(i) for i in range(4)] == [0, 1, 0, 1]
    torch.testing.assert_close(ds[1]["image"], item["image"], rtol=0, atol=0)
    assert not torch.equal(ds[0]["image"], ds[2]["image"])
    assert ds.window == (-1024.0, 600.0) and ds.spacing == pytest.approx((380 / 32,) * 3)
    other_seed = PhantomVolumeDataset(32, 4, seed=2)
    assert not torch.equal(other_seed[0]["image"], PhantomVolumeDataset(32, 4, seed=1)[0]["image"])
    with pytest.raises(IndexError):
        ds[4]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["label"].tolist() == [0, 1]


def test_phantom_dataset_matches_the_written_files(phantom_files):
    # Item i of PhantomVolumeDataset(seed=s) is file phantom_i of `medvol data phantom --seed s`.
    src, paths = phantom_files
    ds = PhantomVolumeDataset(32, length=3, seed=5)
    from_file = preprocess_volume(read_volume(paths[2]), PreprocessParams(size=32))
    np.testing.assert_allclose(ds[2]["image"][0].numpy(), from_file, atol=2e-3)  # files store int16 HU


def test_cached_dataset(tmp_path, phantom_files):
    src, _ = phantom_files
    build_cache(src, tmp_path / "cache", PreprocessParams(size=32))
    train = CachedVolumeDataset(tmp_path / "cache", split="train")
    val = CachedVolumeDataset(tmp_path / "cache", split="val")
    everything = CachedVolumeDataset(tmp_path / "cache", split="all")
    assert (len(train), len(val), len(everything)) == (2, 1, 3)
    assert set(train.names) | set(val.names) == set(everything.names)
    assert isinstance(train.volume(0), np.memmap)
    item = train[0]
    assert item["image"].shape == (1, 32, 32, 32) and item["label"] == 0
    np.testing.assert_array_equal(item["image"][0].numpy(), np.load(tmp_path / "cache" / train.entries[0]["file"]))
    assert train.window == (-1024.0, 600.0) and train.spacing == pytest.approx((380 / 32,) * 3)
    with pytest.raises(MedvolError, match="unknown split"):
        CachedVolumeDataset(tmp_path / "cache", split="test")
    with pytest.raises(MedvolError, match="no such cache folder"):
        CachedVolumeDataset(tmp_path / "missing")


def test_mr_cache_has_no_window(tmp_path, phantom_files):
    src, _ = phantom_files
    build_cache(src, tmp_path / "mr", PreprocessParams(size=32, modality="mr"))
    assert CachedVolumeDataset(tmp_path / "mr", split="all").window is None


def test_slice_dataset(tmp_path, phantom_files):
    src, _ = phantom_files
    build_cache(src, tmp_path / "cache", PreprocessParams(size=32))
    volumes = CachedVolumeDataset(tmp_path / "cache", split="all")
    slices = SliceDataset(volumes)
    assert len(slices) == 3 * 32 and slices.window == volumes.window and slices.spacing == volumes.spacing[1:]
    item = slices[32 + 16]
    assert item["image"].shape == (1, 32, 32)
    np.testing.assert_array_equal(item["image"][0].numpy(), volumes.volume(1)[16])
    # 340 of 380 mm hold anatomy: the padded top and bottom slices are dropped on request.
    content = SliceDataset(volumes, content_only=True)
    assert 3 * 26 <= len(content) < 3 * 32
    assert all(content[k]["image"].max() > -1 for k in range(0, len(content), 7))
    phantom_slices = SliceDataset(PhantomVolumeDataset(32, length=2, nodules=True))
    assert len(phantom_slices) == 64 and phantom_slices[40]["label"] == 1
