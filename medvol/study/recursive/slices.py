"""Scores of a 2D model's generation: its slices against real slices, on weight-free features.

A 2D generation writes its samples as volumes of S stacked slices (``generate_volumes`` of a 2D
checkpoint), so that the next generation's cache and the 3D machinery take them as they are; this
module takes the slices back out and scores ``n`` of them against ``n`` non-blank real slices of
the real cache's val split (drawn once per study seed):

- **slice factors** (:func:`medvol.data.phantom_factors.measure_slice_factors`: body width and
  depth, lung fraction of the cross-section, the left lung's share): per factor the Wasserstein-1
  distance between real and generated values over the real values' std (``w1_<factor>``), their
  mean over the factors (``factor_w1``; a factor no generated slice shows is left out and counted
  in ``factors_missing``); the modes (habitus class x lungs: none / left_small / right_small /
  no_lungs): ``mode_coverage``, the
  fraction of the real slices' modes present among the generated ones, and ``mode_tv``, the total variation
  distance between the two mode histograms (0: same frequencies, 1: disjoint);
- **precision / recall / density / coverage** (``medvol.eval.metrics.prdc``, k = 5) on pooled
  pixels (each slice average-pooled to 16 x 16: phantoms are aligned, so pooled pixels are a crude
  but weight-free feature);
- **diversity**: the mean SSIM of random pairs of generated slices (``ssim_pairs``; higher = more
  alike; skimage, data range 2), beside the same for real slices;
- **FID** (``fid``) with the offline FID Inception weights on the first ``fid_n`` slices of each
  set, when asked (``fid_n`` > 0): 0.2 CPU s per slice, so off by default on a CPU.

The floor is the same scores for ``n`` real train slices in the place of the generated ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvol.data.phantom_factors import SLICE_FACTORS, measure_slice_factors
from medvol.errors import MedvolError

#: Score key -> (label, which way is better): the 2D study's table, plot panels and aggregate.
SCORES_2D: dict[str, tuple[str, str]] = {
    "factor_w1": ("slice factors: mean W1 / real std", "lower"),
    "mode_coverage": ("mode coverage", "higher"),
    "mode_tv": ("mode histogram TV distance", "lower"),
    "recall": ("recall (pooled pixels)", "higher"),
    "precision": ("precision (pooled pixels)", "higher"),
    "coverage": ("coverage (pooled pixels)", "higher"),
    "ssim_pairs": ("SSIM of sample pairs (higher = less diverse)", "closer to the floor"),
    "fid": ("FID (Inception)", "lower"),
}
#: Side of the pooled-pixel feature.
POOLED = 16
#: Pairs of slices whose SSIM gives the diversity score.
SSIM_PAIRS = 200


def to_unit(images: np.ndarray, window: Sequence[float] | None) -> np.ndarray:
    """HU slices back to the model's [-1, 1] (MR samples already are)."""
    if window is None:
        return np.asarray(images, dtype=np.float32)
    low, high = float(window[0]), float(window[1])
    return np.clip((np.asarray(images, dtype=np.float32) - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0)


def real_slices(cache: Path, split: str, *, plane: str, size: int, n: int, seed: int) -> np.ndarray:
    """``n`` non-blank ``plane`` slices of the cache's ``split`` in [-1, 1], ``[n, S, S]``.

    Drawn without replacement from a generator seeded with ``seed`` (all of them if fewer),
    sorted, so the same study seed always scores against the same slices.
    """
    from medvol.data.datasets import CachedVolumeDataset, SliceDataset

    slices = SliceDataset(CachedVolumeDataset(cache, split=split), content_only=True, plane=plane, size=size)
    if len(slices) < 2:
        raise MedvolError(f"real cache {cache}: {len(slices)} non-blank {plane} slice(s) in {split}; "
                          "the study needs at least 2")
    pick = np.sort(np.random.default_rng(seed).choice(len(slices), size=min(n, len(slices)), replace=False))
    return np.stack([slices[int(i)]["image"][0].numpy() for i in pick]).astype(np.float32)


def image_real_slices(cfg, cache: Path, split: str, *, n: int, seed: int) -> np.ndarray:
    """:func:`real_slices` of a 2D image cache: ``n`` images of ``split`` (non-blank with
    ``data.skip_blank``) at ``model.size``, drawn as there, ``[n, S, S]`` in [-1, 1]."""
    from medvol.study.recursive.real import image_dataset

    images = image_dataset(cfg, cache, split)
    pick = np.sort(np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False))
    return np.stack([images[int(i)]["image"][0].numpy() for i in pick]).astype(np.float32)


def sample_slices(files: Sequence[Path], plane: str, n: int, window: Sequence[float] | None,
                  images: bool = False) -> np.ndarray:
    """The first ``n`` generated slices (in [-1, 1]) of the stacked volumes ``files`` (in order),
    or with ``images`` of the one-image files ``files``.

    Slice ``k`` of volume ``v`` in ``plane`` is sample ``v * S + k`` of the generation call
    (:func:`medvol.sample.images.stack_slices` inverted by ``take_slice``).
    """
    from medvol.data.datasets import take_slice
    from medvol.data.io import read_volume

    from medvol.data.images import read_image

    out: list[np.ndarray] = []
    for f in files:
        if images:  # one generated image per file (a study on a 2D image cache)
            out.append(np.asarray(read_image(f)[0][0], dtype=np.float32))
            if len(out) >= n:
                break
            continue
        volume = np.asarray(read_volume(f).array, dtype=np.float32)
        out.extend(take_slice(volume, plane, k) for k in range(volume.shape[0]))
        if len(out) >= n:
            break
    if len(out) < n:
        raise MedvolError(f"{files[0].parent if files else 'samples'}: {len(out)} generated slices, {n} needed")
    return to_unit(np.stack(out[:n]), window)


def pooled(images: np.ndarray, side: int = POOLED) -> np.ndarray:
    """Each image average-pooled to ``side`` x ``side`` and flattened: ``[n, side * side]``."""
    n, s, _ = images.shape
    factor = max(1, s // side)
    trimmed = images[:, : (s // factor) * factor, : (s // factor) * factor]
    m = s // factor
    return trimmed.reshape(n, m, factor, m, factor).mean(axis=(2, 4)).reshape(n, -1).astype(np.float64)


def pairwise_ssim(images: np.ndarray, pairs: int = SSIM_PAIRS, seed: int = 0) -> float:
    """Mean SSIM (data range 2, skimage) over ``pairs`` random pairs of distinct images."""
    from medvol.utils import optional_import

    metrics = optional_import("skimage.metrics", "the recursive study's diversity score")
    rng = np.random.default_rng(seed)
    n = len(images)
    values = []
    for _ in range(pairs):
        i, j = rng.choice(n, size=2, replace=False)
        values.append(metrics.structural_similarity(images[i], images[j], data_range=2.0))
    return float(np.mean(values))


def mode_scores(real_modes: Sequence[str], fake_modes: Sequence[str]) -> dict[str, Any]:
    """Mode histograms, coverage (real modes present among the fake) and their TV distance."""
    real_h = {m: real_modes.count(m) for m in sorted(set(real_modes))}
    fake_h = {m: fake_modes.count(m) for m in sorted(set(fake_modes))}
    modes = sorted(set(real_h) | set(fake_h))
    tv = 0.5 * sum(abs(real_h.get(m, 0) / len(real_modes) - fake_h.get(m, 0) / len(fake_modes)) for m in modes)
    return {"modes_real": real_h, "modes_fake": fake_h,
            "mode_coverage": sum(m in fake_h for m in real_h) / len(real_h), "mode_tv": float(tv)}


def factor_distances(real: list[dict[str, Any]], fake: list[dict[str, Any]]) -> dict[str, Any]:
    """``w1_<factor>`` (W1 over the real std; NaN where a side has no finite value) and their mean."""
    from medvol.eval.factors import wasserstein1

    out: dict[str, Any] = {}
    for k in SLICE_FACTORS:
        r = np.array([m[k] for m in real], dtype=np.float64)
        f = np.array([m[k] for m in fake], dtype=np.float64)
        r, f = r[np.isfinite(r)], f[np.isfinite(f)]
        std = float(r.std()) if r.size > 1 else 0.0
        out[f"w1_{k}"] = wasserstein1(r, f) / std if f.size and std > 0 else math.nan
        out[f"mean_{k}"] = [float(r.mean()) if r.size else math.nan, float(f.mean()) if f.size else math.nan]
    values = [out[f"w1_{k}"] for k in SLICE_FACTORS]
    finite = [v for v in values if math.isfinite(v)]
    # A factor no generated slice shows (a lung ratio without lungs) is left out and counted.
    out["factor_w1"] = float(np.mean(finite)) if finite else math.nan
    out["factors_missing"] = len(values) - len(finite)
    return out


def score_slices(real: np.ndarray, fake: np.ndarray, *, spacing: Sequence[float], window: Sequence[float] | None,
                 seed: int, fid=None, factors: bool = True) -> dict[str, Any]:
    """Every 2D score (module docstring) of ``fake`` against ``real``, both ``[n, S, S]`` in [-1, 1].

    Args:
        real, fake: the two sets of slices.
        spacing: (row, column) mm of their pixels.
        window: the CT window [-1, 1] stands for (None: MR, measured as given).
        seed: the SSIM pairs' draw.
        fid: None, or ``(extractor, n)``: FID on the first ``n`` slices of each set.
        factors: measure the slice factors and modes (phantom-chest HU thresholds); False for a
            2D image cache, whose images are not slices of such chests.
    """
    from medvol.eval.metrics import frechet_distance, prdc

    if len(real) < 6 or len(fake) < 6:
        raise MedvolError(f"2D scores need at least 6 real and 6 generated slices, got {len(real)} and {len(fake)}")
    if not np.isfinite(fake).all():
        raise MedvolError("generated slices hold NaN or inf")
    scores: dict[str, Any] = {}
    if factors:
        measured_real = [measure_slice_factors(x, spacing, window=window) for x in real]
        measured_fake = [measure_slice_factors(x, spacing, window=window) for x in fake]
        scores.update(factor_distances(measured_real, measured_fake))
        scores.update(mode_scores([m["mode"] for m in measured_real], [m["mode"] for m in measured_fake]))
    quality = prdc(pooled(real), pooled(fake), k=5)
    scores.update({k: float(quality[k]) for k in ("precision", "recall", "density", "coverage")})
    scores["ssim_pairs"] = pairwise_ssim(fake, seed=seed)
    scores["ssim_pairs_real"] = pairwise_ssim(real, seed=seed)
    if fid is not None:
        extractor, n = fid
        feats = [extractor.extract((f"slice {i}", image) for i, image in enumerate(x[:n])).features["image"]
                 for x in (real, fake)]
        scores["fid"] = float(frechet_distance(*feats))
        scores["fid_n"] = int(min(n, len(real), len(fake)))
    scores["n_generated"], scores["n_real"] = len(fake), len(real)
    return scores
