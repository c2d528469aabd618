"""Statistics of a two-alternative forced-choice reader study, in numpy and the standard library.

Every function is a plain function of counts; the tests compare them with scipy (binomial
confidence interval, χ² goodness of fit and contingency) and with a published Fleiss' κ example.
The χ² survival function is the regularised upper incomplete gamma (``torch.special.gammaincc``
in float64: torch is medvol's one core numerical library with it); everything else is exact
binomial arithmetic.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

from medvol.errors import MedvolError


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p); exact sum of the probability mass."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(k, n + 1)))


def _bisect(f, target: float, increasing: bool) -> float:
    """The p in [0, 1] where the monotone ``f(p)`` crosses ``target`` (60 halvings: 1e-18)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2.0
        if (f(mid) < target) == increasing:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) confidence interval of a binomial proportion ``k / n``.

    The lower bound is the p at which P(X >= k) = α/2, the upper the p at which P(X <= k) = α/2
    (0 and 1 at the edges k = 0 and k = n), found by bisection on the exact binomial tails.

    Example:
        >>> [round(b, 4) for b in clopper_pearson(7, 10)]
        [0.3475, 0.9333]
    """
    if n < 1 or not 0 <= k <= n:
        raise MedvolError(f"binomial interval: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else _bisect(lambda p: binom_sf(k, n, p), alpha / 2, increasing=True)
    upper = 1.0 if k == n else _bisect(lambda p: binom_cdf(k, n, p), alpha / 2, increasing=False)
    return lower, upper


def dprime_2afc(k: int, n: int) -> tuple[float, float]:
    """Sensitivity d′ of a two-alternative forced choice from ``k`` correct of ``n``.

    d′ = √2 · Φ⁻¹(PC). A proportion of 0 or 1 has an infinite d′; it is replaced by 1/(2n) or
    1 − 1/(2n) (the half-count correction of Macmillan & Kaplan, 1985), so that a perfect reader of
    10 pairs gets d′ = √2 Φ⁻¹(0.95) = 2.33, not infinity.

    Returns:
        ``(d′, proportion used)``.
    """
    if n < 1:
        raise MedvolError("d′: no answers")
    pc = k / n
    pc = min(max(pc, 1.0 / (2 * n)), 1.0 - 1.0 / (2 * n))
    return math.sqrt(2.0) * NormalDist().inv_cdf(pc), pc


def binom_test_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test of ``k`` of ``n`` against p = 0.5: twice the smaller tail,
    at most 1 (the distribution is symmetric at 0.5, so this is also the "as or less likely"
    p-value of scipy's ``binomtest``)."""
    return min(1.0, 2.0 * min(binom_cdf(k, n, 0.5), binom_sf(k, n, 0.5)))


def tost_proportion(k: int, n: int, margin: float, null: float = 0.5) -> dict[str, float]:
    """Two one-sided exact binomial tests: is the proportion within ``null ± margin``?

    H0: |p − null| >= margin. The first test rejects p <= null − margin (P(X >= k) at p = null −
    margin), the second p >= null + margin (P(X <= k) at p = null + margin); the TOST p-value is
    the larger of the two. Equivalence at level α holds exactly when the 1 − 2α Clopper–Pearson
    interval lies inside the margin.
    """
    if not 0.0 < margin < min(null, 1.0 - null):
        raise MedvolError(f"--margin {margin:g}: expected a number in (0, {min(null, 1 - null):g})")
    p_lower = binom_sf(k, n, null - margin)
    p_upper = binom_cdf(k, n, null + margin)
    return {"p_lower": p_lower, "p_upper": p_upper, "p": max(p_lower, p_upper), "margin": margin, "null": null}


def chi2_sf(x: float, df: int) -> float:
    """P(χ²_df >= x): the regularised upper incomplete gamma Q(df/2, x/2)."""
    import torch

    if df < 1:
        raise MedvolError(f"χ²: degrees of freedom must be >= 1, got {df}")
    if x <= 0.0:
        return 1.0
    a = torch.tensor(df / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(a, torch.tensor(x / 2.0, dtype=torch.float64)))


def chi2_goodness_of_fit(observed: Sequence[float], expected: Sequence[float] | None = None) -> dict[str, float]:
    """Pearson's χ² goodness of fit of counts to expected counts (equal shares by default).

    Example:
        >>> round(chi2_goodness_of_fit([215, 145])["chi2"], 2)   # the CRF-GAN reader study's totals
        13.61
    """
    obs = np.asarray(observed, dtype=np.float64)
    exp = np.full_like(obs, obs.sum() / obs.size) if expected is None else np.asarray(expected, dtype=np.float64)
    if obs.size < 2 or exp.shape != obs.shape or (exp <= 0).any():
        raise MedvolError(f"χ² goodness of fit: need >= 2 categories with positive expected counts, got {exp.tolist()}")
    exp = exp * (obs.sum() / exp.sum())
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = obs.size - 1
    return {"chi2": chi2, "p": chi2_sf(chi2, df), "df": df}


def chi2_contingency(table: np.ndarray) -> dict[str, float]:
    """Pearson's χ² test of independence of an R × C table of counts (no continuity correction).

    Rows or columns that are all zero carry no information and are dropped (they would make an
    expected count zero); df = (R − 1)(C − 1) of what remains.
    """
    table = np.asarray(table, dtype=np.float64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if table.ndim != 2 or min(table.shape) < 2:
        raise MedvolError(f"χ² contingency: need a table of at least 2 x 2 non-empty rows/columns, got {table.shape}")
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    df = (table.shape[0] - 1) * (table.shape[1] - 1)
    return {"chi2": chi2, "p": chi2_sf(chi2, df), "df": df}


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' κ of an N subjects × K categories table (``counts[i, j]`` raters putting subject i
    in category j; every row sums to the same number of raters n >= 2).

    κ = (P̄ − P̄e) / (1 − P̄e), with P̄ the mean over subjects of the agreeing rater pairs
    Σ_j n_ij (n_ij − 1) / (n (n − 1)) and P̄e = Σ_j p_j² the agreement expected from the category
    shares p_j. Undefined (NaN) when every rating falls in one category (P̄e = 1).
    """
    counts = np.asarray(counts, dtype=np.float64)
    per_subject = counts.sum(axis=1)
    if counts.ndim != 2 or counts.shape[0] < 1 or not np.all(per_subject == per_subject[0]) or per_subject[0] < 2:
        raise MedvolError("Fleiss' κ: every subject needs the same number (>= 2) of ratings")
    n = per_subject[0]
    p_j = counts.sum(axis=0) / counts.sum()
    p_i = ((counts * (counts - 1)).sum(axis=1)) / (n * (n - 1))
    p_bar, p_e = float(p_i.mean()), float((p_j ** 2).sum())
    if p_e >= 1.0:
        return float("nan")
    return (p_bar - p_e) / (1.0 - p_e)
