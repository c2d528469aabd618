"""`medvol data phantom` and `medvol preprocess` end to end in a temporary folder."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_phantom_then_preprocess(tmp_path, capsys):
    code, out, _ = run(["data", "phantom", "--n", 3, "--size", 32, "--out", tmp_path / "ph", "--nodules"], capsys)
    assert code == 0 and "wrote 3 phantom volume(s) with nodules" in out and "(lungs 1, nodules 2)" in out
    assert sorted(os.listdir(tmp_path / "ph")) == [".medvol-output.json"] + sorted(
        f"phantom_000{i}{m}" for i in range(3) for m in (".factors.json", ".nii.gz", "_mask.nii.gz"))
    argv = ["preprocess", "--src", tmp_path / "ph", "--dst", tmp_path / "cache", "--size", 32,
            "--window", "-1024,600", "--workers", 1]
    code, out, err = run(argv, capsys)
    assert code == 0 and "preprocessed 3 volume(s), reused 0, skipped 0" in out
    # stderr is not a terminal here: one plain line for the phase instead of a bar
    assert re.search(r"^preprocess: 3 vol in \d+\.\d s$", err, re.M) and "\r" not in err
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert [v["name"] for v in manifest["volumes"]] == ["phantom_0000", "phantom_0001", "phantom_0002"]
    # Each entry keeps the phantom's factors from its sidecar.
    sidecar = json.loads((tmp_path / "ph" / "phantom_0001.factors.json").read_text(encoding="utf-8"))
    assert manifest["volumes"][1]["phantom_factors"] == sidecar["phantom_factors"]
    code, out, _ = run(argv, capsys)
    assert code == 0 and "preprocessed 0 volume(s), reused 3" in out


def test_preprocess_options(tmp_path, capsys):
    run(["data", "phantom", "--n", 1, "--size", 32, "--out", tmp_path / "ph", "--format", "mhd"], capsys)
    code, _, _ = run(["preprocess", "--src", tmp_path / "ph", "--dst", tmp_path / "c", "--size", 32,
                      "--window", "-1000,400", "--no-keep-aspect", "--blank-slices", "remove", "--seed", 4], capsys)
    assert code == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["params"]["window"] == [-1000.0, 400.0] and manifest["params"]["keep_aspect"] is False
    assert manifest["params"]["blank_slices"] == "remove" and manifest["split"]["seed"] == 4
    assert manifest["volumes"][0]["source"].endswith("phantom_0000.mhd")


@pytest.mark.parametrize("argv, message", [
    (["preprocess", "--src", "{tmp}/nowhere", "--dst", "{tmp}/c", "--size", "32"], "nowhere: no such file or folder"),
    (["preprocess", "--src", "{tmp}/empty", "--dst", "{tmp}/c", "--size", "32"], "empty: no volumes found"),
    (["preprocess", "--src", "{tmp}/empty", "--dst", "{tmp}/c", "--size", "100"], "unsupported size 100 (--size)"),
    (["preprocess", "--src", "{tmp}/empty", "--dst", "{tmp}/c", "--size", "32", "--window", "600,-1024"], "--window"),
    (["preprocess", "--src", "{tmp}/empty", "--dst", "{tmp}/c", "--size", "32", "--workers", "0"], "--workers"),
    (["data", "phantom", "--n", "1", "--size", "8", "--out", "{tmp}/p"], "--size"),
    (["data", "phantom", "--n", "0", "--size", "32", "--out", "{tmp}/p"], "--n"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    code, out, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith(f"medvol {argv[0]}: error: ")
    assert not (tmp_path / "c" / "manifest.json").exists() and not list((tmp_path).glob("p/*"))


def test_bad_volume_skipped_or_strict(tmp_path, capsys):
    run(["data", "phantom", "--n", 2, "--size", 32, "--out", tmp_path / "ph"], capsys)
    (tmp_path / "ph" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    argv = ["preprocess", "--src", tmp_path / "ph", "--dst", tmp_path / "c", "--size", 32, "--workers", 1]
    code, _, err = run(argv + ["--strict"], capsys)
    assert code == 2 and "corrupt.nii.gz: cannot read volume" in err and err.count("\n") == 1
    assert not (tmp_path / "c" / "manifest.json").exists()
    assert list((tmp_path / "c" / "volumes").iterdir()) == []
    code, out, err = run(argv, capsys)
    assert code == 0 and "preprocessed 2 volume(s), reused 0, skipped 1" in out
    assert "medvol preprocess: skipped" in err and "corrupt.nii.gz" in err
    # reported once: the cache builder's own record of it is not printed a second time
    assert sum("corrupt.nii.gz" in line for line in err.splitlines()) == 1, err


def test_skipped_volume_reported_once_in_a_subprocess(tmp_path):
    """The same with logging as the installed command sets it up (not pytest's capture)."""
    src = tmp_path / "ph"
    assert subprocess.run([sys.executable, "-m", "medvol.cli", "data", "phantom", "--n", "1", "--size",
                           "32", "--out", str(src)], capture_output=True).returncode == 0
    (src / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    done = subprocess.run([sys.executable, "-m", "medvol.cli", "preprocess", "--src", str(src), "--dst",
                           str(tmp_path / "c"), "--size", "32", "--workers", "1"],
                          capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert sum("corrupt.nii.gz" in line for line in text.splitlines()) == 1, text


def test_installed_entry_point(tmp_path):
    medvol = Path(sys.executable).parent / "medvol"
    main(["data", "phantom", "--n", "2", "--size", "32", "--out", str(tmp_path / "ph"), "--format", "mhd"])
    done = subprocess.run([str(medvol), "preprocess", "--src", str(tmp_path / "ph" / "*.mhd"), "--dst",
                           str(tmp_path / "cache"), "--size", "32", "--window", "-1024,600", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "preprocessed 2 volume(s)" in done.stdout
    arrays = sorted(p for p in (tmp_path / "cache" / "volumes").glob("*.npy") if not p.name.endswith("_labels.npy"))
    assert [a.name for a in arrays] == ["phantom_0000.npy", "phantom_0001.npy"]
    assert np.load(arrays[0]).shape == (32, 32, 32)
    bad = subprocess.run([str(medvol), "preprocess", "--src", str(tmp_path / "nowhere"), "--dst",
                          str(tmp_path / "c2"), "--size", "32"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("nowhere: no such file or folder")


# --- issue #11 case 2: a cache only grows ---------------------------------------------------------

def _phantoms(folder, n, seed, size=32):
    from medvol.data.phantom import write_phantoms

    return write_phantoms(n, size, folder, seed=seed)


def _cache_state(cache):
    """Every file of the cache (the lock file aside) with its bytes."""
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and p.name != ".medvol-cache.lock"}


def test_a_second_source_adds_its_volumes_and_keeps_the_first(tmp_path, capsys):
    _phantoms(tmp_path / "a", 2, seed=1)
    _phantoms(tmp_path / "b", 2, seed=2)  # the same file names as a/: phantom_0000, phantom_0001
    cache = tmp_path / "cache"
    base = ["preprocess", "--dst", cache, "--size", 32, "--workers", 1]
    assert run(base + ["--src", tmp_path / "a"], capsys)[0] == 0
    first = _cache_state(cache)
    code, out, err = run(base + ["--src", tmp_path / "b"], capsys)
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    sources = sorted(Path(v["source"]).parent.name + "/" + Path(v["source"]).name for v in manifest["volumes"])
    assert sources == [f"{d}/phantom_000{i}.nii.gz" for d in "ab" for i in range(2)]
    assert code == 0 and "preprocessed 2 volume(s), reused 0" in out and "the cache holds 4" in out, out + err
    # The first source's arrays are still there, byte for byte, and every listed array exists.
    for name, data in first.items():
        if name.startswith("volumes/"):
            assert (cache / name).read_bytes() == data
    assert sorted(f"volumes/{p.name}" for p in (cache / "volumes").iterdir()) == _listed(manifest)
    assert manifest["sources"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    # The same volumes with the same parameters are skipped, and the run says so.
    code, out, err = run(base + ["--src", tmp_path / "a"], capsys)
    assert code == 0 and "preprocessed 0 volume(s), reused 2" in out and "the cache holds 4" in out
    assert "2 volume(s) already in the cache with the same parameters: skipped" in err


def test_other_parameters_are_refused_unless_overwrite(tmp_path, capsys):
    _phantoms(tmp_path / "a", 2, seed=1)
    cache = tmp_path / "cache"
    base = ["preprocess", "--src", tmp_path / "a", "--dst", cache, "--workers", 1]
    assert run(base + ["--size", 32], capsys)[0] == 0
    before = _cache_state(cache)
    code, out, err = run(base + ["--size", 64], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"medvol preprocess: error: cache {cache} holds 2 volume(s) preprocessed with other "
                          "parameters (size 32 -> 64); refusing to mix them") and "--overwrite" in err
    assert _cache_state(cache) == before
    code, out, err = run(base + ["--size", 64, "--window=-1000,400"], capsys)
    assert code == 2 and "size 32 -> 64, window -1024,600 -> -1000,400" in err and _cache_state(cache) == before
    code, out, err = run(base + ["--size", 64, "--overwrite"], capsys)
    assert code == 0, err
    assert ("medvol preprocess: --overwrite: replaced the cache's 2 volume(s) preprocessed with other parameters "
            "(size 32 -> 64); 2 re-made from this run's source, 0 removed") in err
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["params"]["size"] == 64 and len(manifest["volumes"]) == 2
    assert all(np.load(cache / v["file"]).shape == (64,) * 3 for v in manifest["volumes"])


def test_other_split_settings_are_refused_unless_overwrite(tmp_path, capsys):
    _phantoms(tmp_path / "a", 3, seed=1)
    cache = tmp_path / "cache"
    base = ["preprocess", "--src", tmp_path / "a", "--dst", cache, "--size", 32, "--workers", 1]
    assert run(base + ["--seed", 4], capsys)[0] == 0
    assert run(base, capsys)[0] == 0  # leaving --seed out keeps the cache's
    code, _, err = run(base + ["--seed", 5], capsys)
    assert code == 2 and err.count("\n") == 1 and "is split with --seed 4, this run asks for --seed 5" in err
    assert json.loads((cache / "manifest.json").read_text(encoding="utf-8"))["split"]["seed"] == 4
    code, _, err = run(base + ["--seed", 5, "--overwrite"], capsys)
    assert code == 0 and "dealt the cache's 3 volume(s) anew into folds" in err
    assert json.loads((cache / "manifest.json").read_text(encoding="utf-8"))["split"]["seed"] == 5


# --- issue #11 case 3: two runs into one cache ----------------------------------------------------

def _medvol(*argv):
    return subprocess.Popen([sys.executable, "-m", "medvol.cli", *[str(a) for a in argv]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _no_temporaries(cache):
    return [p.name for p in cache.rglob(".*") if p.name != ".medvol-cache.lock"]


def test_two_runs_at_once_same_source(tmp_path):
    _phantoms(tmp_path / "a", 4, seed=1)
    cache = tmp_path / "cache"
    argv = ["preprocess", "--src", tmp_path / "a", "--dst", cache, "--size", 32, "--workers", 2]
    results = [_finish(p) for p in [_medvol(*argv), _medvol(*argv)]]
    for code, out, err in results:
        assert code == 0 and "Traceback" not in err, err
    processed = sorted(int(out.split("preprocessed ")[1].split()[0]) for _, out, _ in results)
    assert processed == [0, 4]  # one made them, the other waited and found them done
    assert any("in use by another medvol process" in err and "waiting" in err for _, _, err in results)
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    assert [v["name"] for v in manifest["volumes"]] == [f"phantom_000{i}" for i in range(4)]
    assert _volume_arrays(cache) == [f"phantom_000{i}.npy" for i in range(4)]
    assert _no_temporaries(cache) == []


def test_two_runs_at_once_different_sources(tmp_path):
    _phantoms(tmp_path / "a", 3, seed=1)
    _phantoms(tmp_path / "b", 3, seed=2)
    cache = tmp_path / "cache"
    runs = [_medvol("preprocess", "--src", tmp_path / src, "--dst", cache, "--size", 32, "--workers", 1)
            for src in "ab"]
    for code, out, err in [_finish(p) for p in runs]:
        assert code == 0 and "Traceback" not in err and "preprocessed 3 volume(s)" in out, err
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(Path(v["source"]).parent.name for v in manifest["volumes"]) == ["a"] * 3 + ["b"] * 3
    assert sorted(f"volumes/{p.name}" for p in (cache / "volumes").iterdir()) == _listed(manifest)
    assert manifest["split"]["train"] + manifest["split"]["val"] == 6
    assert _no_temporaries(cache) == []


def test_a_locked_cache_is_waited_for_or_refused(tmp_path):
    import fcntl

    _phantoms(tmp_path / "a", 1, seed=1)
    cache = tmp_path / "cache"
    (cache / "volumes").mkdir(parents=True)
    live = cache / "volumes" / ".phantom_0000.tmp-pending.npy"  # a temporary of the run holding the lock
    live.write_bytes(b"being written")
    argv = ["preprocess", "--src", tmp_path / "a", "--dst", cache, "--size", 32, "--workers", 1]
    with open(cache / ".medvol-cache.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        code, out, err = _finish(_medvol(*argv, "--lock-wait", 0))
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err == (f"medvol preprocess: error: cache {cache} is in use by another medvol process (pid 4242); "
                       "wait for it or use another --dst\n")
        code, _, err = _finish(_medvol(*argv, "--lock-wait", 0.5))
        assert code == 2 and "still locked after 0.5 s (--lock-wait)" in err and err.count("\n") == 2
        assert live.read_bytes() == b"being written" and not (cache / "manifest.json").exists()
        waiting = _medvol(*argv)
        deadline = time.monotonic() + 120
        while "waiting" not in (line := waiting.stderr.readline()) and time.monotonic() < deadline:
            assert line, "the waiting run ended without saying it waits"
        assert f"cache {cache} is in use by another medvol process (pid 4242); waiting for it to finish" in line
        assert waiting.poll() is None and live.exists()
    code, out, err = _finish(waiting)
    assert code == 0 and "preprocessed 1 volume(s)" in out, err
    assert "removed 1 temporary file(s) left by an interrupted run" in err
    assert _no_temporaries(cache) == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path):
    _phantoms(tmp_path / "a", 2, seed=1)
    _phantoms(tmp_path / "b", 6, seed=2, size=64)
    cache = tmp_path / "cache"
    argv = ["--dst", cache, "--size", 64, "--workers", 1]
    code, _, err = _finish(_medvol("preprocess", "--src", tmp_path / "a", *argv))
    assert code == 0, err
    manifest = (cache / "manifest.json").read_bytes()
    killed = _medvol("preprocess", "--src", tmp_path / "b", *argv)
    deadline = time.monotonic() + 120
    while not list((cache / "volumes").glob(".*.tmp-pending.npy")) and time.monotonic() < deadline:
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.01)
    killed.kill()
    killed.communicate()
    assert list((cache / "volumes").glob(".*.tmp-pending.npy")), "the killed run left no temporaries to clean"
    assert (cache / "manifest.json").read_bytes() == manifest
    code, out, err = _finish(_medvol("preprocess", "--src", tmp_path / "a", *argv))
    assert _no_temporaries(cache) == []
    assert code == 0 and "preprocessed 0 volume(s), reused 2" in out, err
    assert "temporary file(s) left by an interrupted run" in err
    assert _volume_arrays(cache) == ["phantom_0000.npy", "phantom_0001.npy"]


def test_view_refuses_a_bare_npy_before_any_window(tmp_path, capsys):
    np.save(tmp_path / "loose.npy", np.zeros((4, 4, 4), np.float32))
    code, out, err = run(["view", tmp_path / "loose.npy", "--screenshot", tmp_path / "shot.png"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"medvol view: error: {tmp_path / 'loose.npy'}: a .npy outside a medvol cache")
    assert not (tmp_path / "shot.png").exists()


@pytest.mark.skipif(not os.environ.get("DISPLAY") and shutil.which("Xvfb") is None, reason="needs a display or Xvfb")
def test_view_screenshots_cache_entries_beside_each_other(tmp_path):
    _phantoms(tmp_path / "a", 2, seed=1)
    cache = tmp_path / "cache"
    code, _, err = _finish(_medvol("preprocess", "--src", tmp_path / "a", "--dst", cache, "--size", 32))
    assert code == 0, err
    for source, name in [(cache, "grid.png"), (cache / "volumes" / "phantom_0001.npy", "one.png")]:
        code, out, err = _finish(_medvol("view", source, "--grid", "--window", "lung", "--screenshot", tmp_path / name))
        assert code == 0 and out.strip().endswith(str(tmp_path / name)), err
    import imageio.v3 as iio

    grid = np.asarray(iio.imread(tmp_path / "grid.png"))[..., :3].astype(float)
    height, width = grid.shape[:2]
    assert width == 2 * height and grid.std() > 20
    assert np.abs(grid[:, : width // 2] - grid[:, width // 2:]).mean() > 1  # two different entries


def _listed(manifest) -> list[str]:
    """Every array a manifest lists: volumes and their label maps (phantoms may carry them)."""
    return sorted(v[k] for v in manifest["volumes"] for k in ("file", "labels") if k in v)


def _volume_arrays(cache) -> list[str]:
    """The volume arrays of a cache folder, label maps aside."""
    return sorted(p.name for p in (cache / "volumes").iterdir() if not p.name.endswith("_labels.npy"))
