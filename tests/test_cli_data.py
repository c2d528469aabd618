"""`medvol data phantom` and `medvol preprocess` end to end in a temporary folder."""

import json
import os
import subprocess
import sys
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
    assert code == 0 and "wrote 3 phantom volume(s) with nodule masks" in out
    assert sorted(os.listdir(tmp_path / "ph")) == [
        f"phantom_000{i}{m}.nii.gz" for i in range(3) for m in ("", "_mask")]
    argv = ["preprocess", "--src", tmp_path / "ph", "--dst", tmp_path / "cache", "--size", 32,
            "--window", "-1024,600", "--workers", 1]
    code, out, _ = run(argv, capsys)
    assert code == 0 and "preprocessed 3 volume(s), reused 0, skipped 0" in out
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert [v["name"] for v in manifest["volumes"]] == ["phantom_0000", "phantom_0001", "phantom_0002"]
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


def test_installed_entry_point(tmp_path):
    medvol = Path(sys.executable).parent / "medvol"
    main(["data", "phantom", "--n", "2", "--size", "32", "--out", str(tmp_path / "ph"), "--format", "mhd"])
    done = subprocess.run([str(medvol), "preprocess", "--src", str(tmp_path / "ph" / "*.mhd"), "--dst",
                           str(tmp_path / "cache"), "--size", "32", "--window", "-1024,600", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "preprocessed 2 volume(s)" in done.stdout
    arrays = sorted((tmp_path / "cache" / "volumes").glob("*.npy"))
    assert [a.name for a in arrays] == ["phantom_0000.npy", "phantom_0001.npy"]
    assert np.load(arrays[0]).shape == (32, 32, 32)
    bad = subprocess.run([str(medvol), "preprocess", "--src", str(tmp_path / "nowhere"), "--dst",
                          str(tmp_path / "c2"), "--size", "32"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("nowhere: no such file or folder")
