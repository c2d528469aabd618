"""Scores of one generation against the real validation split, and the real-vs-real floor.

Every score comes from :func:`medvol.eval.evaluate.evaluate` with the study's domain feature
network (``domain:DIR/real/domain.pt``): FID, precision / recall / density / coverage, the
diversity of the set (mean pairwise 3D MS-SSIM; higher = less diverse), memorisation
(authenticity and the fraction of likely copies of a real training volume); on phantom data the
factor metric (:mod:`medvol.eval.factors`: each volume's factors measured back from its voxels,
per factor the Wasserstein-1 distance to the real val volumes' over their std, and the coverage of
the habitus x asymmetry modes); plus the HU histogram distance to the real validation volumes
(:mod:`.histogram`). The evaluation's own report
(scores.json, scores.md, figures) stays in the generation's ``eval/`` folder.

The floor is what the same scores give for two disjoint sets of real volumes: the real train
split (in the place of the generated set) against the val split. Memorisation has no train set
apart from the one it looks for copies of, so its floor scores the val volumes themselves as the
"generated" set (held out, so no copies by construction): the authenticity a model that drew new
real volumes would reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvol.study.recursive.histogram import histogram_w1, intensity_histogram
from medvol.study.recursive.real import RealData

#: Score key -> (label, which way is better). The order of the table and the plot's panels.
SCORES: dict[str, tuple[str, str]] = {
    "factor_w1": ("phantom factors: mean W1 / real std", "lower"),
    "mode_coverage": ("mode coverage (habitus x asymmetry)", "higher"),
    "w1_body_width_mm": ("W1/std body width", "lower"),
    "w1_body_depth_mm": ("W1/std body depth", "lower"),
    "w1_lung_ml": ("W1/std lung volume", "lower"),
    "w1_lung_ratio": ("W1/std lung ratio", "lower"),
    "fid": ("FID (domain)", "lower"),
    "precision": ("precision", "higher"),
    "recall": ("recall", "higher"),
    "coverage": ("coverage", "higher"),
    "msssim": ("MS-SSIM within the set (higher = less diverse)", "closer to the floor"),
    "authenticity": ("authenticity", "higher"),
    "copy_fraction": ("likely copies of a real training volume", "lower"),
    "hu_w1": ("HU histogram W1 to real val (HU)", "lower"),
}

METRICS = ("fid", "prdc", "msssim", "memorization")
#: The factors of ``factor_w1``: those a 32^3 or 64^3 phantom shows and generators are judged on
#: (docs/learning.md); nodules, noise and slice thickness are below what these sizes resolve.
FACTOR_KEYS = ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio")


def factor_metrics(real) -> tuple[str, ...]:
    """:data:`METRICS`, plus ``factors`` where the real cache records phantom factors (phantom data)."""
    from medvol.data.cache import load_manifest

    entries = load_manifest(real.cache).get("volumes", [])
    phantom = bool(entries) and all(isinstance(e.get("phantom_factors"), dict) for e in entries)
    return METRICS + ("factors",) if phantom else METRICS


def flatten(report: dict[str, Any]) -> dict[str, Any]:
    """The study's scores from an evaluation report (``medvol.eval.evaluate.evaluate``'s dict)."""
    out: dict[str, Any] = {}
    scores = report["extractors"][0]["scores"] if report.get("extractors") else {}
    for key, value in scores.items():
        name = key.split("/", 1)[-1]
        if name in ("fid", "precision", "recall", "density", "coverage"):
            out[name] = value["value"]
            if "ci_low" in value:
                out[f"{name}_ci"] = [value["ci_low"], value["ci_high"]]
    if "diversity" in report:
        out["msssim"] = report["diversity"]["fake"]["mean"]
        out["msssim_real"] = report["diversity"]["real"]["mean"]
    if "memorization" in report:
        out["authenticity"] = report["memorization"]["authenticity"]
        out["copy_fraction"] = report["memorization"]["copy_fraction"]
    if "factors" in report:
        continuous = report["factors"]["continuous"]
        for name in FACTOR_KEYS:
            out[f"w1_{name}"] = continuous[name]["w1_norm"]
        values = [out[f"w1_{name}"] for name in FACTOR_KEYS]
        out["factor_w1"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        out["mode_coverage"] = report["factors"]["modes"]["coverage"]
        out["modes_fake"] = report["factors"]["modes"]["fake"]
    return out


def _evaluate(real: RealData, fake: str, out: Path, *, metrics: Sequence[str], n: int, seed: int,
              bootstrap: int, device: str, fake_is_files: bool = False) -> dict[str, Any]:
    from medvol.eval.evaluate import evaluate

    extra = dict(size=real.size, modality=real.modality, window=real.window) if fake_is_files else {}
    return evaluate(str(real.cache), fake, out, features=[f"domain:{real.domain}"], metrics=metrics, n=n,
                    split="val", seed=seed, n_boot=bootstrap, device=device, overwrite=True,
                    command="medvol study recursive", k=prdc_k(len(real.val_files), n), **extra)


def prdc_k(n_real: int, n_fake: int, k: int = 5) -> int:
    """The k of the k-NN balls of precision/recall/coverage: 5 (the usual choice), fewer where a set
    has no 5 neighbours to give (small validation splits)."""
    return max(1, min(k, min(n_real, n_fake) - 1))


def read_samples(files: Sequence[Path]) -> list[np.ndarray]:
    """Generated volumes as written (HU for CT), float32 (S, S, S) each."""
    from medvol.data.io import read_volume

    return [np.asarray(read_volume(f).array, dtype=np.float32) for f in files]


def score_generation(real: RealData, run_dir: Path, samples: Sequence[Path], out: Path, *, seed: int,
                     bootstrap: int, device: str) -> dict[str, Any]:
    """Score the ``len(samples)`` volumes that ``run_dir``'s checkpoint generated with ``seed``.

    The evaluation regenerates them from the checkpoint with the same seed (so it scores exactly
    the written samples, without a second preprocessing of their HU); the HU histogram is taken
    from the written files.
    """
    report = _evaluate(real, str(run_dir), out, metrics=factor_metrics(real), n=len(samples), seed=seed,
                       bootstrap=bootstrap, device=device)
    scores = flatten(report)
    hist_real = intensity_histogram(real.split_arrays("val"), real.value_range)
    hist_fake = intensity_histogram(read_samples(samples), real.value_range)
    scores["hu_w1"] = histogram_w1(hist_real, hist_fake, real.value_range)
    scores["n_generated"] = len(samples)
    scores["n_real_val"] = report["real"]["n_volumes"]
    scores["prdc_k"] = report["k"]
    return scores


def floor_scores(real: RealData, out: Path, *, n: int, seed: int, bootstrap: int, device: str) -> dict[str, Any]:
    """The real-vs-real floor (module docstring): up to ``n`` real train volumes against real val."""
    report = _evaluate(real, str(real.train_files[0].parent), out / "train_vs_val",
                       metrics=("fid", "prdc", "msssim") + factor_metrics(real)[len(METRICS):], n=n, seed=seed, bootstrap=bootstrap, device=device,
                       fake_is_files=True)
    scores = flatten(report)
    memo = _evaluate(real, str(real.val_files[0].parent), out / "val_as_generated", metrics=("memorization",),
                     n=n, seed=seed, bootstrap=0, device=device, fake_is_files=True)
    scores.update({k: v for k, v in flatten(memo).items() if k in ("authenticity", "copy_fraction")})
    train = real.split_arrays("train")[:n]
    scores["hu_w1"] = histogram_w1(intensity_histogram(real.split_arrays("val"), real.value_range),
                                   intensity_histogram(train, real.value_range), real.value_range)
    scores["n_generated"] = len(train)
    scores["n_real_val"] = report["real"]["n_volumes"]
    scores["prdc_k"] = report["k"]
    return scores
