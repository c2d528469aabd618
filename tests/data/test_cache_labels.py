"""Label maps in preprocessing caches: finding them, carrying them onto the array's grid, caching."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from medvol.data.io import Volume, read_volume, write_volume
from medvol.errors import MedvolError

pytest.importorskip("SimpleITK")
pytest.importorskip("monai")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _centre(mask: np.ndarray) -> np.ndarray:
    return np.array(np.nonzero(mask), dtype=np.float64).mean(axis=1)


def _hu_to_unit(hu: float) -> float:
    return (hu + 1024.0) / 1624.0 * 2.0 - 1.0


# ------------------------------------------------------------------------------ find_labels


def test_find_labels_beside_lits_and_luna(tmp_path):
    from medvol.data.discover import find_labels

    vol = Volume(array=np.zeros((4, 4, 4), np.float32))
    for name in ("a.nii.gz", "a_mask.nii.gz", "b.mha", "b-seg.nrrd", "c.nii", "volume-7.nii",
                 "segmentation-7.nii"):
        write_volume(vol, tmp_path / name)
    assert find_labels(tmp_path / "a.nii.gz") == tmp_path / "a_mask.nii.gz"
    assert find_labels(tmp_path / "b.mha") == tmp_path / "b-seg.nrrd"
    assert find_labels(tmp_path / "c.nii") is None
    assert find_labels(tmp_path / "volume-7.nii") == tmp_path / "segmentation-7.nii"
    luna = tmp_path / "luna"
    write_volume(vol, luna / "subset0" / "1.2.3.mhd")
    write_volume(vol, luna / "seg-lungs-LUNA16" / "1.2.3.mhd")
    assert find_labels(luna / "subset0" / "1.2.3.mhd") == luna / "seg-lungs-LUNA16" / "1.2.3.mhd"


def test_find_labels_refuses_two_candidates(tmp_path):
    from medvol.data.discover import find_labels

    vol = Volume(array=np.zeros((4, 4, 4), np.float32))
    for name in ("a.nii.gz", "a_mask.nii.gz", "a_seg.nii.gz"):
        write_volume(vol, tmp_path / name)
    with pytest.raises(MedvolError, match="2 label maps fit it"):
        find_labels(tmp_path / "a.nii.gz")


# --------------------------------------------------------------------- labels on the grid


def _shift_dices(labels: np.ndarray, reference: np.ndarray) -> list[float]:
    return [_dice(reference, np.roll(labels, shift, axis)) for axis in range(3) for shift in (-1, 1)]


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_threshold_labels_land_on_the_images_threshold(keep_aspect):
    """A label map drawn from the image (the body, HU > -500) lands on the voxels where the
    preprocessed image is above -500 HU: better than any one-voxel shift of it."""
    from medvol.data.phantom import make_phantom
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info

    volume, _ = make_phantom(64, seed=3)
    labels = dataclasses.replace(volume, array=(volume.array > -500).astype(np.float32))
    out, info = preprocess_with_info(volume, PreprocessParams(size=32, keep_aspect=keep_aspect), labels=labels)
    assert info["labels"].dtype == np.uint8 and info["labels"].shape == (32, 32, 32)
    body = out > _hu_to_unit(-500)
    mapped = info["labels"] == 1
    dice = _dice(body, mapped)
    assert dice > 0.9
    assert dice > max(_shift_dices(mapped, body))
    # Centres of mass agree to a third of a voxel (a half-voxel slip of the grid would not).
    assert np.abs(_centre(body) - _centre(mapped)).max() < 0.3


@pytest.mark.parametrize("blank", ["replace", "remove"])
def test_labels_follow_oblique_geometry_and_blank_slices(oblique_volume, blank):
    """A block in an oblique, anisotropic, non-cubic scan (a blank slice inside the anatomy, the
    block's labels on a grid twice as fine) lands where the image's block does."""
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info

    array = np.full((20, 40, 30), -1000.0, np.float32)
    array[4:16, 8:26, 5:19] = 300.0  # off-centre on every axis: a flip would show
    array[9] = -1024.0  # a dropped slice inside the block
    volume = dataclasses.replace(oblique_volume, array=array, spacing=(3.0, 1.0, 1.5))
    fine = np.zeros((40, 80, 60), np.float32)
    fine[8:32, 16:52, 10:38] = 2.0
    # The fine grid's voxel 0 sits half a coarse voxel minus half a fine voxel before the coarse one's.
    direction = np.asarray(volume.direction).reshape(3, 3)
    step = np.asarray(volume.spacing[::-1]) / 2.0
    origin = np.asarray(volume.origin) - direction @ (step / 2.0)
    labels = Volume(array=fine, spacing=tuple(np.asarray(volume.spacing) / 2.0), origin=tuple(origin),
                    direction=volume.direction, path="fine_labels")
    out, info = preprocess_with_info(volume, PreprocessParams(size=32, blank_slices=blank), labels=labels)
    block = out > _hu_to_unit(-350.0)  # halfway between air and the block: its edge
    mapped = info["labels"] == 2
    assert set(np.unique(info["labels"])) == {0, 2}
    assert _dice(block, mapped) > 0.9
    assert _dice(block, mapped) > max(_shift_dices(mapped, block))
    assert np.abs(_centre(block) - _centre(mapped)).max() < 0.3


def test_bad_label_maps_are_named(oblique_volume):
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info

    params = PreprocessParams(size=32)
    half = dataclasses.replace(oblique_volume, array=np.full(oblique_volume.shape, 0.5, np.float32), path="half.nii")
    with pytest.raises(MedvolError, match="half.nii: a label map holds integers 0..255"):
        preprocess_with_info(oblique_volume, params, labels=half)
    far = dataclasses.replace(oblique_volume, array=np.ones(oblique_volume.shape, np.float32),
                              origin=(5000.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), path="far.nii")
    with pytest.raises(MedvolError, match="far.nii: the label map does not overlap"):
        preprocess_with_info(oblique_volume, params, labels=far)


# --------------------------------------------------------------------------------- the cache


@pytest.fixture
def labelled_phantoms(tmp_path):
    """Three 32³ phantoms with label maps: lungs (tissue 'lung') 1 and the body wall 2."""
    from medvol.data.phantom import TISSUES, render_phantom

    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        phantom = render_phantom(32, (0, i))
        volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
        labels = np.zeros(phantom.hu.shape, np.uint8)
        labels[phantom.tissues == TISSUES["lung"]] = 1
        labels[np.isin(phantom.tissues, [TISSUES["muscle"], TISSUES["fat"]])] = 2
        write_volume(volume, folder / f"scan_{i}.nii.gz", dtype=np.int16)
        write_volume(dataclasses.replace(volume, array=labels), folder / f"scan_{i}_seg.nii.gz", dtype=np.uint8)
    return folder


def test_cache_stores_labels_on_the_arrays_grid(labelled_phantoms, tmp_path):
    from medvol.data.cache import build_cache, load_entry, load_labels
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info

    cache = tmp_path / "cache"
    summary = build_cache(labelled_phantoms, cache, PreprocessParams(size=32), val_fraction=0.34,
                          mask_labels=["lungs", "wall"])
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["mask_labels"] == ["lungs", "wall"] and manifest["format"] == 3
    for entry in manifest["volumes"]:
        assert entry["labels"] == f"volumes/{entry['name']}_labels.npy"
        assert entry["labels_source"].endswith(f"{entry['name']}_seg.nii.gz")
        assert entry["label_values"] == [0, 1, 2]
        stored = np.load(cache / entry["labels"])
        assert stored.dtype == np.uint8
        _, info = preprocess_with_info(read_volume(entry["source"]), PreprocessParams(size=32),
                                       labels=read_volume(entry["labels_source"]))
        np.testing.assert_array_equal(stored, info["labels"])
    name = summary.manifest["volumes"][0]["name"]
    assert load_labels(cache, name).spacing == load_entry(cache, name).spacing
    ds = CachedVolumeDataset(cache, "train")
    image, labels = ds.volume_and_labels(0)
    assert ds.has_labels and ds.mask_labels == ("lungs", "wall")
    assert image.shape == labels.shape == (32, 32, 32)
    # Lungs are dark, the wall is soft tissue: the labels sit on the matching intensities.
    assert image[labels == 1].mean() < _hu_to_unit(-450) < _hu_to_unit(-250) < image[labels == 2].mean()


def test_default_names_lits_and_wrong_names(tmp_path):
    from medvol.data.cache import build_cache
    from medvol.data.preprocess import PreprocessParams

    array = np.full((8, 16, 16), -1000.0, np.float32)
    array[2:6, 4:12, 4:12] = 40.0
    labels = np.zeros(array.shape, np.float32)
    labels[3:5, 5:11, 5:11] = 1
    labels[3:5, 6:8, 6:8] = 2
    scan = Volume(array=array, spacing=(4.0, 2.0, 2.0))
    for folder, image, mask in (("lits", "volume-0.nii", "segmentation-0.nii"), ("plain", "x.nii.gz", "x_mask.nii.gz")):
        write_volume(scan, tmp_path / folder / image)
        write_volume(dataclasses.replace(scan, array=labels), tmp_path / folder / mask)
    lits = build_cache(tmp_path / "lits", tmp_path / "c_lits", PreprocessParams(size=32))
    assert lits.manifest["mask_labels"] == ["liver", "tumour"]
    plain = build_cache(tmp_path / "plain", tmp_path / "c_plain", PreprocessParams(size=32))
    assert plain.manifest["mask_labels"] == ["label_1", "label_2"]
    with pytest.raises(MedvolError, match="holds label 2, but --mask-labels names only 1"):
        build_cache(tmp_path / "plain", tmp_path / "c_one", PreprocessParams(size=32), mask_labels=["organ"])
    with pytest.raises(MedvolError, match="names its labels label_1,label_2"):
        build_cache(tmp_path / "plain", tmp_path / "c_plain", PreprocessParams(size=32), mask_labels=["a", "b"])


def test_cache_without_labels_loads_and_says_so(labelled_phantoms, tmp_path):
    from medvol.data.cache import build_cache
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.data.preprocess import PreprocessParams

    cache = tmp_path / "nolabels"
    build_cache(labelled_phantoms, cache, PreprocessParams(size=32), labels=False)
    # As a medvol before labels wrote it: format 2, no label fields.
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    manifest["format"] = 2
    manifest.pop("mask_labels", None)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    ds = CachedVolumeDataset(cache, "all")
    assert ds[0]["image"].shape == (1, 32, 32, 32)
    assert not ds.has_labels and ds.mask_labels == ()
    with pytest.raises(MedvolError, match=f"{cache}: volume 'scan_0' has no label map"):
        ds.volume_and_labels(0)


def test_label_files_that_appear_change_or_vanish_redo_the_volume(labelled_phantoms, tmp_path):
    from medvol.data.cache import build_cache, clean_temporaries
    from medvol.data.preprocess import PreprocessParams

    seg = labelled_phantoms / "scan_1_seg.nii.gz"
    moved = tmp_path / "held.nii.gz"
    os.replace(seg, moved)
    cache = tmp_path / "cache"
    first = build_cache(labelled_phantoms, cache, PreprocessParams(size=32))
    assert "labels" not in {e["name"]: e for e in first.manifest["volumes"]}["scan_1"]
    os.replace(moved, seg)
    second = build_cache(labelled_phantoms, cache, PreprocessParams(size=32))
    assert second.processed == ["scan_1"] and sorted(second.reused) == ["scan_0", "scan_2"]
    assert (cache / "volumes" / "scan_1_labels.npy").is_file()
    assert clean_temporaries(cache) == []  # label maps are listed, not strays
    third = build_cache(labelled_phantoms, cache, PreprocessParams(size=32))
    assert third.processed == []
    write_volume(Volume(array=np.zeros((32, 32, 32), np.float32), spacing=read_volume(seg).spacing,
                        origin=read_volume(seg).origin), seg)
    fourth = build_cache(labelled_phantoms, cache, PreprocessParams(size=32))
    assert fourth.processed == ["scan_1"]
    assert not np.load(cache / "volumes" / "scan_1_labels.npy").any()
    seg.unlink()
    fifth = build_cache(labelled_phantoms, cache, PreprocessParams(size=32))
    assert fifth.processed == ["scan_1"] and not (cache / "volumes" / "scan_1_labels.npy").exists()


def test_export_writes_masks_and_cli_names(labelled_phantoms, tmp_path):
    from medvol.cli import main

    cache, out = tmp_path / "cache", tmp_path / "nii"
    assert main(["preprocess", "--src", str(labelled_phantoms), "--dst", str(cache), "--size", "32",
                 "--mask-labels", "lungs,wall", "--export-nifti", str(out), "--workers", "1"]) == 0
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["mask_labels"] == ["lungs", "wall"]
    for entry in manifest["volumes"]:
        mask = read_volume(out / f"{entry['name']}_mask.nii.gz")
        image = read_volume(out / f"{entry['name']}.nii.gz")
        np.testing.assert_array_equal(mask.array, np.load(cache / entry["labels"]))
        assert mask.spacing == pytest.approx(image.spacing) and mask.origin == pytest.approx(image.origin)
    assert main(["preprocess", "--src", str(labelled_phantoms), "--dst", str(tmp_path / "x"), "--size", "32",
                 "--mask-labels", "a,,b"]) == 2
