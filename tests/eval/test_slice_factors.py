"""The slice factor metric (``score_slices``): near its floor within one population, growing with
a controlled shift, mode coverage dropping when a mode is removed."""

import json

import numpy as np
import pytest

from medvol.data.datasets import PhantomVolumeDataset
from medvol.data.phantom_factors import measure_slice_factors
from medvol.eval.factors import score_slices


def slices(seed, n=32, size=32):
    """Every third non-blank axial slice of ``n`` phantoms: the metric compares populations of
    volumes, so a set needs many volumes more than many slices of each."""
    ds = PhantomVolumeDataset(size, n, seed=seed)
    images = np.concatenate([ds.volume(i)[::3] for i in range(n)])
    return images[(images > -1).any(axis=(1, 2))], (ds.spacing[0],) * 2, ds.window


@pytest.fixture(scope="module")
def two_sets():
    a, spacing, window = slices(3001)
    b, _, _ = slices(3002)
    return a, b, spacing, window


def test_same_population_scores_low_and_a_shift_scores_high(two_sets):
    a, b, spacing, window = two_sets
    same = score_slices(a, b, spacing, window)
    # 32 volumes a set: sampling alone gives up to about 0.45 (the habitus mix of 32 draws).
    for key, value in same["continuous"].items():
        assert value["w1_norm"] < 0.6, (key, value)
    # Shift: the samples lose every slice with lungs (a generator that draws abdomens only).
    lungless = b[[measure_slice_factors(s, spacing, window=window)["lungs"] == "no_lungs" for s in b]]
    shifted = score_slices(a, lungless, spacing, window)
    assert shifted["continuous"]["lung_fraction"]["w1_norm"] > 3 * same["continuous"]["lung_fraction"]["w1_norm"]
    assert shifted["modes"]["coverage"] < same["modes"]["coverage"]
    # Wider bodies (every slice stretched sideways by 20 %) move the width, not the depth.
    cols = np.clip(np.round((np.arange(32) - 15.5) / 1.2 + 15.5).astype(int), 0, 31)
    wide = score_slices(a, b[:, :, cols], spacing, window)
    assert wide["continuous"]["body_width_mm"]["w1_norm"] > 2 * same["continuous"]["body_width_mm"]["w1_norm"]
    assert wide["continuous"]["body_depth_mm"]["w1_norm"] < 0.6


def test_coverage_drops_when_a_mode_is_removed(two_sets):
    a, b, spacing, window = two_sets
    modes = [measure_slice_factors(s, spacing, window=window)["mode"] for s in b]
    full = score_slices(a, b, spacing, window)["modes"]
    drop = max(set(modes), key=modes.count)
    kept = score_slices(a, b[[m != drop for m in modes]], spacing, window)["modes"]
    assert drop in full["real"] and drop in full["fake"]
    assert drop in kept["missing"] and kept["coverage"] < full["coverage"]


def _write_pngs(images, folder):
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(np.round((image + 1) * 127.5).astype(np.uint8)).save(folder / f"slice_{i:03d}.png")


def test_evaluate_cli_scores_2d_images_on_phantom_slices(tmp_path, capsys):
    """``medvol evaluate --metrics factors`` on 2D images: a set of phantom slices scores near the
    real-vs-real floor against other phantoms; the same slices with their lungs filled score far
    from it; an image folder as the real side is refused in one line."""
    from medvol.cli import main

    b, _, _ = slices(3002)
    _write_pngs(b[:96], tmp_path / "same")
    filled = b[:96].copy()
    filled[(filled > -0.9) & (filled < -0.3)] = 0.05  # lung pixels become soft tissue
    _write_pngs(filled, tmp_path / "filled")
    base = ["evaluate", "--real", "phantom:3001", "--plane", "axial", "--n", "96", "--metrics", "factors"]
    assert main(base + ["--fake", str(tmp_path / "same"), "--out", str(tmp_path / "ev_same")]) == 0
    assert main(base + ["--fake", str(tmp_path / "filled"), "--out", str(tmp_path / "ev_filled")]) == 0
    same, filled_scores = (json.loads((tmp_path / d / "scores.json").read_text(encoding="utf-8"))["factors"]
                           for d in ("ev_same", "ev_filled"))
    assert same["n"] == [96, 96] and "Phantom factors" in (tmp_path / "ev_same" / "scores.md").read_text(encoding="utf-8")
    assert same["continuous"]["lung_fraction"]["w1_norm"] < 0.6
    assert filled_scores["continuous"]["lung_fraction"]["w1_norm"] > 3 * same["continuous"]["lung_fraction"]["w1_norm"]
    capsys.readouterr()
    assert main(["evaluate", "--real", str(tmp_path / "same"), "--fake", str(tmp_path / "filled"),
                 "--metrics", "factors", "--out", str(tmp_path / "ev_bad")]) == 2
    err = capsys.readouterr().err
    assert "only applies to phantom data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev_bad" / "scores.json").exists()
