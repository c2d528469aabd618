"""Scores across seeds: per real fraction and generation, the mean and its t interval.

Each seed is one independent run of the whole recursion (its own generation 0, data order,
latents), so the seeds' scores are independent draws of the study's outcome; the interval over
them is Student's t interval of the mean,

    mean +- t_{(1 + level) / 2, n - 1} * s / sqrt(n),

with ``s`` the sample standard deviation (``ddof=1``) of the n seeds' values. It assumes the
per-seed values are roughly normal; with n = 3 the quantile is 4.30 (level 0.95), so only large
effects separate. A score missing (NaN) for a seed is left out of that mean and its n.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from medvol.errors import MedvolError

#: The interval the study reports.
LEVEL = 0.95


def t_interval(values: Iterable[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean and two-sided Student t interval of the mean of ``values`` (module docstring).

    Args:
        values: the per-seed values (NaN left out).
        level: the confidence level, in (0, 1).

    Returns:
        ``{"mean", "low", "high", "sd", "n"}``; ``low``/``high``/``sd`` are NaN with fewer than two
        finite values, every entry NaN (n 0) with none.

    Raises:
        MedvolError: a level outside (0, 1).
    """
    if not 0.0 < float(level) < 1.0:
        raise MedvolError(f"t interval: level {level!r} must be in (0, 1)")
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "sd": math.nan, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "low": math.nan, "high": math.nan, "sd": math.nan, "n": 1}
    from medvol.utils import optional_import

    stats = optional_import("scipy.stats", "the study's confidence intervals")
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + float(level) / 2.0, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n}


def aggregate(runs: Sequence[dict[str, Any]], keys: Sequence[str], level: float = LEVEL) -> list[dict[str, Any]]:
    """One row per (real fraction, generation): each score's :func:`t_interval` over the seeds.

    Args:
        runs: ``{"seed", "real_fraction", "generations": [scores.json records]}`` per seed and
            fraction; generation 0 appears in every fraction's run of its seed.
        keys: the scores to aggregate.

    Returns:
        Rows ``{"real_fraction", "generation", "seeds": [...], key: t_interval, ...}`` sorted by
        fraction, then generation.
    """
    cells: dict[tuple[float, int], list[dict[str, Any]]] = {}
    for run in runs:
        for record in run["generations"]:
            cells.setdefault((float(run["real_fraction"]), int(record["generation"])), []).append(record)
    rows = []
    for (fraction, k), records in sorted(cells.items()):
        row: dict[str, Any] = {"real_fraction": fraction, "generation": k,
                               "seeds": [int(r["seed"]) for r in records]}
        for key in keys:
            row[key] = t_interval([r["scores"].get(key, math.nan) if r["scores"].get(key) is not None else math.nan
                                   for r in records], level)
        rows.append(row)
    return rows


def paired_changes(runs: Sequence[dict[str, Any]], keys: Sequence[str], level: float = LEVEL) -> list[dict[str, Any]]:
    """Per real fraction and generation k >= 1: each score's change from generation 0, paired by seed.

    Each seed's generation k is compared with its own generation 0 (same real data, same seed
    rule), so the seed-to-seed spread of generation 0 cancels: the interval is the t interval of
    the n per-seed differences (module docstring), narrower than comparing two means' intervals.

    Returns:
        Rows ``{"real_fraction", "generation", "seeds", key: t_interval of (score_k - score_0)}``.
    """
    cells: dict[tuple[float, int], list[tuple[int, dict, dict]]] = {}
    for run in runs:
        by_k = {int(r["generation"]): r for r in run["generations"]}
        if 0 not in by_k:
            continue
        for k, record in by_k.items():
            if k > 0:
                cells.setdefault((float(run["real_fraction"]), k), []).append((int(run["seed"]), by_k[0], record))
    rows = []
    for (fraction, k), triples in sorted(cells.items()):
        row: dict[str, Any] = {"real_fraction": fraction, "generation": k, "seeds": [s for s, _, _ in triples]}
        for key in keys:
            diffs = []
            for _, zero, record in triples:
                a, b = zero["scores"].get(key), record["scores"].get(key)
                diffs.append(math.nan if a is None or b is None else float(b) - float(a))
            row[key] = t_interval(diffs, level)
        rows.append(row)
    return rows
