"""The 2D image cache: files medvol writes here (PNG 8/16-bit, TIFF 16-bit, BMP, JPEG), layouts
(masks by name, split folders, class folders, Decathlon dataset.json), native slices of LiTS-style
volumes with class selection and a data fraction, growth and refusals."""

import json

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from medvol.data.image_cache import ImageParams, build_image_cache, read_image_labels  # noqa: E402
from medvol.errors import MedvolError  # noqa: E402


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(array).save(path)
    return path


def _cached(cache, name):
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    entry = {e["name"]: e for e in manifest["volumes"]}[name]
    return np.load(cache / entry["file"]), entry


def test_8_and_16_bit_grey_and_rgb_files(tmp_path):
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    grey16 = rng.integers(1000, 4000, (32, 32)).astype(np.uint16)  # 12-bit data in a 16-bit file
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _save(tmp_path / "src" / "a8.png", grey8)
    _save(tmp_path / "src" / "b16.png", grey16)
    _save(tmp_path / "src" / "c16.tif", grey16)
    _save(tmp_path / "src" / "d.bmp", rgb)
    jpeg = _save(tmp_path / "src" / "e.jpg", grey8)
    cache = tmp_path / "cache"
    summary = build_image_cache(tmp_path / "src", cache, ImageParams(size=32), strict=True)
    assert sorted(summary.processed) == ["a8", "b16", "c16", "d", "e"]
    a8, entry = _cached(cache, "a8")
    np.testing.assert_allclose(a8[0], grey8 / 255.0 * 2 - 1, atol=1e-6)
    assert entry["scaled_from"] == [0.0, 255.0] and entry["spacing_unit"] == "pixel"
    for name in ("b16", "c16"):  # 16-bit: each image's own min..max
        array, entry = _cached(cache, name)
        low, high = grey16.min(), grey16.max()
        np.testing.assert_allclose(array[0], (grey16 - low) / (high - low) * 2.0 - 1, atol=1e-6)
        assert entry["scaled_from"] == [low, high]
    d, _ = _cached(cache, "d")
    np.testing.assert_allclose(d[0], rgb @ np.array([0.299, 0.587, 0.114]) / 255 * 2 - 1, atol=1e-6)
    e, _ = _cached(cache, "e")
    np.testing.assert_allclose(e[0], np.asarray(PIL.open(jpeg)) / 255 * 2 - 1, atol=1e-6)  # JPEG: as decoded
    rgb_cache = build_image_cache(tmp_path / "src", tmp_path / "rgb", ImageParams(size=32, colour="rgb"))
    kept, _ = _cached(rgb_cache.path, "d")
    np.testing.assert_allclose(kept, np.moveaxis(rgb, -1, 0) / 255 * 2 - 1, atol=1e-6)
    grey_as_rgb, _ = _cached(rgb_cache.path, "a8")
    assert grey_as_rgb.shape == (3, 32, 32) and (grey_as_rgb == grey_as_rgb[:1]).all()


def test_bilinear_resize_of_a_ramp_is_the_ramp_at_the_new_pixel_centres(tmp_path):
    # 512 -> 64 as the liver-tumour thesis: a linear ramp along columns stays linear; output pixel j
    # is centred on input coordinate (j + 0.5) * 8 - 0.5 (pixel centres, no corner alignment).
    ramp = np.tile(np.arange(512, dtype=np.float64), (512, 1))
    _save(tmp_path / "src" / "ramp.tif", ramp.astype(np.float32))
    build_image_cache(tmp_path / "src", tmp_path / "c", ImageParams(size=64, scale="window", window=(0, 511)))
    cached, entry = _cached(tmp_path / "c", "ramp")
    expected = ((np.arange(64) + 0.5) * 8 - 0.5) / 511 * 2 - 1
    np.testing.assert_allclose(cached[0, 5, 2:-2], expected[2:-2], atol=1e-5)
    assert entry["spacing"] == [8.0, 8.0]


def test_a_non_square_image_is_padded_or_stretched(tmp_path):
    _save(tmp_path / "src" / "wide.png", np.full((16, 32), 255, dtype=np.uint8))
    build_image_cache(tmp_path / "src", tmp_path / "pad", ImageParams(size=32))
    padded, entry = _cached(tmp_path / "pad", "wide")
    assert (padded[0, 8:24] == 1).all() and (padded[0, :8] == -1).all() and (padded[0, 24:] == -1).all()
    assert entry["spacing"] == [1.0, 1.0]
    build_image_cache(tmp_path / "src", tmp_path / "stretch", ImageParams(size=32, keep_aspect=False))
    stretched, entry = _cached(tmp_path / "stretch", "wide")
    assert (stretched == 1).all() and entry["spacing"] == [0.5, 1.0]


def _masked_folder(root, names, size=24, tumour=(1,)):
    for i, name in enumerate(names):
        image = np.full((size, size), 40 * (i + 1), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[4:12, 4:12] = 1
        if i in tumour:
            mask[6:8, 6:8] = 2
        _save(root / "images" / f"{name}.png", image)
        _save(root / "masks" / f"{name}.png", mask)


def test_masks_paired_by_folder_and_by_suffix_and_resized_by_nearest_neighbour(tmp_path):
    _masked_folder(tmp_path / "src", ["p0", "p1"], size=48)
    _save(tmp_path / "src" / "loose.png", np.zeros((48, 48), dtype=np.uint8))
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[1::2, 1::2] = 3  # output pixel j is centred on input (j + 0.5) * 2 = 2j + 1: exactly these
    _save(tmp_path / "src" / "loose_mask.png", mask)
    summary = build_image_cache(tmp_path / "src", tmp_path / "c", ImageParams(size=24))
    assert sorted(e["name"] for e in summary.manifest["volumes"]) == ["loose", "p0", "p1"]
    labels = np.load(tmp_path / "c" / "volumes" / "loose_labels.npy")
    assert labels.dtype == np.uint8 and (labels == 3).all()
    p1 = np.load(tmp_path / "c" / "volumes" / "p1_labels.npy")
    assert p1[3, 3] == 2 and p1[2, 2] == 1 and p1[0, 0] == 0
    assert summary.manifest["mask_labels"] == ["label_1", "label_2", "label_3"]
    _, entry = _cached(tmp_path / "c", "p1")
    assert entry["label_values"] == [0, 1, 2] and entry["labels_source"].endswith("masks/p1.png")


def test_split_folders_are_the_split_and_class_folders_the_labels(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("normal", "tb"):
            for i in range(count):
                _save(tmp_path / "src" / split / cls / f"{split}_{cls}_{i}.png", np.zeros((8, 8), dtype=np.uint8))
    summary = build_image_cache(tmp_path / "src", tmp_path / "c", ImageParams(size=8, classes="folders"))
    manifest = summary.manifest
    assert manifest["split"] == {"mode": "dataset", "train": 6, "val": 4} and manifest["classes"] == ["normal", "tb"]
    found = read_image_labels(tmp_path / "c", split="val")
    assert sorted(zip(found["names"], found["labels"])) == [
        ("test_normal_0", 0), ("test_normal_1", 0), ("test_tb_0", 1), ("test_tb_1", 1)]
    assert all(p.is_file() for p in found["files"]) and found["classes"] == ["normal", "tb"]
    with pytest.raises(MedvolError, match="--seed / --val-fraction deal a seeded split"):
        build_image_cache(tmp_path / "src", tmp_path / "c", ImageParams(size=8, classes="folders"), seed=3)
    seeded = build_image_cache(tmp_path / "src", tmp_path / "s", ImageParams(size=8, classes="folders"),
                               split="seeded", val_fraction=0.5, seed=1)
    assert seeded.manifest["split"]["mode"] == "seeded" and seeded.manifest["split"]["seed"] == 1
    with pytest.raises(MedvolError, match="is split by seeded, this run by dataset"):
        build_image_cache(tmp_path / "src", tmp_path / "s", ImageParams(size=8, classes="folders"))


def test_decathlon_dataset_json_for_images_and_for_volumes(tmp_path):
    from medvol.data.cache import build_cache
    from medvol.data.io import Volume, write_volume
    from medvol.data.preprocess import PreprocessParams

    root = tmp_path / "Task03_Liver"
    records = []
    for i in range(2):
        _save(root / "imagesTr" / f"liver_{i}.png", np.full((16, 16), 100, dtype=np.uint8))
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[2:6, 2:6] = 1 + i
        _save(root / "labelsTr" / f"liver_{i}.png", mask)
        records.append({"image": f"./imagesTr/liver_{i}.png", "label": f"./labelsTr/liver_{i}.png"})
    _save(root / "imagesTs" / "liver_9.png", np.zeros((16, 16), dtype=np.uint8))
    table = {"labels": {"0": "background", "1": "liver", "2": "cancer"}, "training": records,
             "test": ["./imagesTs/liver_9.png"]}
    (root / "dataset.json").write_text(json.dumps(table), encoding="utf-8")
    summary = build_image_cache(root, tmp_path / "c2d", ImageParams(size=16))
    manifest = summary.manifest
    assert manifest["layout"] == "datalist" and manifest["mask_labels"] == ["liver", "cancer"]
    assert {e["name"]: (e["split"], e["dataset_split"]) for e in manifest["volumes"]} == {
        "liver_0": ("train", "training"), "liver_1": ("train", "training"), "liver_9": ("val", "test")}
    # the same layout of volumes, for the 3D cache
    volumes = tmp_path / "Task3D"
    for i in range(2):
        labels = np.zeros((8, 16, 16), dtype=np.uint8)
        labels[2:6, 4:12, 4:12] = 1
        labels[3, 6:8, 6:8] = 2
        write_volume(Volume(np.full((8, 16, 16), -500.0 + i, dtype=np.float32), spacing=(2.0, 1.0, 1.0)),
                     volumes / "imagesTr" / f"ct_{i}.nii.gz")
        write_volume(Volume(labels, spacing=(2.0, 1.0, 1.0)), volumes / "labelsTr" / f"ct_{i}.nii.gz",
                     dtype=np.uint8)
    records = [{"image": f"./imagesTr/ct_{i}.nii.gz", "label": f"./labelsTr/ct_{i}.nii.gz"} for i in range(2)]
    (volumes / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "liver", "2": "cancer"},
                                                      "training": records}), encoding="utf-8")
    cube = build_cache(volumes / "dataset.json", tmp_path / "c3d", PreprocessParams(size=32))
    assert sorted(e["name"] for e in cube.manifest["volumes"]) == ["ct_0", "ct_1"]
    assert cube.manifest["mask_labels"] == ["liver", "cancer"]
    assert all(e["labels_source"].endswith(f"labelsTr/{e['name']}.nii.gz") for e in cube.manifest["volumes"])


def _lits(folder, count=3, depth=8, side=48):
    from medvol.data.io import Volume, write_volume

    rng = np.random.default_rng(1)
    for v in range(count):
        hu = rng.normal(40, 200, (depth, side, side)).astype(np.float32)
        labels = np.zeros((depth, side, side), dtype=np.uint8)
        labels[1:depth - 1, 8:40, 8:40] = 1
        labels[2 + v, 20:22, 20:22] = 2  # one tumour slice per volume, at 2 + v
        write_volume(Volume(hu, spacing=(2.5, 0.75, 0.75)), folder / f"volume-{v}.nii")
        write_volume(Volume(labels, spacing=(2.5, 0.75, 0.75)), folder / f"segmentation-{v}.nii", dtype=np.uint8)


def test_lits_slices_tumour_and_healthy_caches(tmp_path):
    import nibabel as nib

    _lits(tmp_path / "lits")
    tumour = build_image_cache(tmp_path / "lits", tmp_path / "tumour",
                               ImageParams(size=16, source="slices", window=(-1024, 600), select_class=2, keep="with"),
                               workers=2)
    healthy = build_image_cache(tmp_path / "lits", tmp_path / "healthy",
                                ImageParams(size=16, source="slices", window=(-1024, 600), select_class=2,
                                            keep="without"))
    assert sorted(tumour.processed) == ["volume-0_z0002", "volume-1_z0003", "volume-2_z0004"]
    assert len(healthy.processed) == 3 * 8 - 3 and tumour.dropped == 21 and healthy.dropped == 3
    assert all(e["label"] == 1 for e in tumour.manifest["volumes"])
    assert tumour.manifest["mask_labels"] == ["liver", "tumour"] and healthy.manifest["mask_labels"] == ["liver"]
    assert tumour.manifest["classes"] == ["without label 2", "with label 2"]
    assert all(e["label"] == 0 for e in healthy.manifest["volumes"])
    # the slice itself: the stored voxels (x, y, z; written in LPS order, so no reorientation)
    # windowed and resized 48 -> 16 (the resize itself: test_bilinear_resize_of_a_ramp_...)
    from medvol.data.images import resize_image

    stored = np.asarray(nib.load(str(tmp_path / "lits" / "volume-1.nii")).dataobj, dtype=np.float64)
    axial = stored[:, :, 3].T  # rows y, columns x
    scaled = np.clip((axial + 1024) / 1624 * 2 - 1, -1, 1)
    cached, entry = _cached(tmp_path / "tumour", "volume-1_z0003")
    np.testing.assert_allclose(cached, resize_image(scaled[None], 16), atol=1e-6)
    assert entry["slice"] == 3 and entry["spacing"] == [2.25, 2.25] and entry["volume_spacing"][0] == 2.5
    # slices of one volume share the split
    groups = {}
    for e in healthy.manifest["volumes"]:
        groups.setdefault(e["group"], set()).add(e["split"])
    assert all(len(s) == 1 for s in groups.values())


def test_fraction_is_per_image_and_growth_equals_one_build(tmp_path):
    _lits(tmp_path / "all", count=4)
    params = ImageParams(size=16, source="slices", window=(-1024, 600), fraction=0.5, fraction_seed=3)
    whole = build_image_cache(tmp_path / "all", tmp_path / "whole", params)
    names = set(whole.processed)
    assert 0.25 * 32 <= len(names) <= 0.75 * 32
    first = build_image_cache(tmp_path / "all" / "volume-0.nii", tmp_path / "grown", params)
    second = build_image_cache(tmp_path / "all", tmp_path / "grown", params)
    assert set(first.processed) | set(second.processed) == names and set(second.reused) == set(first.processed)
    other = build_image_cache(tmp_path / "all", tmp_path / "other",
                              ImageParams(size=16, source="slices", window=(-1024, 600), fraction=0.5, fraction_seed=4))
    assert set(other.processed) != names


def test_a_changed_file_is_redone_and_other_parameters_refused(tmp_path):
    src = tmp_path / "src"
    _save(src / "a.png", np.zeros((8, 8), dtype=np.uint8))
    _save(src / "b.png", np.zeros((8, 8), dtype=np.uint8))
    build_image_cache(src, tmp_path / "c", ImageParams(size=8))
    _save(src / "b.png", np.full((8, 8), 255, dtype=np.uint8))
    again = build_image_cache(src, tmp_path / "c", ImageParams(size=8))
    assert again.reused == ["a"] and again.processed == ["b"]
    assert (np.load(tmp_path / "c" / "volumes" / "b.npy") == 1).all()
    with pytest.raises(MedvolError, match=r"made with other parameters \(size 8 -> 16\)"):
        build_image_cache(src, tmp_path / "c", ImageParams(size=16))
    replaced = build_image_cache(src, tmp_path / "c", ImageParams(size=16), overwrite=True)
    assert "replaced" in replaced.replaced and np.load(tmp_path / "c" / "volumes" / "a.npy").shape == (1, 16, 16)


def test_a_busy_cache_is_refused_at_once_with_no_wait(tmp_path):
    from medvol.data.cache import CacheLock

    _save(tmp_path / "src" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    (tmp_path / "c").mkdir()
    with CacheLock(tmp_path / "c"):
        with pytest.raises(MedvolError, match="is in use by"):
            build_image_cache(tmp_path / "src", tmp_path / "c", ImageParams(size=8), wait=0)
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_one_slice_volume_files_written_by_medvol(tmp_path):
    from medvol.data.io import Volume
    from medvol.data.provenance import write_synthetic

    rng = np.random.default_rng(2)
    sample = rng.uniform(-1, 1, (1, 16, 16)).astype(np.float32)
    write_synthetic(Volume(sample, spacing=(1.0, 0.5, 0.25)), tmp_path / "gen" / "sample_0000.nii.gz",
                    {"model": "dcgan", "seed": 0, "index": 0})
    with pytest.raises(MedvolError, match=r"sample_0000.nii.gz: marked synthetic \(header descrip"):
        build_image_cache(tmp_path / "gen", tmp_path / "c", ImageParams(size=16))
    summary = build_image_cache(tmp_path / "gen", tmp_path / "c", ImageParams(size=16), allow_synthetic=True)
    cached, entry = _cached(tmp_path / "c", "sample_0000")
    np.testing.assert_allclose(cached, sample, atol=1e-6)  # already in [-1, 1]: kept as it is
    assert entry["synthetic"] is True and entry["scaled_from"] == [-1.0, 1.0] and entry["spacing"] == [0.5, 0.25]
    assert summary.manifest["split"]["val"] == 0
