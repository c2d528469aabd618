"""The reader-study statistics against scipy (oracle) and published figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medvol.errors import MedvolError
from medvol.study.reader import stats

scipy_stats = pytest.importorskip("scipy.stats")

CASES = [(0, 10), (1, 10), (7, 10), (10, 10), (5, 30), (215, 360), (59, 100), (3, 1000)]


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_clopper_pearson_matches_scipy(k, n, confidence):
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    low, high = stats.clopper_pearson(k, n, confidence)
    assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9)


@pytest.mark.parametrize("k,n", CASES)
def test_binomial_tails_match_scipy(k, n):
    for p in (0.05, 0.4, 0.5, 0.6, 0.93):
        assert stats.binom_cdf(k, n, p) == pytest.approx(scipy_stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)
        assert stats.binom_sf(k, n, p) == pytest.approx(scipy_stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)


def test_crfgan_paper_totals_give_13_61_and_the_per_pair_form_gives_1_93e_05():
    totals = stats.chi2_goodness_of_fit([215, 145])
    oracle = scipy_stats.chisquare([215, 145])
    assert totals["chi2"] == pytest.approx(13.61, abs=0.005) and totals["df"] == 1
    assert totals["chi2"] == pytest.approx(oracle.statistic, rel=1e-12)
    assert totals["p"] == pytest.approx(oracle.pvalue, rel=1e-9) and totals["p"] == pytest.approx(2.2e-4, rel=0.03)
    # The published 71.42 is the per-pair contingency form: 30 pairs x 2 models, 29 df.
    assert stats.chi2_sf(71.42, 29) == pytest.approx(1.93e-05, rel=0.005)
    assert stats.chi2_sf(71.42, 29) == pytest.approx(scipy_stats.chi2.sf(71.42, 29), rel=1e-9)


@pytest.mark.parametrize("df", [1, 2, 5, 29, 100])
def test_chi2_sf_matches_scipy(df):
    for x in (0.01, 1.0, df, 3.0 * df, 50.0):
        assert stats.chi2_sf(x, df) == pytest.approx(scipy_stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_goodness_of_fit_with_unequal_expected_shares():
    observed, shown = [40, 25, 15], [60, 30, 30]
    ours = stats.chi2_goodness_of_fit(observed, shown)
    expected = np.asarray(shown) / sum(shown) * sum(observed)
    oracle = scipy_stats.chisquare(observed, expected)
    assert ours["chi2"] == pytest.approx(oracle.statistic) and ours["p"] == pytest.approx(oracle.pvalue)


def test_per_pair_contingency_matches_scipy_at_29_df():
    rng = np.random.default_rng(0)
    a = rng.integers(2, 11, size=30)
    table = np.stack([a, 12 - a], axis=1)  # 12 readers, 30 pairs, votes for model A and B
    ours = stats.chi2_contingency(table)
    chi2, p, df, _ = scipy_stats.chi2_contingency(table, correction=False)
    assert ours["df"] == df == 29
    assert ours["chi2"] == pytest.approx(chi2, rel=1e-12) and ours["p"] == pytest.approx(p, rel=1e-9)


def test_contingency_drops_empty_rows_and_refuses_a_degenerate_table():
    table = np.array([[3, 1], [0, 0], [1, 3]])
    assert stats.chi2_contingency(table)["df"] == 1
    with pytest.raises(MedvolError, match="contingency"):
        stats.chi2_contingency(np.array([[3, 0], [4, 0]]))


def test_fleiss_kappa_textbook_example():
    """Fleiss' κ on the classic worked example (10 subjects, 14 raters, 5 categories):
    P̄ = 0.378, P̄e = 0.213, κ = 0.210 (Fleiss 1971; the example Wikipedia works through)."""
    table = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    assert stats.fleiss_kappa(table) == pytest.approx(0.210, abs=0.0005)


def test_fleiss_kappa_extremes():
    assert stats.fleiss_kappa(np.array([[4, 0], [0, 4], [4, 0]])) == pytest.approx(1.0)
    # Raters split 2/2 on every subject, categories balanced: agreement below chance.
    assert stats.fleiss_kappa(np.array([[2, 2], [2, 2]])) == pytest.approx(-1 / 3)
    assert math.isnan(stats.fleiss_kappa(np.array([[3, 0], [3, 0]])))
    with pytest.raises(MedvolError, match="same number"):
        stats.fleiss_kappa(np.array([[3, 0], [2, 0]]))


def test_dprime_2afc_and_the_half_count_correction():
    norm = scipy_stats.norm
    assert stats.dprime_2afc(75, 100)[0] == pytest.approx(math.sqrt(2) * norm.ppf(0.75), rel=1e-9)
    assert stats.dprime_2afc(50, 100)[0] == pytest.approx(0.0, abs=1e-12)
    assert stats.dprime_2afc(30, 100)[0] < 0
    # 10 of 10 is infinite without a correction; 1 - 1/(2n) = 0.95 gives 2.326.
    assert stats.dprime_2afc(10, 10) == (pytest.approx(math.sqrt(2) * norm.ppf(0.95)), 0.95)
    assert stats.dprime_2afc(0, 10) == (pytest.approx(-math.sqrt(2) * norm.ppf(0.95)), 0.05)


@pytest.mark.parametrize("k,n", [(180, 360), (200, 360), (15, 30), (59, 100), (30, 30)])
def test_tost_is_two_exact_one_sided_binomial_tests(k, n):
    margin = 0.1
    result = stats.tost_proportion(k, n, margin)
    greater = scipy_stats.binomtest(k, n, 0.5 - margin, alternative="greater").pvalue
    less = scipy_stats.binomtest(k, n, 0.5 + margin, alternative="less").pvalue
    assert result["p_lower"] == pytest.approx(greater, rel=1e-9)
    assert result["p_upper"] == pytest.approx(less, rel=1e-9)
    assert result["p"] == pytest.approx(max(greater, less), rel=1e-9)
    # Equivalence at α = 0.05 holds when the 90 % exact interval lies inside the margin.
    low, high = stats.clopper_pearson(k, n, 0.90)
    assert (result["p"] < 0.05) == (0.5 - margin < low and high < 0.5 + margin)


def test_tost_needs_data_not_just_a_non_significant_difference():
    # 16 of 30 is nowhere near significant, yet far too few answers to show equivalence.
    assert scipy_stats.binomtest(16, 30).pvalue > 0.5
    assert stats.tost_proportion(16, 30, 0.1)["p"] > 0.05
    assert stats.tost_proportion(182, 360, 0.1)["p"] < 0.05
    with pytest.raises(MedvolError, match="--margin"):
        stats.tost_proportion(1, 2, 0.6)
