"""The bootstrap interval of a biased score: coverage of the true Fréchet distance over repeated
draws from Gaussians with known parameters (the closed form is the oracle), and the endpoints
against ``scipy.stats.bootstrap`` (its ``basic`` and ``percentile`` methods)."""

from __future__ import annotations

import numpy as np
import pytest

from medvol.errors import MedvolError
from medvol.eval import metrics as M
from medvol.eval.evaluate import interval_for


def two_gaussians(d: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    cov2 = 0.5 * np.eye(d) + 0.5 * a @ a.T
    mu2 = np.full(d, 0.3)
    return mu2, cov2, M.frechet_distance_from_stats(np.zeros(d), np.eye(d), mu2, cov2)


def test_basic_interval_covers_the_true_fid_and_holds_its_estimate():
    # D = 16, N = 60 per side: the plug-in FID is biased upward by about its own spread, so the
    # percentile interval (the resamples' quantiles, shifted up by the same bias once more)
    # misses the true distance nearly always; the basic interval moves down by the bias.
    d, n, reps, rounds = 16, 60, 60, 60
    mu2, cov2, truth = two_gaussians(d)
    chol = np.linalg.cholesky(cov2)
    rng = np.random.default_rng(7)
    basic_hits = percentile_hits = 0
    for rep in range(reps):
        x = rng.standard_normal((n, d))
        y = mu2 + rng.standard_normal((n, d)) @ chol.T
        got = M.bootstrap(M.frechet_distance, x, y, n_boot=rounds, seed=rep)
        assert got["interval"] == "basic"
        assert got["ci_low"] <= got["bias_corrected"] <= got["ci_high"]
        assert got["bias"] > 0  # the resamples sit above the estimate: FID is biased upward
        basic_hits += got["ci_low"] <= truth <= got["ci_high"]
        pct = M.bootstrap(M.frechet_distance, x, y, n_boot=rounds, seed=rep, method="percentile")
        percentile_hits += pct["ci_low"] <= truth <= pct["ci_high"]
    # nominal 0.95 (measured 0.945 over 200 draws of 100 rounds); binomial sd at 60 draws ~0.03
    assert basic_hits / reps >= 0.85
    assert percentile_hits / reps <= 0.3


@pytest.mark.parametrize("method", ["basic", "percentile"])
def test_interval_matches_scipy_bootstrap(method):
    from scipy.stats import bootstrap as scipy_bootstrap

    rng = np.random.default_rng(3)
    mu2, cov2, _ = two_gaussians(2)
    x = rng.standard_normal((40, 2))
    y = mu2 + rng.standard_normal((40, 2)) @ np.linalg.cholesky(cov2).T
    rounds = 3000
    ours = M.bootstrap(M.frechet_distance, x, y, n_boot=rounds, seed=5, method=method)
    # scipy resamples 1D samples: resample row indices, score the rows they pick
    fid_of_rows = lambda i, j: M.frechet_distance(x[i.astype(int)], y[j.astype(int)])  # noqa: E731
    ref = scipy_bootstrap((np.arange(40), np.arange(40)), fid_of_rows, vectorized=False, paired=False,
                          n_resamples=rounds, method=method, confidence_level=0.95,
                          rng=np.random.default_rng(11)).confidence_interval
    width = ref.high - ref.low
    # two independent sets of 3000 resamples: the endpoints agree to Monte Carlo error
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.1 * width)
    assert ours["ci_high"] == pytest.approx(ref.high, abs=0.1 * width)


def test_interval_choice_and_closed_form_endpoints():
    draws = np.array([3.0, 4.0, 5.0, 6.0, 7.0])
    basic = M.bootstrap_interval(2.0, draws, level=0.5, method="basic")
    # quantiles 0.25 / 0.75 of the draws: 4 and 6; basic = [2*2 - 6, 2*2 - 4]
    assert (basic["ci_low"], basic["ci_high"]) == (-2.0, 0.0)
    assert basic["bias"] == 3.0 and basic["bias_corrected"] == -1.0
    pct = M.bootstrap_interval(2.0, draws, level=0.5, method="percentile")
    assert (pct["ci_low"], pct["ci_high"]) == (4.0, 6.0) and "bias_corrected" not in pct
    with pytest.raises(MedvolError, match="bca"):
        M.bootstrap_interval(2.0, draws, method="bca")
    assert interval_for("axial/fid") == interval_for("fid") == "basic"
    assert interval_for("mean/mmd") == interval_for("axial/precision") == "percentile"
