"""Issue 22 ("Trust"): names read from a cache stay inside it, a user's files in a cache are kept,
non-regular files are refused, `medvol info` on folders, and Ctrl-C says what it left."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import COMMANDS, main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the cache lock aside: it holds the last pid)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".medvol-cache.lock"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two 32^3 phantoms with label maps, and their cache (train 1, val 1)."""
    from medvol.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("built")
    write_phantoms(2, 32, root / "src", seed=4)
    code = main(["preprocess", "--src", str(root / "src"), "--dst", str(root / "cache"), "--size", "32",
                 "--workers", "1"])
    assert code == 0
    return root


@pytest.fixture
def world(built, tmp_path):
    """A copy of the sources and cache at tmp_path/a/b/{src,cache}, and the files an escape would hit:
    tmp_path/victim.npy (and _labels) with a user's bytes."""
    base = tmp_path / "a" / "b"
    shutil.copytree(built / "src", base / "src")
    shutil.copytree(built / "cache", base / "cache")
    manifest = base / "cache" / "manifest.json"  # its sources: the copies (copytree keeps their mtimes)
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(str(built / "src"), str(base / "src")),
                        encoding="utf-8")
    for name in ("victim.npy", "victim_labels.npy", "victim.nii.gz"):
        (tmp_path / name).write_bytes(b"precious " + name.encode())
    return base


def _edit_manifest(cache: Path, **changes) -> None:
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["volumes"][0].update(changes)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _outside(tmp_path: Path, base: Path) -> dict[str, bytes]:
    """Every file outside the sources and cache (what a crafted name could reach)."""
    return {k: v for k, v in _files(tmp_path).items() if not k.startswith("a/b/")}


# --- case 1: names read from a manifest leave their folder --------------------------------------

def _cache_readers(cache: Path, world: Path) -> list[list]:
    """Commands that read a cache for training and evaluation."""
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    return [["features", "train", "--data", cache, "--out", world / "f.pt", "--iters", 1, "--batch", 1],
            ["train", "--config", demo, "--data.source", cache, "--out", world / "run"],
            ["evaluate", "--real", cache, "--fake", cache, "--out", world / "ev", "--size", 32]]


def _crafted(tmp_path):
    return [("./../../victim", "not a plain file name"), ("..", "not a plain file name"),
            (str(tmp_path / "victim"), "not a plain file name"), ("sub/victim", "not a plain file name")]


@pytest.mark.parametrize("case", range(4))
def test_a_crafted_name_is_refused_by_every_reader_and_writer(world, tmp_path, capsys, case):
    name, why = _crafted(tmp_path)[case]
    cache = world / "cache"
    labels = f"volumes/{name}_labels.npy"
    _edit_manifest(cache, name=name, file=f"volumes/{name}.npy", labels=labels)
    outside = _outside(tmp_path, world)
    cache_files = _files(cache)
    commands = [
        ["preprocess", "--src", world / "src", "--dst", cache, "--size", 32, "--workers", 1],
        ["preprocess", "--src", world / "src", "--dst", cache, "--size", 32, "--workers", 1, "--export-nifti",
         world / "out"],
        ["preprocess", "--dst", cache, "--export-nifti", world / "out"],
        ["info", cache],
        *_cache_readers(cache, world),
    ]
    for argv in commands:
        code, out, err = run(argv, capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, out, err)
        assert f"volume entry 0 name {name!r}" in err and why in err and "outside the folder" in err, err
    assert _outside(tmp_path, world) == outside  # victim.npy, victim_labels.npy kept; nothing new
    assert _files(cache) == cache_files
    assert not (world / "out").exists() or not any((world / "out").iterdir())


def test_a_file_not_named_after_its_entry_is_refused(world, capsys):
    cache = world / "cache"
    _edit_manifest(cache, file="volumes/../../../victim.npy")
    code, out, err = run(["preprocess", "--dst", cache, "--export-nifti", world / "out"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "file 'volumes/../../../victim.npy' is not 'volumes/phantom_0000.npy'" in err


def _link_out(cache: Path, tmp_path: Path) -> None:
    """Every array of the cache moved outside it, a symlink left in its place."""
    for array in sorted((cache / "volumes").glob("*.npy")):
        target = tmp_path / f"elsewhere_{array.name}"
        shutil.move(array, target)
        array.symlink_to(target)


def test_links_out_of_the_cache_are_refused_by_its_readers(world, tmp_path, capsys):
    cache = world / "cache"
    _link_out(cache, tmp_path)
    outside = _outside(tmp_path, world)
    for argv in (["preprocess", "--dst", cache, "--export-nifti", world / "out"],
                 ["preprocess", "--src", world / "src", "--dst", cache, "--size", 32, "--workers", 1],
                 *_cache_readers(cache, world)):
        code, out, err = run(argv, capsys)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert "a link pointing outside its folder" in err and ".npy'" in err, err
    assert _outside(tmp_path, world) == outside
    assert not (world / "f.pt").exists()


def test_links_out_of_the_export_folder_are_refused_before_any_write(world, tmp_path, capsys):
    out = world / "out"
    out.mkdir()
    (out / "phantom_0001.nii.gz").symlink_to(tmp_path / "victim.nii.gz")
    code, _, err = run(["preprocess", "--dst", world / "cache", "--export-nifti", out], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--export-nifti file 'phantom_0001.nii.gz'" in err and "a link pointing outside its folder" in err
    assert (tmp_path / "victim.nii.gz").read_bytes() == b"precious victim.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == ["phantom_0001.nii.gz"]  # phantom_0000 not written first


def test_a_plain_export_still_works(world, capsys):
    code, out, err = run(["preprocess", "--dst", world / "cache", "--export-nifti", world / "out"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (world / "out").iterdir()) == [
        f"phantom_000{i}{m}.nii.gz" for i in range(2) for m in ("", "_mask")]


# --- case 2: a user's files in CACHE/volumes/ ------------------------------------------------------

def test_a_users_arrays_in_the_cache_are_kept_and_never_replaced(world, tmp_path, capsys):
    from medvol.data.phantom import write_phantoms

    cache = world / "cache"
    mine = {"mine.npy": b"user's array", "phantom_0007.npy": b"user's phantom_0007",
            "phantom_0008_labels.npy": b"user's labels"}
    for name, data in mine.items():
        (cache / "volumes" / name).write_bytes(data)
    write_phantoms(9, 32, tmp_path / "more", seed=6)
    for path in sorted((tmp_path / "more").iterdir()):
        if not path.name.startswith(("phantom_0007", "phantom_0008")):
            path.unlink()
    argv = ["preprocess", "--dst", cache, "--size", 32, "--workers", 1]
    code, out, err = run(argv + ["--src", world / "src"], capsys)
    assert code == 0 and "temporary" not in err and "reused 2" in out, err
    code, out, err = run(argv + ["--src", tmp_path / "more"], capsys)
    assert code == 0 and "preprocessed 2 volume(s)" in out, err
    for name, data in mine.items():
        assert (cache / "volumes" / name).read_bytes() == data
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    names = [v["name"] for v in manifest["volumes"]]
    # The new volumes whose names are taken by the user's files get the stem and a hash of their path.
    assert names[:2] == ["phantom_0000", "phantom_0001"] and len(names) == 4
    assert all(n.startswith(("phantom_0007-", "phantom_0008-")) for n in names[2:]), names
    # --overwrite with other parameters replaces what the manifest listed, never the user's files.
    code, out, err = run(argv + ["--src", world / "src", "--window", "-1000,400", "--overwrite"], capsys)
    assert code == 0 and "2 removed" in err, err
    for name, data in mine.items():
        assert (cache / "volumes" / name).read_bytes() == data


def test_only_medvols_temporaries_and_an_uncommitted_runs_arrays_are_cleaned(world):
    from medvol.data.cache import clean_temporaries

    cache = world / "cache"
    volumes = cache / "volumes"
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    # A run killed while committing: its manifest lists phantom_0002, already renamed into place.
    committing = dict(manifest, volumes=manifest["volumes"] + [dict(manifest["volumes"][0], name="phantom_0002",
                                                                    file="volumes/phantom_0002.npy", labels=None)])
    (cache / ".manifest.tmp-4242.json").write_text(json.dumps(committing), encoding="utf-8")
    (volumes / "phantom_0002.npy").write_bytes(b"renamed into place")
    (volumes / ".phantom_0003.tmp-pending.npy").write_bytes(b"pending")
    (volumes / ".x.tmp-abc123.nii.gz").write_bytes(b"atomic write")
    kept = {"mine.npy": b"mine", ".hidden.npy": b"hidden", "notes.pending.npy": b"mine too"}
    for name, data in kept.items():
        (volumes / name).write_bytes(data)
    removed = sorted(p.name for p in clean_temporaries(cache))
    assert removed == [".manifest.tmp-4242.json", ".phantom_0003.tmp-pending.npy", ".x.tmp-abc123.nii.gz",
                       "phantom_0002.npy"]
    for name, data in kept.items():
        assert (volumes / name).read_bytes() == data
    assert (volumes / "phantom_0000.npy").is_file() and (volumes / "phantom_0001_labels.npy").is_file()


def test_a_volume_with_a_temporary_looking_name_is_not_cleaned(world, tmp_path, capsys):
    odd = tmp_path / ".scan.tmp-1.nii.gz"
    shutil.copy(world / "src" / "phantom_0000.nii.gz", odd)
    argv = ["preprocess", "--src", odd, "--dst", world / "cache", "--size", 32, "--workers", 1]
    code, out, err = run(argv, capsys)
    assert code == 0 and "preprocessed 1 volume(s)" in out, err
    code, out, err = run(argv, capsys)
    assert code == 0 and "reused 1" in out and "temporary" not in err, err
    assert (world / "cache" / "volumes" / ".scan.tmp-1.npy").is_file()


def test_an_uncommitted_manifest_naming_a_file_out_of_the_cache_removes_nothing(world, tmp_path):
    from medvol.data.cache import clean_temporaries

    cache = world / "cache"
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    crafted = dict(manifest["volumes"][0], name="../../../victim", file="volumes/../../../victim.npy")
    (cache / ".manifest.tmp-1.json").write_text(json.dumps(dict(manifest, volumes=[crafted])), encoding="utf-8")
    assert [p.name for p in clean_temporaries(cache)] == [".manifest.tmp-1.json"]
    assert (tmp_path / "victim.npy").read_bytes() == b"precious victim.npy"


def test_an_interrupted_commit_takes_back_the_arrays_it_renamed(world, tmp_path, monkeypatch):
    from medvol.data import cache as cache_module
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    cache = world / "cache"
    before = _files(cache)
    write_phantoms(1, 32, tmp_path / "new", seed=8)
    (tmp_path / "new" / "phantom_0000.nii.gz").rename(tmp_path / "new" / "fresh.nii.gz")
    (tmp_path / "new" / "phantom_0000_mask.nii.gz").rename(tmp_path / "new" / "fresh_mask.nii.gz")
    replace = os.replace

    def stop_at_the_manifest(src, dst):
        if Path(dst).name == "manifest.json":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", stop_at_the_manifest)
    with pytest.raises(KeyboardInterrupt, match="is unchanged"):
        cache_module.build_cache(tmp_path / "new", cache, PreprocessParams(size=32))
    assert _files(cache) == before


# --- case 3: a FIFO as a source --------------------------------------------------------------------

def _medvol(*argv, timeout=120):
    """The CLI in a subprocess: a hang fails the test instead of blocking it forever."""
    return subprocess.run([sys.executable, "-m", "medvol.cli", *[str(a) for a in argv]], capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


def test_a_fifo_is_refused_up_front(world, tmp_path):
    pipe = tmp_path / "pipe.nii.gz"
    os.mkfifo(pipe)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{pipe}\n", encoding="utf-8")
    os.mkfifo(tmp_path / "fifo.txt")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "slice001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    os.mkfifo(dicom / "notes")
    mhd = tmp_path / "mhd"
    mhd.mkdir()
    (mhd / "v.mhd").write_text("NDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = v.raw\n",
                               encoding="utf-8")
    os.mkfifo(mhd / "v.raw")
    for src, culprit in ((pipe, pipe), (listing, pipe), (tmp_path / "fifo.txt", tmp_path / "fifo.txt"),
                         (dicom, dicom / "notes"), (mhd / "v.mhd", mhd / "v.raw")):
        done = _medvol("preprocess", "--src", src, "--dst", tmp_path / "c", "--size", 32, "--workers", 1)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr == (f"medvol preprocess: error: {culprit}: not a regular file or folder (a FIFO); a "
                               "volume must be a file or a DICOM folder\n")
        assert not (tmp_path / "c").exists()  # refused before the cache (and its lock) was made
    done = _medvol("info", pipe)
    assert done.returncode == 2 and done.stderr.endswith(f"{pipe}: not a regular file or folder (a FIFO); a volume "
                                                         "must be a file or a DICOM folder\n")


def test_a_fifo_in_a_searched_folder_is_refused_and_the_cache_untouched(world):
    cache = world / "cache"
    before = _files(cache)
    os.mkfifo(world / "src" / "phantom_0009.nii.gz")
    done = _medvol("preprocess", "--src", world / "src", "--dst", cache, "--size", 32, "--workers", 1)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{world / 'src' / 'phantom_0009.nii.gz'}: not a regular file or folder (a FIFO)" in done.stderr
    assert _files(cache) == before
    os.unlink(world / "src" / "phantom_0009.nii.gz")
    os.mkfifo(world / "src" / "phantom_0001_seg.nii.gz")  # a second label map, as a pipe: refused too
    done = _medvol("preprocess", "--src", world / "src", "--dst", cache, "--size", 32, "--workers", 1)
    assert done.returncode == 2 and "phantom_0001_seg.nii.gz: not a regular file or folder (a FIFO)" in done.stderr


# --- case 4: `medvol info` on folders --------------------------------------------------------------

def test_info_on_folders_says_what_it_found_or_refuses(world, tmp_path, capsys):
    from medvol.data.io import Volume
    from medvol.data.provenance import write_synthetic

    generated = tmp_path / "generated"
    rng = np.random.default_rng(0)
    for i in range(2):
        volume = Volume(array=rng.standard_normal((8, 8, 8)).astype(np.float32), spacing=(1.0, 1.0, 1.0))
        write_synthetic(volume, generated / f"sample_{i:04d}.nii.gz", {"model": "hagan", "seed": 0, "index": i})
    code, out, err = run(["info", generated], capsys)
    assert code == 0 and out.splitlines()[0].startswith(f"{generated}: folder of 2 volume(s), 2 marked synthetic")
    shutil.copy(world / "src" / "phantom_0000.nii.gz", generated / "real.nii.gz")
    code, out, err = run(["info", generated, "--json"], capsys)
    found = json.loads(out)
    assert code == 0 and found["kind"] == "folder" and found["synthetic"] is True
    assert found["synthetic_names"] == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    assert found["unmarked_names"] == ["real.nii.gz"]
    code, out, _ = run(["info", world / "src"], capsys)
    assert code == 0 and out == f"{world / 'src'}: folder of 2 volume(s), 0 marked synthetic " \
                                "(give one file to see what made it and check its voxels)\n"
    for folder in (tmp_path / "empty", tmp_path / "x.nii.gz"):
        folder.mkdir()
        code, out, err = run(["info", folder], capsys)
        assert code == 2 and out == "" and err.startswith(f"medvol info: error: {folder}: no volumes found")


# --- case 5: Ctrl-C ---------------------------------------------------------------------------------

#: Each command with the arguments it requires, and the function its arguments run.
CTRL_C = {
    "data": (["data", "phantom", "--n", "1", "--size", "16", "--out", "x"], "data", "run"),
    "preprocess": (["preprocess", "--dst", "x"], "preprocess", "run"),
    "train": (["train", "--config", "c"], "train", "run"),
    "generate": (["generate", "--ckpt", "c", "--out", "o"], "generate", "run"),
    "evaluate": (["evaluate", "--real", "r", "--out", "o"], "evaluate", "run"),
    "compare": (["compare", "a", "b"], "compare", "run"),
    "features": (["features", "train", "--data", "d", "--out", "o"], "features", "run"),
    "sweep": (["sweep", "--config", "c", "--grid", "g", "--runs", "1", "--out", "o"], "sweep", "run"),
    "study reader make": (["study", "reader", "make", "--out", "o"], "study_reader", "run_make"),
    "study reader score": (["study", "reader", "score", "s", "a", "--out", "o"], "study_reader", "run_score"),
    "study downstream": (["study", "downstream", "--real", "r", "--synthetic", "s", "--out", "o"],
                         "study_downstream", "run"),
    "study recursive": (["study", "recursive", "--config", "c", "--generations", "1", "--out", "o"],
                        "study_recursive", "run"),
    "study recipe": (["study", "recipe", "r", "--phantom", "--out", "o"], "study_recipe", "run"),
    "profile": (["profile", "--out", "o"], "profile", "run"),
    "info": (["info"], "info", "run"),
    "view": (["view", "p"], "view", "run"),
    "configs": (["configs"], "configs", "run"),
    "doctor": (["doctor"], "doctor", "run"),
}


def test_every_command_is_in_the_ctrl_c_table():
    assert sorted({argv[0] for argv, _, _ in CTRL_C.values()}) == sorted(COMMANDS)


@pytest.mark.parametrize("command", sorted(CTRL_C))
def test_ctrl_c_is_one_line_saying_what_it_left_and_130(command, monkeypatch, capsys):
    import importlib

    argv, module, function = CTRL_C[command]

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"medvol.commands.{module}"), function, interrupted)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 130 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"medvol {argv[0]}: interrupted (Ctrl-C); ") and len(err.strip()) > 40, err


def test_ctrl_c_while_preprocessing_leaves_the_cache_unchanged_and_says_so(world, tmp_path, monkeypatch, capsys):
    from medvol.data import cache as cache_module
    from medvol.data.phantom import write_phantoms

    cache = world / "cache"
    before = _files(cache)
    write_phantoms(2, 32, tmp_path / "new", seed=3)
    process_one = cache_module._process_one
    done = []

    def second_is_interrupted(*args, **kwargs):
        if done:
            raise KeyboardInterrupt
        done.append(process_one(*args, **kwargs))
        return done[-1]

    monkeypatch.setattr(cache_module, "_process_one", second_is_interrupted)
    code, out, err = run(["preprocess", "--src", tmp_path / "new", "--dst", cache, "--size", 32, "--workers", 1],
                         capsys)
    assert code == 130 and out == "" and len(done) == 1
    assert err == f"medvol preprocess: interrupted (Ctrl-C); the cache {cache} is unchanged " \
                  "(this run's volumes were not kept)\n"
    assert _files(cache) == before


@pytest.mark.slow
def test_ctrl_c_in_preprocess_says_the_cache_is_unchanged(world, tmp_path):
    """A real SIGINT, with one and with two workers (which must not print tracebacks of their own)."""
    from medvol.data.phantom import write_phantoms

    cache = world / "cache"
    before = _files(cache)
    write_phantoms(4, 64, tmp_path / "big", seed=2)
    for workers in (1, 2):
        process = subprocess.Popen([sys.executable, "-m", "medvol.cli", "preprocess", "--src", tmp_path / "big",
                                    "--dst", cache, "--size", "32", "--workers", str(workers)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        deadline = time.monotonic() + 120
        while not list((cache / "volumes").glob(".*.tmp-pending.npy")) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 130 and out == "", err
        assert err == f"medvol preprocess: interrupted (Ctrl-C); the cache {cache} is unchanged " \
                      "(this run's volumes were not kept)\n"
        assert _files(cache) == before


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "/abs", "a\\b", "a\x00b", None, 3])
def test_plain_name_refuses_what_safe_name_refuses_without_the_disk(name, tmp_path):
    from medvol.errors import MedvolError
    from medvol.outputs import plain_name, safe_name

    for check in (plain_name, safe_name):
        with pytest.raises(MedvolError, match="refusing to read or write outside the folder"):
            check(tmp_path / "missing", name, "entry")
    assert plain_name(tmp_path / "missing", "vol_0001.npy") == "vol_0001.npy"
    assert not (tmp_path / "missing").exists()
