"""Evaluation: distances between real and generated feature sets, and their provenance.

The metrics take feature arrays ``[N, D]`` (numpy or torch) and compute in float64::

    from medvol.eval import frechet_distance, kid, mmd, prdc
    prdc(real, fake, k=5)  # {"precision", "recall", "density", "coverage", "k"}
"""

from medvol.eval.metrics import (
    SmallSampleWarning,
    bootstrap,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
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
    "kid",
    "memorization",
    "mmd",
    "prdc",
]
