"""The README demo (tools/demo.py, configs/demo.yaml) end to end: a 3-iteration variant, and the
full demo as a slow test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medvol.data.io import read_volume
from medvol.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


def _demo():
    spec = importlib.util.spec_from_file_location("medvol_demo", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_outputs(out: Path, iterations: int, size: int, samples: int, stdout: str) -> None:
    state = ckpt.read_checkpoint(out / f"run{size}")
    assert state["iteration"] == iterations and state["config"]["model"]["name"] == "crfgan"
    assert state["config"]["data"]["source"] == str(out / f"cache{size}")
    written = sorted((out / "samples").glob("sample_*.nii.gz"))
    assert len(written) == samples
    volume = read_volume(written[0])
    assert volume.array.shape == (size,) * 3
    assert -1024.5 <= volume.array.min() and volume.array.max() <= 600.5
    assert np.isfinite(volume.array).all()
    for path in (out / f"cache{size}", out / f"run{size}" / "tb", written[0], state["path"]):
        assert str(path) in stdout


def _check_picture(path: Path, rows: int, stdout: str) -> None:
    """The closing picture: a PNG with a row per chest (real axial/coronal/sagittal, then a sample's)."""
    import matplotlib.image

    assert str(path) in stdout
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 * rows and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # drawn, not a blank canvas


def test_demo_fast_variant(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--phantoms", "3", "--phantom-size", "48", "--samples", "1", "--picture", "2",
            "--model.size", "32", "--data.batch", "2", "--train.iterations", "3", "--train.ckpt_every", "2",
            "--train.sample_every", "2", "--train.progress", "false"]
    assert _demo().main(argv) == 0
    stdout = capsys.readouterr().out
    _check_outputs(out, 3, 32, 1, stdout)
    _check_picture(out / "chests.png", rows=2, stdout=stdout)
    assert _demo().main(["--out", str(out), "--train.bogus", "1"]) == 2
    assert "train.bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_as_shipped(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _demo().main(["--out", str(out)]) == 0
    from medvol.config import load_config

    cfg = load_config(_demo().DEFAULT_CONFIG)
    stdout = capsys.readouterr().out
    _check_outputs(out, cfg.train.iterations, cfg.model.size, 2, stdout)
    _check_picture(out / "chests.png", rows=6, stdout=stdout)
