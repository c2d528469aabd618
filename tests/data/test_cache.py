"""The cache: arrays + manifest, skipping done volumes, the split, bad volumes, workers."""

import json
import os

import numpy as np
import pytest

import medvol
from medvol.data.cache import _assign_split, build_cache, load_manifest
from medvol.data.io import Volume, checksum, write_volume
from medvol.data.phantom import write_phantoms
from medvol.data.preprocess import PreprocessParams
from medvol.errors import MedvolError

P32 = PreprocessParams(size=32)


def test_manifest_records_everything(tmp_path, phantom_files):
    src, paths = phantom_files
    summary = build_cache(src, tmp_path / "cache", P32, seed=3)
    assert sorted(summary.processed) == ["phantom_0000", "phantom_0001", "phantom_0002"]
    assert summary.reused == [] and summary.failed == []
    manifest = load_manifest(tmp_path / "cache")
    assert manifest == json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["medvol_version"] == medvol.__version__
    assert manifest["params"] == P32.to_dict()
    assert manifest["split"] == {"seed": 3, "val_fraction": 0.1, "folds": 10, "val_fold": 0, "train": 2, "val": 1}
    for entry, path in zip(manifest["volumes"], paths):
        assert entry["source"] == str(path.resolve())
        assert entry["checksum"] == checksum(path) and len(entry["checksum"]) == 64
        assert entry["original_shape"] == [32, 32, 32]
        np.testing.assert_allclose(entry["original_spacing"], (340 / 32, 380 / 32, 380 / 32))
        assert entry["spacing"] == [380 / 32] * 3
        assert entry["split"] in ("train", "val") and 0 <= entry["fold"] < 10
        assert entry["medvol_version"] == medvol.__version__
        array = np.load(tmp_path / "cache" / entry["file"])
        assert array.shape == (32, 32, 32) and array.dtype == np.float32
        assert -1.0 <= array.min() and array.max() <= 1.0
    assert sorted(os.listdir(tmp_path / "cache" / "volumes")) == [f"phantom_000{i}.npy" for i in range(3)]


def test_checksum_covers_header_and_raw(tmp_path):
    volume = Volume(array=np.zeros((3, 4, 5), np.float32))
    write_volume(volume, tmp_path / "a.mhd")
    before = checksum(tmp_path / "a.mhd")
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"\x01" + raw.read_bytes()[1:])
    assert checksum(tmp_path / "a.mhd") != before


def test_rerun_skips_done_volumes_and_redoes_changed_ones(tmp_path, phantom_files):
    src, paths = phantom_files
    cache = tmp_path / "cache"
    build_cache(src, cache, P32)
    stamps = {p.name: p.stat().st_mtime_ns for p in (cache / "volumes").iterdir()}
    again = build_cache(src, cache, P32)
    assert again.processed == [] and sorted(again.reused) == ["phantom_0000", "phantom_0001", "phantom_0002"]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (cache / "volumes").iterdir()}

    # A changed source is redone; the others are kept.
    write_phantoms(1, 32, tmp_path / "other", seed=99)
    os.replace(tmp_path / "other" / "phantom_0000.nii.gz", paths[1])
    changed = build_cache(src, cache, P32)
    assert changed.processed == ["phantom_0001"] and len(changed.reused) == 2
    assert load_manifest(cache)["volumes"][1]["checksum"] == checksum(paths[1])

    # A source that disappeared keeps its volume: a cache only grows.
    paths[2].unlink()
    kept = build_cache(src, cache, P32)
    assert sorted(kept.reused) == ["phantom_0000", "phantom_0001"]
    assert [v["name"] for v in load_manifest(cache)["volumes"]] == ["phantom_0000", "phantom_0001", "phantom_0002"]

    # New parameters are refused; --overwrite replaces the whole cache, the vanished volume too.
    before = (cache / "manifest.json").read_bytes()
    with pytest.raises(MedvolError, match=r"holds 3 volume\(s\) preprocessed with other parameters "
                                          r"\(window -1024,600 -> -1000,400\); refusing .* --overwrite"):
        build_cache(src, cache, PreprocessParams(size=32, window=(-1000.0, 400.0)))
    assert (cache / "manifest.json").read_bytes() == before
    other = build_cache(src, cache, PreprocessParams(size=32, window=(-1000.0, 400.0)), overwrite=True)
    assert sorted(other.processed) == ["phantom_0000", "phantom_0001"] and other.reused == []
    assert other.replaced == ("replaced the cache's 3 volume(s) preprocessed with other parameters "
                              "(window -1024,600 -> -1000,400); 2 re-made from this run's source, 1 removed")
    assert sorted(os.listdir(cache / "volumes")) == ["phantom_0000.npy", "phantom_0001.npy"]
    assert load_manifest(cache)["params"]["window"] == [-1000.0, 400.0]


def test_split_is_seeded_and_ninety_ten():
    names = [f"v{i:02d}" for i in range(40)]
    split = _assign_split(names, seed=0, val_fraction=0.1, val_fold=0)
    assert sum(s == "val" for _, s in split.values()) == 4
    assert sorted(f for f, _ in split.values()) == sorted(list(range(10)) * 4)
    assert split == _assign_split(names, seed=0, val_fraction=0.1, val_fold=0)
    assert split != _assign_split(names, seed=1, val_fraction=0.1, val_fold=0)
    other_fold = _assign_split(names, seed=0, val_fraction=0.1, val_fold=3)
    assert {n for n, (f, _) in split.items() if f == 3} == {n for n, (_, s) in other_fold.items() if s == "val"}
    assert _assign_split(["only"], seed=0, val_fraction=0.1, val_fold=0)["only"][1] == "train"


def test_bad_volume_is_skipped_and_named(tmp_path, phantom_files):
    src, _ = phantom_files
    (src / "broken.nii.gz").write_bytes(b"not a nifti at all" * 50)
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    write_volume(Volume(array=nan), src / "nan.nii.gz")
    summary = build_cache(src, tmp_path / "cache", P32)
    assert len(summary.processed) == 3
    reasons = dict(summary.failed)
    assert set(reasons) == {str((src / "broken.nii.gz").resolve()), str((src / "nan.nii.gz").resolve())}
    assert "broken.nii.gz: cannot read volume" in reasons[str((src / "broken.nii.gz").resolve())]
    assert "nan.nii.gz: 1 voxels are NaN or infinite" in reasons[str((src / "nan.nii.gz").resolve())]
    assert len(load_manifest(tmp_path / "cache")["failed"]) == 2


def test_strict_run_fails_and_leaves_the_cache_as_it_was(tmp_path, phantom_files):
    src, _ = phantom_files
    cache = tmp_path / "cache"
    build_cache(src, cache, P32)
    before = (cache / "manifest.json").read_bytes()
    arrays = {p.name: p.read_bytes() for p in (cache / "volumes").iterdir()}
    (src / "zz_broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(MedvolError, match=r"zz_broken\.nii\.gz: cannot read volume"):
        build_cache(src, cache, PreprocessParams(size=64), strict=True, overwrite=True)
    assert (cache / "manifest.json").read_bytes() == before
    assert {p.name: p.read_bytes() for p in (cache / "volumes").iterdir()} == arrays
    with pytest.raises(MedvolError, match=r"zz_broken\.nii\.gz"):
        build_cache(src / "zz_broken.nii.gz", tmp_path / "fresh", P32)
    assert not (tmp_path / "fresh" / "manifest.json").exists()
    assert list((tmp_path / "fresh" / "volumes").iterdir()) == []


def test_workers_give_the_same_arrays(tmp_path, phantom_files):
    src, _ = phantom_files
    build_cache(src, tmp_path / "one", P32, workers=1)
    summary = build_cache(src, tmp_path / "two", P32, workers=2)
    assert len(summary.processed) == 3
    for name in os.listdir(tmp_path / "one" / "volumes"):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / "volumes" / name),
                                      np.load(tmp_path / "two" / "volumes" / name))


def test_cache_argument_errors(tmp_path, phantom_files):
    src, _ = phantom_files
    with pytest.raises(MedvolError, match="--workers"):
        build_cache(src, tmp_path / "c", P32, workers=0)
    with pytest.raises(MedvolError, match="--val-fraction"):
        build_cache(src, tmp_path / "c", P32, val_fraction=1.5)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(MedvolError, match="--dst"):
        build_cache(src, tmp_path / "file", P32)
    with pytest.raises(MedvolError, match="not a medvol cache"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(MedvolError, match="unreadable manifest"):
        load_manifest(tmp_path)
