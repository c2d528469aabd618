"""Diversity: mean pairwise 3D MS-SSIM within a set of volumes (MONAI's ``MultiScaleSSIMMetric``).

A generated set whose volumes resemble each other more than real volumes do (higher mean
MS-SSIM) is collapsing toward fewer modes; the figure only means something beside the same
figure for the real set at the same size.

MONAI requires every side to exceed ``(kernel - 1) * (scales - 1)^2`` voxels, so the standard
11-voxel kernel with 5 scales needs more than 160 voxels; :func:`ms_ssim_settings` picks the
largest odd kernel (at most 11, sigma scaled with it) and, below 64^3, fewer scales, and the
choice is reported with the score.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from medvol.errors import MedvolError

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(size: int) -> dict:
    """Kernel size, sigma and scale weights for cubes of side ``size``."""
    for scales in range(5, 0, -1):
        div = max(1, scales - 1) ** 2
        kernel = min(11, size // div)  # need size // div > kernel - 1
        if kernel % 2 == 0:
            kernel -= 1
        if kernel >= 3:
            w = np.asarray(STANDARD_WEIGHTS[:scales])
            return {"kernel_size": int(kernel), "kernel_sigma": 1.5 * kernel / 11,
                    "weights": tuple(float(x) for x in w / w.sum()), "scales": scales}
    raise MedvolError(f"MS-SSIM: volumes of side {size} are too small (need at least 3 voxels)")


def pairwise_ms_ssim(volumes: Sequence[np.ndarray], max_pairs: int | None = None, seed: int = 0,
                     data_range: float = 2.0, progress=None, desc: str = "diversity") -> dict:
    """Mean and std of MS-SSIM over pairs of distinct volumes (all pairs, or a seeded sample).

    Volumes are (S, S, S) arrays in [-1, 1] (``data_range`` 2). ``progress``: a
    :func:`medvol.progress.track`-like callable, given the pairs and ``desc``."""
    from monai.metrics import MultiScaleSSIMMetric

    if len(volumes) < 2:
        raise MedvolError(f"diversity needs at least 2 volumes, got {len(volumes)}")
    shapes = {tuple(v.shape) for v in volumes}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise MedvolError(f"diversity: volumes must be 3D and of one shape, got {sorted(shapes)}")
    settings = ms_ssim_settings(min(next(iter(shapes))))
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=data_range,
                                  kernel_size=settings["kernel_size"],
                                  kernel_sigma=settings["kernel_sigma"], weights=settings["weights"])
    pairs = list(itertools.combinations(range(len(volumes)), 2))
    if max_pairs is not None and len(pairs) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(pick)]
    values = []
    with torch.no_grad():
        for i, j in (pairs if progress is None else progress(pairs, len(pairs), desc, "pair")):
            a = torch.from_numpy(np.asarray(volumes[i], dtype=np.float32))[None, None]
            b = torch.from_numpy(np.asarray(volumes[j], dtype=np.float32))[None, None]
            values.append(float(metric(a, b).reshape(-1)[0]))
    v = np.asarray(values)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "pairs": len(v), **settings}
