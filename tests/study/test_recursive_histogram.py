"""The HU histogram distance of the recursive study against scipy's Wasserstein-1 as the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from medvol.errors import MedvolError
from medvol.study.recursive.histogram import bin_centres, histogram_w1, intensity_histogram

wasserstein_distance = pytest.importorskip("scipy.stats").wasserstein_distance  # the oracle (a dev extra)

WINDOW = (-1024.0, 600.0)


@pytest.mark.parametrize("bins", [1, 2, 7, 256])
@pytest.mark.parametrize("trial", range(4))
def test_w1_of_histograms_equals_scipy_on_bin_centres(bins, trial):
    rng = np.random.default_rng(100 * bins + trial)
    u = rng.integers(0, 50, bins).astype(float)
    v = rng.random(bins) * rng.integers(0, 2, bins)  # sparse, other total
    u[rng.integers(bins)] += 1
    v[rng.integers(bins)] += 0.5
    centres = bin_centres(WINDOW, bins)
    expected = wasserstein_distance(centres, centres, u_weights=u, v_weights=v)
    assert histogram_w1(u, v, WINDOW) == pytest.approx(expected, rel=1e-10, abs=1e-9)
    assert histogram_w1(v, u, WINDOW) == pytest.approx(expected, rel=1e-10, abs=1e-9)


def test_w1_of_binned_voxels_is_within_a_bin_of_the_exact_w1():
    rng = np.random.default_rng(3)
    real = [rng.normal(-700, 150, (8, 8, 8)), rng.normal(40, 60, (8, 8, 8))]
    fake = [rng.normal(-600, 200, (8, 8, 8)), rng.normal(100, 30, (8, 8, 8))]
    clip = [np.clip(np.concatenate([a.ravel() for a in vols]), *WINDOW) for vols in (real, fake)]
    exact = wasserstein_distance(*clip)
    binned = histogram_w1(intensity_histogram(real, WINDOW), intensity_histogram(fake, WINDOW), WINDOW)
    width = (WINDOW[1] - WINDOW[0]) / 256
    assert exact > 50  # a real difference, far above the binning error
    assert abs(binned - exact) <= width


def test_shift_by_whole_bins_is_measured_in_hu():
    a = np.full((4, 4, 4), -500.0)
    h_a = intensity_histogram([a], WINDOW, bins=1624)  # 1 HU bins
    h_b = intensity_histogram([a + 100.0], WINDOW, bins=1624)
    assert histogram_w1(h_a, h_b, WINDOW) == pytest.approx(100.0)
    assert histogram_w1(h_a, h_a, WINDOW) == 0.0


def test_bad_histograms_are_refused():
    with pytest.raises(MedvolError, match="shapes"):
        histogram_w1(np.ones(3), np.ones(4), WINDOW)
    with pytest.raises(MedvolError, match="non-negative"):
        histogram_w1(np.zeros(3), np.ones(3), WINDOW)
    with pytest.raises(MedvolError, match="NaN"):
        intensity_histogram([np.array([0.0, np.nan])], WINDOW)
    with pytest.raises(MedvolError, match="no volumes"):
        intensity_histogram([], WINDOW)


def test_values_outside_the_range_count_in_the_end_bins():
    counts = intensity_histogram([np.array([-2000.0, -1024.0, 0.0, 600.0, 1000.0])], WINDOW, bins=4)
    assert counts.tolist() == [2.0, 0.0, 1.0, 2.0]
