"""Hostile input to `medvol preprocess --images`: one line naming the culprit, exit 2, and the
cache as it was (no manifest for a new one)."""

import json

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from medvol.cli import main  # noqa: E402


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(array).save(path)
    return path


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _refused(capsys, tmp_path, src, *extra, dst=None, match):
    dst = dst or tmp_path / "cache"
    before = _files(dst)
    code = main(["preprocess", "--images", "images", "--src", str(src), "--dst", str(dst), "--size", "16",
                 "--workers", "1", *extra])
    out, err = capsys.readouterr()
    err = "\n".join(line for line in err.splitlines() if not line.startswith("preprocess: ")) + "\n"
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("medvol preprocess: error: ") and match in err, err
    after = {k: v for k, v in _files(dst).items() if k.name != ".medvol-cache.lock"}
    assert after == {k: v for k, v in before.items() if k.name != ".medvol-cache.lock"}
    return err


@pytest.fixture
def good(tmp_path):
    return _save(tmp_path / "src" / "good.png", np.full((16, 16), 7, dtype=np.uint8))


def test_a_corrupt_file_is_skipped_or_with_strict_refused(tmp_path, good, capsys):
    (good.parent / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    _refused(capsys, tmp_path, good.parent, "--strict", match="bad.png: unreadable image")
    assert main(["preprocess", "--images", "images", "--src", str(good.parent), "--dst", str(tmp_path / "c"),
                 "--size", "16", "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "skipped" in err and "bad.png: unreadable image" in err and "cached 1 image(s)" in out
    good.unlink()
    _refused(capsys, tmp_path, good.parent, dst=tmp_path / "new", match="no image of")


def test_nan_in_a_float_tiff(tmp_path, good, capsys):
    array = np.zeros((16, 16), dtype=np.float32)
    array[3, 4] = np.nan
    _save(good.parent / "nan.tif", array)
    _refused(capsys, tmp_path, good.parent, "--strict", match="nan.tif: holds NaN or infinite values")


def test_a_mask_of_another_size(tmp_path, good, capsys):
    _save(good.parent / "good_mask.png", np.zeros((8, 16), dtype=np.uint8))
    _refused(capsys, tmp_path, good.parent, "--strict", match="good_mask.png: mask of shape (8, 16)")


def test_mixed_sizes_and_colours_are_each_resized(tmp_path, good, capsys):
    _save(good.parent / "big.png", np.zeros((40, 24, 3), dtype=np.uint8))
    assert main(["preprocess", "--images", "images", "--src", str(good.parent), "--dst", str(tmp_path / "c"),
                 "--size", "16", "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text(encoding="utf-8"))
    assert {tuple(e["original_shape"]) for e in manifest["volumes"]} == {(16, 16), (40, 24)}
    assert all(np.load(tmp_path / "c" / e["file"]).shape == (1, 16, 16) for e in manifest["volumes"])


def test_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    _refused(capsys, tmp_path, tmp_path / "empty", match="empty: holds no images")


@pytest.mark.parametrize("path", ["../secret.png", "/etc/hosts", "./imagesTr/../../secret.png"])
def test_a_datalist_path_leaving_its_folder(tmp_path, good, capsys, path):
    _save(tmp_path / "secret.png", np.zeros((16, 16), dtype=np.uint8))
    (good.parent / "dataset.json").write_text(json.dumps({"training": [{"image": path}]}), encoding="utf-8")
    _refused(capsys, tmp_path, good.parent, match=f"training[0] image {path!r}")


def test_a_user_file_in_volumes_is_never_replaced(tmp_path, capsys):
    from medvol.data.io import Volume, write_volume

    src = tmp_path / "vols"
    write_volume(Volume(np.zeros((3, 16, 16), dtype=np.float32)), src / "first.nii")
    assert main(["preprocess", "--images", "slices", "--src", str(src), "--dst", str(tmp_path / "cache"),
                 "--size", "16", "--workers", "1"]) == 0
    write_volume(Volume(np.zeros((3, 16, 16), dtype=np.float32)), src / "scan.nii")
    (tmp_path / "cache" / "volumes" / "scan_z0001.npy").write_bytes(b"the user's own file")
    capsys.readouterr()
    before = {k: v for k, v in _files(tmp_path / "cache").items() if k.name != ".medvol-cache.lock"}
    code = main(["preprocess", "--images", "slices", "--src", str(src), "--dst", str(tmp_path / "cache"),
                 "--size", "16", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "scan_z0001.npy: exists and the cache does not list it" in err.splitlines()[-1], err
    assert {k: v for k, v in _files(tmp_path / "cache").items() if k.name != ".medvol-cache.lock"} == before


def test_a_volume_label_map_of_another_shape(tmp_path, capsys):
    from medvol.data.io import Volume, write_volume

    src = tmp_path / "lits"
    write_volume(Volume(np.zeros((3, 16, 16), dtype=np.float32)), src / "volume-0.nii")
    write_volume(Volume(np.zeros((3, 16, 8), dtype=np.uint8)), src / "segmentation-0.nii", dtype=np.uint8)
    code = main(["preprocess", "--images", "slices", "--src", str(src), "--dst", str(tmp_path / "c"), "--size", "16",
                 "--strict"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert code == 2 and "segmentation-0.nii: label map of shape (3, 16, 8)" in err, err


def test_synthetic_images_listed_by_generate_are_refused(tmp_path, good, capsys):
    (good.parent / "generated.json").write_text(json.dumps({"files": {"good.png": {"model": "dcgan"}}}))
    _refused(capsys, tmp_path, good.parent, match="good.png: marked synthetic (listed in")


def test_one_cache_one_kind(tmp_path, good, capsys):
    from medvol.data.phantom import write_phantoms

    write_phantoms(1, 32, tmp_path / "ph", seed=0)
    assert main(["preprocess", "--src", str(tmp_path / "ph"), "--dst", str(tmp_path / "cube"), "--size", "32",
                 "--workers", "1"]) == 0
    capsys.readouterr()
    _refused(capsys, tmp_path, good.parent, dst=tmp_path / "cube", match="is a 3D volume cache")
    assert main(["preprocess", "--images", "images", "--src", str(good.parent), "--dst", str(tmp_path / "flat"),
                 "--size", "16"]) == 0
    capsys.readouterr()
    before = _files(tmp_path / "flat")
    code = main(["preprocess", "--src", str(tmp_path / "ph"), "--dst", str(tmp_path / "flat"), "--size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a 2D image cache" in err, err
    assert _files(tmp_path / "flat") == before


@pytest.mark.parametrize("extra, match", [
    (["--keep", "with"], "--keep with: needs --select-class C"),
    (["--fraction", "0"], "--fraction 0.0: expected 0 < f <= 1"),
    (["--select-class", "2", "--no-labels"], "--select-class reads the masks, --no-labels drops them"),
    (["--window", "0,100"], "--window applies to images only with --scale window"),
    (["--export-nifti", "out"], "--export-nifti writes volumes"),
    (["--split", "dataset"], "defines no split"),
])
def test_impossible_options(tmp_path, good, capsys, extra, match):
    _refused(capsys, tmp_path, good.parent, *extra, match=match)


def test_2d_options_without_images(tmp_path, good, capsys):
    code = main(["preprocess", "--src", str(good.parent), "--dst", str(tmp_path / "c"), "--size", "32",
                 "--select-class", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--select-class applies to 2D caches only" in err, err


def test_volume_readers_refuse_a_2d_cache(tmp_path, good, capsys):
    from medvol.data.cache import cache_volumes, load_entry
    from medvol.errors import MedvolError

    assert main(["preprocess", "--images", "images", "--src", str(good.parent), "--dst", str(tmp_path / "flat"),
                 "--size", "16"]) == 0
    capsys.readouterr()
    for read in (lambda: load_entry(tmp_path / "flat", "good"), lambda: cache_volumes(tmp_path / "flat")):
        with pytest.raises(MedvolError, match="a 2D image cache"):
            read()
    code = main(["preprocess", "--dst", str(tmp_path / "flat"), "--export-nifti", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "a 2D image cache" in err and not (tmp_path / "out").exists()


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["array", "manifest"])
def test_a_full_disk_is_one_line_and_leaves_the_cache_as_it_was(tmp_path, good, capsys, monkeypatch, where):
    _save(good.parent / "more.png", np.zeros((16, 16), dtype=np.uint8))
    assert main(["preprocess", "--images", "images", "--src", str(good), "--dst", str(tmp_path / "cache"),
                 "--size", "16"]) == 0
    capsys.readouterr()
    target = "medvol.data.image_prep._write_array" if where == "array" else "medvol.data.cache._write_text"
    monkeypatch.setattr(target, _disk_full)
    err = _refused(capsys, tmp_path, good.parent, match="cannot write (no space left on device)")
    assert ("more.npy" if where == "array" else "manifest.json") in err


def test_ctrl_c_while_caching_images_leaves_the_cache_unchanged(tmp_path, good, capsys, monkeypatch):
    from medvol.data import image_cache

    _save(good.parent / "more.png", np.zeros((16, 16), dtype=np.uint8))
    process = image_cache._process_source
    done = []

    def second_is_interrupted(*args):
        if done:
            raise KeyboardInterrupt
        done.append(process(*args))
        return done[-1]

    monkeypatch.setattr(image_cache, "_process_source", second_is_interrupted)
    code = main(["preprocess", "--images", "images", "--src", str(good.parent), "--dst", str(tmp_path / "cache"),
                 "--size", "16", "--workers", "1"])
    err = capsys.readouterr().err.splitlines()
    assert code == 130 and err[-1].startswith("medvol preprocess: interrupted (Ctrl-C); the cache") and \
        "is unchanged" in err[-1], err
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == [".medvol-cache.lock", "volumes"]
