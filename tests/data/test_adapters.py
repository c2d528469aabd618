"""medvol.data.adapters: a cache built from phantoms, read through MONAI and TorchIO, against the
cache's own arrays and against the same cache exported as NIfTI and loaded by MONAI's
``LoadImage``, nibabel and TorchIO (the oracles of axis order, voxel values and RAS geometry)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medvol.data import adapters as A
from medvol.data.cache import build_cache, export_nifti, load_manifest
from medvol.data.io import read_volume, write_volume
from medvol.data.phantom import write_phantoms
from medvol.data.preprocess import PreprocessParams, to_intensity
from medvol.errors import MedvolError

P32 = PreprocessParams(size=32, keep_aspect=False)  # stretched: the spacing differs per axis


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two nodule phantoms with label maps, re-written with an oblique direction, anisotropic
    spacing and a shifted origin (so that a swapped axis or a lost flip changes the numbers),
    cached at 32^3 and exported as NIfTI."""
    from tests.data.conftest import oblique_direction

    root = tmp_path_factory.mktemp("adapters")
    src = root / "src"
    for path in write_phantoms(2, 32, src, nodules=True):
        mask = path.with_name(path.name.replace(".nii.gz", "_mask.nii.gz"))
        for p in (path, mask):
            v = read_volume(p)
            # crop to a non-cubic shape: the cached spacing then differs along every axis
            moved = dataclasses.replace(v, array=np.ascontiguousarray(v.array[2:26, :, 4:30]),
                                        spacing=(2.5, 0.9, 0.7), origin=(-120.5, 33.25, 7.0),
                                        direction=oblique_direction())
            write_volume(moved, p, dtype=np.uint8 if p == mask else None)
    build_cache(src, root / "cache", P32, workers=1)
    export_nifti(root / "cache", root / "nii")
    return root


def test_monai_items_match_the_cache_and_loadimage(cache):
    monai = pytest.importorskip("monai")
    from monai.transforms import LoadImage

    manifest = load_manifest(cache / "cache")
    ds = A.to_monai(cache / "cache")
    assert len(ds) == len(manifest["volumes"]) == 2
    load = LoadImage(image_only=True, ensure_channel_first=True)
    for item, entry in zip(ds, manifest["volumes"]):
        assert item["name"] == entry["name"]
        image, label = item["image"], item["label"]
        assert isinstance(image, monai.data.MetaTensor) and image.shape == (1, 32, 32, 32)
        cached = np.load(cache / "cache" / entry["file"])
        # the cache is (z, y, x); MONAI's order is (x, y, z)
        np.testing.assert_array_equal(image[0].numpy(), cached.transpose(2, 1, 0))
        np.testing.assert_array_equal(label[0].numpy(), np.load(cache / "cache" / entry["labels"]).transpose(2, 1, 0))
        assert str(label.dtype) == "torch.uint8" and str(image.dtype) == "torch.float32"
        assert item["spacing"] == pytest.approx(tuple(entry["spacing"])[::-1])
        assert len(set(np.round(item["spacing"], 6))) == 3  # anisotropic: an axis mix-up shows
        ref = load(str(cache / "nii" / f"{entry['name']}.nii.gz"))
        ref_label = load(str(cache / "nii" / f"{entry['name']}_mask.nii.gz"))
        assert ref.meta["space"] == image.meta["space"] == "RAS"
        np.testing.assert_allclose(image.affine.numpy(), ref.affine.numpy(), atol=1e-4)
        np.testing.assert_allclose(to_intensity(image.numpy(), P32), ref.numpy(), atol=1e-2)
        np.testing.assert_array_equal(label.numpy(), ref_label.numpy())
        assert item["label"].sum() > 0


def test_geometry_is_the_cache_geometry_in_ras(cache):
    nib = pytest.importorskip("nibabel")
    import SimpleITK as sitk

    items = A.cache_items(cache / "cache", split="all")
    for item in items:
        # SimpleITK (LPS, index (i, j, k) = (x, y, z)) maps a corner voxel where the affine does
        image = sitk.ReadImage(str(cache / "nii" / f"{item['name']}.nii.gz"))
        for index in [(0, 0, 0), (31, 0, 0), (0, 31, 5), (3, 7, 31)]:
            lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
            ras = item["affine"] @ np.array([*index, 1.0])
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)
        np.testing.assert_allclose(A.LPS_TO_RAS @ A.entry_affine(
            {"spacing": item["spacing"][::-1], "origin": item["origin"], "direction": item["direction"]},
            "LPS"), item["affine"])
        np.testing.assert_allclose(nib.load(cache / "nii" / f"{item['name']}.nii.gz").affine,
                                   item["affine"], atol=1e-4)
    train = A.cache_items(cache / "cache", split="train")
    assert [i["split"] for i in train] == ["train"] * len(train)


def test_torchio_subjects_match_the_cache(cache):
    tio = pytest.importorskip("torchio")

    manifest = load_manifest(cache / "cache")
    ds = A.to_torchio(cache / "cache", transform=None)
    assert isinstance(ds, tio.SubjectsDataset) and len(ds) == 2
    for subject, entry in zip(ds, manifest["volumes"]):
        cached = np.load(cache / "cache" / entry["file"])
        np.testing.assert_array_equal(subject["image"].data[0].numpy(), cached.transpose(2, 1, 0))
        assert isinstance(subject["label"], tio.LabelMap)
        ref = tio.ScalarImage(cache / "nii" / f"{entry['name']}.nii.gz")
        np.testing.assert_allclose(subject["image"].affine, ref.affine, atol=1e-4)
        np.testing.assert_allclose(to_intensity(subject["image"].data.numpy(), P32), ref.data.numpy(), atol=1e-2)
        ref_label = tio.LabelMap(cache / "nii" / f"{entry['name']}_mask.nii.gz")
        np.testing.assert_array_equal(subject["label"].data.numpy(), ref_label.data.numpy())
        assert subject["name"] == entry["name"]
    # a TorchIO transform works on the adapter's subjects: flipping along x is flipping the cache's last axis
    flipped = A.to_torchio(cache / "cache", transform=tio.Flip(axes=(0,)))[0]
    first = np.load(cache / "cache" / manifest["volumes"][0]["file"])
    np.testing.assert_array_equal(flipped["image"].data[0].numpy(), first[:, :, ::-1].transpose(2, 1, 0))


def test_bad_caches_are_refused(cache, tmp_path):
    with pytest.raises(MedvolError, match="manifest"):
        A.cache_items(tmp_path)
    with pytest.raises(MedvolError, match="space"):
        A.entry_affine({"spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())}, "RAI")
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cache / "cache", bad)
    manifest = json.loads((bad / "manifest.json").read_text(encoding="utf-8"))
    manifest["volumes"][0]["file"] = "../../etc/passwd"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MedvolError, match="outside|relative|not named after its entry"):
        A.cache_items(bad)
