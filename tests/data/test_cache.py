"""The cache: arrays + manifest, skipping done volumes, the split, bad volumes, workers."""

import errno
import json
import os
import re
from pathlib import Path

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
    assert _volume_arrays(tmp_path / "cache") == [f"phantom_000{i}.npy" for i in range(3)]


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
    assert _volume_arrays(cache) == ["phantom_0000.npy", "phantom_0001.npy"]
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


def test_growing_cache_keeps_the_folds_of_its_volumes(tmp_path):
    write_phantoms(6, 32, tmp_path / "a", seed=1)
    write_phantoms(9, 32, tmp_path / "b", seed=2)
    cache = tmp_path / "cache"
    build_cache(tmp_path / "a", cache, P32, seed=3, val_fraction=0.25)
    first = {v["name"]: (v["fold"], v["split"]) for v in load_manifest(cache)["volumes"]}
    build_cache(tmp_path / "b", cache, P32)
    manifest = load_manifest(cache)
    assert manifest["split"]["seed"] == 3 and manifest["split"]["val_fraction"] == 0.25
    grown = {v["name"]: (v["fold"], v["split"]) for v in manifest["volumes"]}
    assert len(grown) == 15 and {n: grown[n] for n in first} == first
    # The deal continued after the first six: the four folds stay balanced (15 = 4 + 4 + 4 + 3).
    assert sorted(np.bincount([f for f, _ in grown.values()]).tolist()) == [3, 4, 4, 4]
    assert manifest["split"]["val"] == sum(s == "val" for _, s in grown.values()) == sum(
        f == 0 for f, _ in grown.values())


def test_a_changed_source_keeps_its_name_and_fold(tmp_path, phantom_files):
    src, paths = phantom_files
    cache = tmp_path / "cache"
    build_cache(src, cache, P32, seed=1)
    before = {v["name"]: v["fold"] for v in load_manifest(cache)["volumes"]}
    write_phantoms(1, 32, tmp_path / "other", seed=99)
    os.replace(tmp_path / "other" / "phantom_0000.nii.gz", paths[0])
    assert build_cache(src, cache, P32).processed == ["phantom_0000"]
    assert {v["name"]: v["fold"] for v in load_manifest(cache)["volumes"]} == before


def test_a_damaged_array_or_missing_geometry_is_redone(tmp_path, phantom_files):
    src, _ = phantom_files
    cache = tmp_path / "cache"
    build_cache(src, cache, P32)
    array = cache / "volumes" / "phantom_0001.npy"
    array.write_bytes(array.read_bytes()[:1000])
    manifest = load_manifest(cache)
    for key in ("origin", "direction"):  # as a cache of medvol before the geometry was recorded
        del manifest["volumes"][2][key]
    (cache / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    again = build_cache(src, cache, P32)
    assert sorted(again.processed) == ["phantom_0001", "phantom_0002"] and again.reused == ["phantom_0000"]
    assert np.load(array).shape == (32, 32, 32)
    assert "origin" in load_manifest(cache)["volumes"][2]


def _disk_full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_full(path, array):
    Path(path).write_bytes(b"\x93NUMPY half")
    _disk_full()


@pytest.mark.parametrize("writer", ["_write_array", "_write_text"])
@pytest.mark.parametrize("partial", [False, True])
def test_a_full_disk_is_one_line_and_leaves_the_cache_as_it_was(tmp_path, phantom_files, monkeypatch, capsys,
                                                                writer, partial):
    from medvol.cli import main

    src, _ = phantom_files
    write_phantoms(2, 32, tmp_path / "more", seed=7)
    cache = tmp_path / "cache"
    build_cache(src, cache, P32)
    before = {p.name: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    failing = _half_then_full if partial else _disk_full
    if writer == "_write_text":
        failing = (lambda path, text: (Path(path).write_text(text[:10], encoding="utf-8"), _disk_full())) \
            if partial else _disk_full
    monkeypatch.setattr(f"medvol.data.cache.{writer}", failing)
    code = main(["preprocess", "--src", str(tmp_path / "more"), "--dst", str(cache), "--size", "32",
                 "--workers", "1"])
    out, err = capsys.readouterr()
    final = cache / ("volumes/phantom_0000-" if writer == "_write_array" else "manifest.json")
    # the volumes were preprocessed before the manifest's write failed: that phase's line may precede the error
    err = re.sub(r"^preprocess: 2 vol in \d+\.\d s\n", "", err)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"medvol preprocess: error: {final}") and "cannot write (no space left on device)" in err
    assert {p.name: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before


def test_entries_carry_their_geometry(tmp_path, oblique_volume):
    from medvol.data.cache import export_nifti, load_entry
    from medvol.data.io import read_volume
    from medvol.data.preprocess import preprocess_with_info, to_intensity

    write_volume(oblique_volume, tmp_path / "src" / "scan.nii.gz")
    cache = tmp_path / "cache"
    build_cache(tmp_path / "src", cache, P32)
    entry = load_manifest(cache)["volumes"][0]
    expected, info = preprocess_with_info(read_volume(tmp_path / "src" / "scan.nii.gz"), P32)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(entry[key], info[key], atol=1e-9)
    volume = load_entry(cache, "scan")
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.path == str(cache / "volumes" / "scan.npy")
    np.testing.assert_allclose(volume.origin, info["origin"])
    np.testing.assert_allclose(volume.direction, info["direction"])
    np.testing.assert_allclose(volume.spacing, info["spacing"])
    hu = load_entry(cache, "scan", physical=True)
    np.testing.assert_allclose(hu.array, to_intensity(expected, P32), rtol=1e-6)
    written = export_nifti(cache, tmp_path / "nii")
    assert written == [tmp_path / "nii" / "scan.nii.gz"]
    back = read_volume(written[0])
    np.testing.assert_allclose(back.array, hu.array, atol=1e-3)
    np.testing.assert_allclose(back.spacing, info["spacing"], atol=1e-5)
    np.testing.assert_allclose(back.origin, info["origin"], atol=1e-4)
    np.testing.assert_allclose(back.direction, info["direction"], atol=1e-5)


def test_viewer_opens_cache_entries_and_whole_caches(tmp_path, phantom_files):
    from medvol.data.cache import load_entry
    from medvol.viewer.layers import load_volumes

    src, _ = phantom_files
    cache = tmp_path / "cache"
    build_cache(src, cache, P32)
    one = load_volumes([cache / "volumes" / "phantom_0001.npy"])
    assert len(one) == 1 and one[0].path == str(cache / "volumes" / "phantom_0001.npy")
    expected = load_entry(cache, "phantom_0001", physical=True)
    np.testing.assert_array_equal(one[0].array, expected.array)
    assert one[0].array.min() == -1024.0  # in HU, like generated samples and the --window presets
    assert (one[0].spacing, one[0].origin, one[0].direction) == (expected.spacing, expected.origin, expected.direction)
    assert [v.path for v in load_volumes([cache])] == [str(cache / "volumes" / f"phantom_000{i}.npy") for i in range(3)]
    np.save(tmp_path / "loose.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(MedvolError, match=r"loose\.npy: a \.npy outside a medvol cache"):
        load_volumes([tmp_path / "loose.npy"])


@pytest.mark.parametrize("damage, message", [
    ("no manifest", r"manifest\.json: missing"),
    ("corrupt manifest", r"manifest\.json: unreadable manifest"),
    ("malformed manifest", r"manifest\.json: volume entry 1 is malformed"),
    ("truncated array", r"volumes/phantom_0001\.npy: unreadable cached volume"),
    ("wrong shape", r"volumes/phantom_0001\.npy: float32 array of shape \(4, 4, 4\), expected float32 \(32, 32, 32\)"),
    ("missing array", r"volumes/phantom_0001\.npy: missing"),
    ("no geometry", r"manifest\.json: volume 'phantom_0001' has no origin \(built by an older medvol\)"),
])
def test_damaged_caches_are_one_line_naming_the_file(tmp_path, phantom_files, capsys, damage, message):
    from medvol.cli import main
    from medvol.data.cache import load_entry

    src, _ = phantom_files
    cache = tmp_path / "cache"
    build_cache(src, cache, P32)
    manifest_path, array = cache / "manifest.json", cache / "volumes" / "phantom_0001.npy"
    manifest = load_manifest(cache)
    if damage == "no manifest":
        manifest_path.unlink()
    elif damage == "corrupt manifest":
        manifest_path.write_text(manifest_path.read_text(encoding="utf-8")[:200], encoding="utf-8")
    elif damage == "malformed manifest":
        manifest["volumes"][1] = {"name": "phantom_0001"}
    elif damage == "truncated array":
        array.write_bytes(array.read_bytes()[:500])
    elif damage == "wrong shape":
        np.save(array, np.zeros((4, 4, 4), np.float32))
    elif damage == "missing array":
        array.unlink()
    elif damage == "no geometry":
        del manifest["volumes"][1]["origin"]
    if damage in ("malformed manifest", "no geometry"):
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(MedvolError, match=message):
        load_entry(cache, "phantom_0001")
    code = main(["preprocess", "--dst", str(cache), "--export-nifti", str(tmp_path / "nii")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("medvol preprocess: error: ") and re.search(message, err), err
    assert not list((tmp_path / "nii").glob("phantom_0001*"))


def _volume_arrays(cache) -> list[str]:
    """The volume arrays of a cache folder, label maps aside (phantoms may carry them)."""
    return sorted(n for n in os.listdir(cache / "volumes") if not n.endswith("_labels.npy"))
