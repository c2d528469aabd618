"""Intensity histograms and the distance between them: how far generated HU drift from real HU.

The distance is the Wasserstein-1 (earth mover's) distance between two intensity distributions,
each given as a histogram over the same bins: the mass of each bin placed at its centre,

    W1(u, v) = sum_i |U_i - V_i| * w,

where ``U_i``, ``V_i`` are the cumulative normalised counts up to bin ``i`` and ``w`` the bin width.
It is in the intensity's own unit (HU for CT): "on average, how many HU each voxel's value must
move to turn one histogram into the other". Unlike an L1 between histograms it grows with how far
mass moved, not only whether it moved, so a collapse onto a few tissue values and a slow drift of
the lung value both register. Binning costs at most one bin width against the exact W1 of the
voxel values (each value moves at most half a bin).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from medvol.errors import MedvolError

#: Default bins over the intensity range (the CT window -1024..600 HU gives 6.3 HU bins).
BINS = 256


def intensity_histogram(volumes: Iterable[np.ndarray], value_range: tuple[float, float],
                        bins: int = BINS) -> np.ndarray:
    """Counts of every voxel of ``volumes`` in ``bins`` equal bins over ``value_range``.

    Args:
        volumes: arrays of any shape (e.g. (S, S, S) in HU); values outside the range go to the
            end bins (generated and cached volumes never leave the window they were scaled with).
        value_range: (low, high) of the bins.
        bins: number of bins.

    Returns:
        float64 ``[bins]`` counts.

    Raises:
        MedvolError: a bad range, no volumes, or a non-finite voxel.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not (np.isfinite(low) and np.isfinite(high) and low < high) or bins < 1:
        raise MedvolError(f"intensity histogram: bad range {value_range} or bins {bins}")
    counts = np.zeros(bins, dtype=np.float64)
    seen = 0
    for volume in volumes:
        values = np.asarray(volume, dtype=np.float64).ravel()
        if not np.isfinite(values).all():
            raise MedvolError("intensity histogram: a volume holds NaN or inf")
        counts += np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))[0]
        seen += 1
    if not seen:
        raise MedvolError("intensity histogram: no volumes")
    return counts


def bin_centres(value_range: tuple[float, float], bins: int) -> np.ndarray:
    """Centres ``[bins]`` of the equal bins of :func:`intensity_histogram`."""
    edges = np.linspace(float(value_range[0]), float(value_range[1]), bins + 1)
    return (edges[:-1] + edges[1:]) / 2.0


def histogram_w1(u: np.ndarray, v: np.ndarray, value_range: tuple[float, float]) -> float:
    """Wasserstein-1 distance between two histograms over the same equal bins of ``value_range``.

    Args:
        u, v: non-negative counts ``[bins]`` (any totals: each is normalised to 1).
        value_range: the bins' (low, high), so the result is in the intensity's unit.

    Returns:
        W1 in the unit of ``value_range`` (module docstring); 0 for identical distributions.

    Raises:
        MedvolError: histograms of different lengths, negative or empty ones.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.shape != v.shape or u.ndim != 1:
        raise MedvolError(f"histogram W1: histograms of shapes {u.shape} and {v.shape}")
    if (u < 0).any() or (v < 0).any() or u.sum() <= 0 or v.sum() <= 0:
        raise MedvolError("histogram W1: counts must be non-negative with a positive total")
    width = (float(value_range[1]) - float(value_range[0])) / len(u)
    cdf_gap = np.cumsum(u / u.sum()) - np.cumsum(v / v.sum())
    return float(np.abs(cdf_gap[:-1]).sum() * width)
