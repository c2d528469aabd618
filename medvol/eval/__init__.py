"""Evaluation: distances between real and generated feature sets, and their provenance.

The metrics take feature arrays ``[N, D]`` (numpy or torch) and compute in float64::

    from medvol.eval import frechet_distance, kid, mmd, prdc
    prdc(real, fake, k=5)  # {"precision", "recall", "density", "coverage", "k"}
    inception_score(logits, splits=10)  # {"mean", "std", "splits", "n", "classes", "seed"}
"""

from medvol.eval.metrics import (
    SmallSampleWarning,
    bootstrap,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    inception_score,
    kid,
    memorization,
    mmd,
    prdc,
)

__all__ = [
    "SmallSampleWarning",
    "bootstrap",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "inception_score",
    "kid",
    "memorization",
    "mmd",
    "prdc",
]
