"""The slice factor metric (``score_slices``): near its floor within one population, growing with
a controlled shift, mode coverage dropping when a mode is removed."""

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
