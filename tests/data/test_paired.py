"""Paired image + mask data: phantom label maps, one-hot channels and their decoding, slices."""

import numpy as np
import pytest
import torch

from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.data.paired import PairedVolumeDataset, labels_from_channels, one_hot_channels
from medvol.data.preprocess import PreprocessParams
from medvol.errors import MedvolError


@pytest.fixture(scope="module")
def phantoms():
    return PhantomVolumeDataset(32, 2, seed=0, nodules=True)


def test_phantom_label_map_is_aligned_and_holds_the_nodule_mask(phantoms):
    assert phantoms.has_labels and phantoms.mask_labels == ("lungs", "nodules")
    image, labels = phantoms.volume_and_labels(1)
    np.testing.assert_array_equal(image, phantoms.volume(1))
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    assert set(np.unique(labels)) == {0, 1, 2}
    # Class 2 is exactly the nodule mask the 2D conditional models train on.
    np.testing.assert_array_equal(labels == 2, phantoms.volume_and_mask(1)[1] == 1)
    # Lungs are air-filled (-850 HU is -0.79 in [-1, 1]); nodules are soft tissue, far brighter.
    assert np.median(image[labels == 1]) < -0.6
    assert np.median(image[labels == 2]) > np.median(image[labels == 1]) + 0.3
    assert (labels[image <= -1] == 0).all()  # the padding is background
    _, without = phantoms.volume_and_labels(0)  # item 0 has no nodules
    assert set(np.unique(without)) == {0, 1}


def test_labels_need_the_default_ct_protocol():
    other = PhantomVolumeDataset(32, 1, params=PreprocessParams(size=32, keep_aspect=False))
    assert not other.has_labels
    with pytest.raises(MedvolError, match="default CT protocol"):
        other.volume_and_labels(0)


def test_one_hot_channels_and_their_decoding():
    labels = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8)
    channels = one_hot_channels(labels, 2)
    assert channels.dtype == np.float32 and channels.shape == (2, 2, 3)
    np.testing.assert_array_equal(channels[0], [[-1, 1, -1], [-1, -1, 1]])
    np.testing.assert_array_equal(channels[1], [[-1, -1, 1], [-1, 1, -1]])  # class 3 > K: background
    np.testing.assert_array_equal(labels_from_channels(channels), [[0, 1, 2], [0, 2, 1]])


def test_decoding_picks_the_largest_positive_channel():
    # Three classes, hand-written voxels: all channels <= 0 -> 0; else the largest channel's class.
    channels = np.array([
        [-0.5, 0.2, 0.2, 0.9, 0.0, -1.0],
        [-0.1, 0.6, 0.1, -0.2, 0.0, -1.0],
        [-0.9, 0.5, 0.3, 0.95, 0.0, 0.01],
    ], dtype=np.float32)
    np.testing.assert_array_equal(labels_from_channels(channels), [0, 2, 3, 3, 0, 3])
    tie = np.array([[0.4], [0.4]], dtype=np.float32)
    assert labels_from_channels(tie).tolist() == [1]  # a tie goes to the lower class


def test_paired_volume_items_match_the_label_map(phantoms):
    paired = PairedVolumeDataset(phantoms, 2)
    item = paired[1]
    image, labels = phantoms.volume_and_labels(1)
    assert item["image"].shape == (3, 32, 32, 32) and item["image"].dtype == torch.float32
    np.testing.assert_array_equal(item["image"][0].numpy(), image)
    for c in (1, 2):
        np.testing.assert_array_equal(item["image"][c].numpy(), np.where(labels == c, 1.0, -1.0))
    assert item["label"] == 1 and paired.mask_labels == ("lungs", "nodules")
    assert paired.spacing == phantoms.spacing and paired.window == phantoms.window
    one = PairedVolumeDataset(phantoms, 1)[1]["image"]
    assert one.shape[0] == 2  # K = 1: lungs only; nodule voxels are background there
    np.testing.assert_array_equal(one[1].numpy(), np.where(labels == 1, 1.0, -1.0))


def test_paired_data_errors(phantoms):
    with pytest.raises(MedvolError, match="2 class\\(es\\) \\(lungs, nodules\\), fewer than model.mask_channels 3"):
        PairedVolumeDataset(phantoms, 3, "data.source phantom")
    other = PhantomVolumeDataset(32, 1, params=PreprocessParams(size=32, keep_aspect=False))
    with pytest.raises(MedvolError, match="data.source x: has no label maps"):
        PairedVolumeDataset(other, 1, "data.source x")
    with pytest.raises(MedvolError, match="exclude each other"):
        SliceDataset(phantoms, masks=True, mask_channels=2)


@pytest.mark.parametrize("plane, size", [("axial", 32), ("coronal", 16)])
def test_slices_with_label_channels(phantoms, plane, size):
    slices = SliceDataset(phantoms, content_only=True, plane=plane, size=size, mask_channels=2)
    assert slices.mask_labels == ("lungs", "nodules")
    image, labels = phantoms.volume_and_labels(1)
    found = 0
    for k in range(len(slices)):
        v, z, _ = slices.index[k]
        if v != 1:
            continue
        item = slices[k]["image"]
        assert item.shape == (3, size, size)
        from medvol.data.datasets import take_slice

        want = np.ascontiguousarray(take_slice(labels, plane, z))
        if size != 32:  # pooled by the maximum: a nodule pixel wins over lung, lung over background
            want = want.reshape(size, 2, size, 2).max(axis=(1, 3))
        for c in (1, 2):
            np.testing.assert_array_equal(item[c].numpy(), np.where(want == c, 1.0, -1.0))
        found += int((want == 2).any())
    assert found > 0


def test_label_alignment_keeps_nested_classes_whole():
    # Random labels on a coarse anisotropic grid: resampling mixes three classes in many voxels.
    # Each class is aligned as "labels >= c" (nested), so the label map covers exactly the aligned
    # union and its top class exactly the aligned top class: no background gaps where classes meet.
    from medvol.data.datasets import _align_labels, _align_mask
    from medvol.data.io import Volume

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(10, 20, 32)).astype(np.uint8)
    volume = Volume(array=rng.uniform(-900, 900, size=labels.shape).astype(np.float32), spacing=(3.2, 1.6, 1.0))
    params = PreprocessParams(size=32)
    aligned = _align_labels(labels, volume, params)
    assert aligned.shape == (32, 32, 32) and aligned.dtype == np.uint8
    np.testing.assert_array_equal(aligned > 0, _align_mask(labels >= 1, volume, params) == 1)
    np.testing.assert_array_equal(aligned == 2, _align_mask(labels >= 2, volume, params) == 1)
    assert set(np.unique(aligned)) == {0, 1, 2}
