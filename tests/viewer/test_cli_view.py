"""`medvol view`: headless screenshots, and bad input failing with exit 2 before any window."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from medvol.cli import main


def _png(path):
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _screenshot(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["view", *map(str, args), "--screenshot", str(out)]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left"
    return _png(out)


def test_screenshot_of_phantoms_shows_them(napari_app, volumes_dir, tmp_path, capsys):
    a = _screenshot(tmp_path, "a.png", volumes_dir / "a.nii.gz", "--window", "lung")
    assert capsys.readouterr().out.strip().endswith("a.png")
    b = _screenshot(tmp_path, "b.png", volumes_dir / "b.nii.gz", "--window", "lung")
    assert a.shape == b.shape and a.shape[2] in (3, 4)
    gray = a[..., :3].astype(float).mean(axis=2)
    assert gray.std() > 20 and len(np.unique(gray)) > 20, "screenshot is (nearly) uniform"
    diff = np.abs(a[..., :3].astype(float) - b[..., :3].astype(float))
    assert (diff > 30).mean() > 0.01, "two different phantoms gave the same picture"


def test_grid_and_3d_screenshots(napari_app, volumes_dir, tmp_path):
    grid = _screenshot(tmp_path, "grid.png", volumes_dir / "a.nii.gz", volumes_dir / "b.nii.gz",
                       "--grid", "--window=-1000,400", "--slice", "coronal")
    height, width = grid.shape[:2]
    assert width == 2 * height
    left, right = grid[:, : width // 2, :3].astype(float), grid[:, width // 2:, :3].astype(float)
    assert left.std() > 20 and right.std() > 20 and np.abs(left - right).mean() > 1
    rendered = _screenshot(tmp_path, "3d.png", volumes_dir / "a.nii.gz", "--ndisplay", "3")
    assert rendered[..., :3].astype(float).mean(axis=2).std() > 5


def test_screenshot_without_a_display(volumes_dir, tmp_path):
    """No DISPLAY, Qt offscreen: medvol starts its own Xvfb (as xvfb-run would)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "XAUTHORITY")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    out = tmp_path / "offscreen.png"
    result = subprocess.run(
        [sys.executable, "-m", "medvol.cli", "view", str(volumes_dir / "a.nii.gz"), "--window", "lung",
         "--screenshot", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _png(out)[..., :3].std() > 20


@pytest.fixture
def no_window(monkeypatch):
    """Any attempt to build a napari viewer fails the test."""
    import napari

    def refuse(*args, **kwargs):
        raise AssertionError("a viewer was created for bad input")

    monkeypatch.setattr(napari, "Viewer", refuse)


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["{d}/missing.nii.gz"], "missing.nii.gz"),
        (["{d}/garbage.nii.gz"], "garbage.nii.gz"),
        (["{d}/a.nii.gz", "{d}/small.nii.gz", "--grid"], "small.nii.gz"),
        (["{d}/a.nii.gz", "--labels", "{d}/small.nii.gz"], "small.nii.gz"),
        (["{d}/a.nii.gz", "--window", "liver"], "--window"),
        (["{d}/a.nii.gz", "--screenshot", "{d}/out.jpg"], "out.jpg"),
        (["{d}/a.nii.gz", "--ckpt", "{d}/none.pt"], "none.pt"),
        ([], "nothing to view"),
    ],
)
def test_bad_input_exits_2_without_window(volumes_dir, no_window, capsys, args, culprit):
    argv = ["view", *(arg.format(d=volumes_dir) for arg in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medvol view: error:"), err
    assert culprit in err
    assert not (volumes_dir / "out.jpg").exists()


def _medvol(args, env=None, timeout=120):
    env = dict(os.environ if env is None else env, PYTHONUTF8="0", LC_ALL="C")
    return subprocess.run([sys.executable, "-m", "medvol.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)


def test_window_without_a_display_is_refused(volumes_dir):
    """Qt would abort the process (exit 134); medvol says what to do instead."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = _medvol(["view", volumes_dir / "a.nii.gz"], env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == ("medvol view: error: no display to open the viewer window on (DISPLAY and "
                             "WAYLAND_DISPLAY are unset): give --screenshot OUT.png to render without one, "
                             "or log in with a display (ssh -X)\n")


def test_fifo_as_a_volume_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    out = tmp_path / "shot.png"
    try:
        result = _medvol(["view", fifo, "--screenshot", out], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("medvol view blocked reading a FIFO")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == (f"medvol view: error: {fifo}: not a regular file or folder (a FIFO); "
                             "a volume must be a file or a DICOM folder\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.nii.gz"]
