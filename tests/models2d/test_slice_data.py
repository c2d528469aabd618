"""Slice data: masks generated with the image, per-class slices from masks, blank slices skipped."""

from __future__ import annotations

import numpy as np
import pytest

from medvol.config import load_config
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.errors import MedvolError
from medvol.train.data import build_dataset


@pytest.fixture(scope="module")
def nodules():
    return PhantomVolumeDataset(32, 2, seed=0, nodules=True)


def test_mask_is_aligned_with_the_image(nodules):
    image, mask = nodules.volume_and_mask(1)
    np.testing.assert_array_equal(image, nodules.volume(1))
    assert mask.shape == image.shape and mask.dtype == np.uint8 and mask.sum() > 0
    # Nodules are soft tissue (10-45 HU) inside air-filled lungs: brighter than their surroundings.
    around = np.zeros_like(mask, dtype=bool)
    zs, ys, xs = np.nonzero(mask)
    around[zs.min():zs.max() + 1, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    assert image[mask > 0].mean() > image[around & (mask == 0)].mean() + 0.2
    # The padding the preprocessing added holds no mask.
    assert mask[image.reshape(32, -1).max(1) <= -1].sum() == 0
    _, empty = nodules.volume_and_mask(0)
    assert empty.sum() == 0


def test_mask_channel_and_per_class_slices(nodules):
    every = SliceDataset(nodules, content_only=True, masks=True, labels="mask")
    tumour = SliceDataset(nodules, content_only=True, masks=True, labels="mask", keep_class=1)
    healthy = SliceDataset(nodules, content_only=True, labels="mask", keep_class=0)
    assert len(tumour) + len(healthy) == len(every) and len(tumour) > 0 and len(healthy) > 0
    for k in range(len(tumour)):
        item = tumour[k]
        assert item["label"] == 1 and item["image"].shape == (2, 32, 32)
        assert set(np.unique(item["image"][1].numpy())) <= {-1.0, 1.0} and item["image"][1].max() == 1
    assert all(healthy[k]["label"] == 0 and healthy[k]["image"].shape == (1, 32, 32) for k in range(len(healthy)))
    _, mask = nodules.volume_and_mask(1)
    assert len(tumour) == int((mask.reshape(32, -1).max(1) > 0).sum())


def test_blank_slices_are_skipped(nodules):
    kept = SliceDataset(nodules, content_only=True)
    assert len(kept) < 2 * 32 == len(SliceDataset(nodules))
    assert all(kept[k]["image"].max() > -1 for k in range(len(kept)))


def test_cache_has_no_masks(ramp):
    class NoMasks:
        window, spacing, volume, label = None, (1.0,) * 3, ramp(8).volume, ramp(8).label

        def __len__(self):
            return 2

    with pytest.raises(MedvolError, match="^masks: NoMasks has no masks"):
        SliceDataset(NoMasks(), masks=True)
    with pytest.raises(MedvolError, match="^slice_labels: "):
        SliceDataset(NoMasks(), labels="mask")


def test_volume_cache_is_bounded(ramp):
    volumes = ramp(16, n=4)
    slices = SliceDataset(volumes, cache_bytes=2 * 16 ** 3 * 4)
    for k in range(0, len(slices), 16):
        slices[k]
    assert len(slices._cache) == 2


def test_build_dataset_for_a_2d_model():
    cfg = load_config(None, ["--model.name", "dcgan", "--model.size", "32", "--data.phantom_n", "1",
                             "--data.plane", "coronal", "--data.masks", "true"])
    dataset = build_dataset(cfg.data, 32, dims=2, channels=2)
    assert dataset[0]["image"].shape == (2, 32, 32)
    with pytest.raises(MedvolError, match="^model.channels: 1 does not match"):
        build_dataset(cfg.data, 32, dims=2, channels=1)
