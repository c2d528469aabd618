"""The factor metric: generated phantoms scored against real ones on their known factors.

Both sets are measured with :func:`medvol.data.phantom_factors.measure_factors`, so a bias of a
measurement cancels. For each continuous factor the score is the Wasserstein-1 distance between
the real and the generated values, divided by the real values' std (0 = same distribution), beside
its floor: the same distance between two disjoint halves of the real set (what sampling alone
gives at that N). For the discrete modes (habitus x lung asymmetry) it reports both histograms and
the coverage: the fraction of the modes present among the real volumes that appear among the
generated ones.

It applies to phantom data only: the real source must be phantoms (``phantom[:SEED]``), a cache
whose manifest records phantom factors (built from ``medvol data phantom`` output), or phantom
files with their factor sidecars.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from medvol.errors import MedvolError

#: The continuous factors scored: those whose measurement follows the recorded factor (docs/data.md,
#: "Measuring the factors"). The heart's centroid is measured and reported per volume by
#: :func:`medvol.data.phantom_factors.measure_factors` but its error exceeds its spread across the
#: population, so a distance on it would score the measurement, not the model.
SCORED_FACTORS = ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio", "nodule_count", "noise_hu",
                  "slice_mm")


def wasserstein1(a: Sequence[float], b: Sequence[float]) -> float:
    """Wasserstein-1 distance between two 1-D empirical distributions (equal weights per sample).

    The integral of ``|F_a - F_b|`` over the merged support, exact for samples of any sizes.
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise MedvolError("wasserstein1: both samples need at least one value")
    support = np.concatenate([a, b])
    support.sort(kind="mergesort")
    gaps = np.diff(support)
    cdf_a = np.searchsorted(a, support[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, support[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * gaps))


def factor_scores(real: list[dict[str, Any]], fake: list[dict[str, Any]],
                  factors: Sequence[str] = SCORED_FACTORS) -> dict[str, Any]:
    """Per-factor distances and mode coverage of measured factor records.

    Args:
        real, fake: records of :func:`measure_factors` (at least 2 real, 1 fake), or of
            :func:`~medvol.data.phantom_factors.measure_slice_factors` with ``factors``
            :data:`~medvol.data.phantom_factors.SLICE_FACTORS`.
        factors: the continuous factors scored.

    Returns:
        ``{"continuous": {factor: {"w1", "w1_norm", "floor_norm", "real_mean", "fake_mean",
        "real_std"}}, "modes": {"real": histogram, "fake": histogram, "coverage",
        "missing"}, "n": [n_real, n_fake]}``. ``w1_norm`` is W1 divided by the real std (NaN where
        that std is 0); ``floor_norm`` is the W1 between the real set's even and odd items, over
        the same std. Non-finite measurements are left out of their factor.
    """
    if len(real) < 2 or len(fake) < 1:
        raise MedvolError(f"factors: need at least 2 real and 1 generated volume, got {len(real)} and {len(fake)}")
    out: dict[str, Any] = {"continuous": {}, "n": [len(real), len(fake)]}
    for k in factors:
        r = np.array([m[k] for m in real], dtype=np.float64)
        f = np.array([m[k] for m in fake], dtype=np.float64)
        r, f = r[np.isfinite(r)], f[np.isfinite(f)]
        halves = r[0::2], r[1::2]
        if r.size < 2 or f.size < 1:
            out["continuous"][k] = {"w1": math.nan, "w1_norm": math.nan, "floor_norm": math.nan}
            continue
        std = float(r.std())
        w1 = wasserstein1(r, f)
        floor = wasserstein1(*halves)
        out["continuous"][k] = {
            "w1": w1, "w1_norm": w1 / std if std > 0 else math.nan,
            "floor_norm": floor / std if std > 0 else math.nan,
            "real_mean": float(r.mean()), "fake_mean": float(f.mean()), "real_std": std,
        }
    real_modes = _histogram(m["mode"] for m in real)
    fake_modes = _histogram(m["mode"] for m in fake)
    present = [mode for mode in real_modes if mode in fake_modes]
    out["modes"] = {"real": real_modes, "fake": fake_modes,
                    "coverage": len(present) / len(real_modes),
                    "missing": sorted(set(real_modes) - set(fake_modes))}
    return out


def _histogram(modes: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for mode in modes:
        counts[mode] = counts.get(mode, 0) + 1
    return dict(sorted(counts.items()))


def check_phantom_source(source) -> None:
    """Refuse (one line) a real source that is not phantom data (see the module docstring)."""
    from medvol.data.phantom import read_factors

    kind = getattr(source, "kind", None)
    if kind == "phantom":
        return
    if kind == "cache":
        entries = source._cache.manifest.get("volumes", [])
        if entries and all(isinstance(e.get("phantom_factors"), dict) for e in entries):
            return
    if kind == "volumes" and source._files and all(read_factors(f) is not None for f in source._files):
        return
    raise MedvolError(f"--metrics factors: only applies to phantom data; --real {source.spec} is not "
                      "phantoms, a cache whose manifest records phantom factors, or phantom files with "
                      "factor sidecars (medvol data phantom)")


def check_phantom_slices(source) -> None:
    """Refuse (one line) a real 2D source that is not axial slices of phantoms.

    The slice factors (:func:`medvol.data.phantom_factors.measure_slice_factors`) read axial
    slices: a body outline and two lungs, as 2D models trained on phantom slices draw them.
    """
    data = source.info.get("data") or {}
    spec = source.info.get("source")
    if getattr(source, "kind", None) == "slices" or source.info.get("kind") == "slices":
        phantoms = data.get("source") == "phantom"
        if not phantoms and data.get("source"):
            from medvol.data.cache_store import load_manifest

            try:
                entries = load_manifest(data["source"]).get("volumes", [])
            except MedvolError:
                entries = []
            phantoms = bool(entries) and all(isinstance(e.get("phantom_factors"), dict) for e in entries)
        if phantoms:
            if data.get("plane", "axial") != "axial":
                raise MedvolError(f"--metrics factors: scores axial slices; the real slices are {data['plane']} "
                                  "(train and evaluate with --plane axial)")
            return
    raise MedvolError(f"--metrics factors: only applies to phantom data; for 2D images --real {spec} must be "
                      "phantom[:SEED], the run's data (phantoms) or a cache of phantoms (medvol data phantom)")


def source_geometry(source) -> tuple[tuple[float, float, float], tuple[float, float]]:
    """(spacing (z, y, x) mm, HU window) of the [-1, 1] volumes a real source yields."""
    from medvol.data.preprocess import PreprocessParams

    if source.kind == "cache":
        manifest = source._cache.manifest
        params = PreprocessParams.from_dict(manifest["params"])
        spacing = tuple(float(s) for s in manifest["volumes"][0]["spacing"])
        return spacing, params.intensity_window
    from medvol.data.phantom import FOV_XY_MM, FOV_Z_MM

    params = PreprocessParams(size=source.size)
    if params.keep_aspect:
        return (max(FOV_XY_MM, FOV_Z_MM) / source.size,) * 3, params.intensity_window
    return (FOV_Z_MM / source.size, FOV_XY_MM / source.size, FOV_XY_MM / source.size), params.intensity_window


def score_sources(real, fake) -> dict[str, Any]:
    """Measure every volume of two evaluate sources and score them (:func:`factor_scores`).

    The generated volumes are read on the real volumes' grid and window (a model generates at
    its training data's spacing).
    """
    from medvol.data.phantom_factors import measure_factors

    check_phantom_source(real)
    spacing, window = source_geometry(real)
    measured = {}
    for role, source in (("real", real), ("fake", fake)):
        measured[role] = [measure_factors(array, spacing, window=window) for _, array in source]
    scores = factor_scores(measured["real"], measured["fake"])
    scores["spacing_mm"], scores["window"] = list(spacing), list(window)
    return scores


def score_slices(real: np.ndarray, fake: np.ndarray, spacing: Sequence[float],
                 window: Sequence[float]) -> dict[str, Any]:
    """:func:`factor_scores` of two sets of axial phantom slices (2D models).

    Args:
        real, fake: ``[N, C, H, W]`` or ``[N, H, W]`` slices in [-1, 1] (channel 0 is the image).
        spacing: (y, x) mm of the pixels; window: the HU window [-1, 1] stands for.

    Returns:
        :func:`factor_scores` over :data:`~medvol.data.phantom_factors.SLICE_FACTORS`, the modes
        being ``"habitus/lungs"`` (docs/learning.md). The floor compares the real set's even and
        odd items, so it is only a floor when those are independent draws.
    """
    from medvol.data.phantom_factors import SLICE_FACTORS, measure_slice_factors

    def measure(images):
        images = np.asarray(images)
        images = images[:, 0] if images.ndim == 4 else images
        return [measure_slice_factors(im, spacing, window=window) for im in images]

    scores = factor_scores(measure(real), measure(fake), SLICE_FACTORS)
    scores["spacing_mm"], scores["window"] = list(spacing), list(window)
    return scores


def markdown(scores: dict[str, Any]) -> list[str]:
    """Lines of the factor section of ``scores.md``."""
    lines = ["", "## Phantom factors", "",
             f"{scores['n'][0]} real, {scores['n'][1]} generated volumes; W1 / real std (floor: two "
             "disjoint real halves)", "", "| factor | real mean | fake mean | W1/std | floor |",
             "|---|---|---|---|---|"]
    for k, v in scores["continuous"].items():
        lines.append(f"| {k} | {v.get('real_mean', math.nan):.4g} | {v.get('fake_mean', math.nan):.4g} | "
                     f"{v['w1_norm']:.3f} | {v['floor_norm']:.3f} |")
    modes = scores["modes"]
    lines += ["", f"Mode coverage {modes['coverage']:.2f} (missing: {', '.join(modes['missing']) or 'none'})",
              "", "| mode | real | fake |", "|---|---|---|"]
    for mode in sorted(set(modes["real"]) | set(modes["fake"])):
        lines.append(f"| {mode} | {modes['real'].get(mode, 0)} | {modes['fake'].get(mode, 0)} |")
    return lines
