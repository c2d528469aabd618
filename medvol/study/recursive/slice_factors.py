"""Phantom factors measured on single axial slices, so a 2D model's samples get a ground truth.

The volume measurements of :mod:`medvol.data.phantom_factors` need a whole chest; a 2D model draws
one axial slice at a time. This module reads what one slice shows, with the same HU thresholds
and the same sub-pixel body edge:

- ``body_width_mm`` / ``body_depth_mm``: the widest row and the deepest column of the body (the
  largest component above -500 HU, holes filled);
- ``lung_cm2``: the dark area (below -400 HU) enclosed by the body, away from its surface;
  ``lung_balance``: (left - right) / (left + right) of that area about the body's centre, in
  [-1, 1] (NaN without lungs): bounded, unlike the volume metric's left/right ratio, which a
  slice through the tip of one lung sends to extremes;
- ``bone_cm2``: the area above 250 HU (spine, ribs, table excluded: it lies outside the body).

Two discrete factors make the slice's mode: ``region`` is ``"lungs"`` when the slice holds at least
:data:`LUNG_REGION_CM2` of lung (a thorax slice) and ``"no_lungs"`` otherwise (apex above, abdomen
below, or a sample without lungs); ``habitus`` is the body width's class with the volume
thresholds of :data:`medvol.data.phantom_factors.HABITUS_WIDTH_MM`: it is a property of the
slice, and real and generated slices are classed alike. A slice with no body is
``"unknown/none"``. Measured on the 128 phantoms of the study's default (64^3 cache): the central
slice's width is the recorded ``body_width_mm`` within -1.1 +- 2.4 mm (largest error 8.1 mm), its
habitus class is the volume's in 128 of 128 and it holds lungs in all; over every non-blank slice,
the slice's class is its volume's in 96 %.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from medvol.data.phantom_factors import BODY_HU, BONE_HU, HABITUS_WIDTH_MM, LUNG_HU, _crossing, to_hu
from medvol.errors import MedvolError

#: The continuous slice factors scored (W1 over the real std, as the volume factor metric).
SLICE_FACTORS = ("body_width_mm", "body_depth_mm", "lung_cm2", "lung_balance", "bone_cm2")
#: Lung area (cm^2) from which a slice counts as a thorax slice.
LUNG_REGION_CM2 = 5.0


def measure_slice(image: np.ndarray, spacing: Sequence[float], *,
                  window: Sequence[float] | None = None) -> dict[str, Any]:
    """The factors of one axial slice (module docstring).

    Args:
        image: (rows, columns) = (y, x) slice, in HU (``window`` None) or in [-1, 1].
        spacing: (row, column) mm of its pixels.
        window: the HU window [-1, 1] stands for, or None for HU.

    Returns:
        ``{factor: value}`` for :data:`SLICE_FACTORS` plus ``region``, ``habitus`` and ``mode``
        (``"habitus/region"``). Without a body every continuous factor is NaN.

    Raises:
        MedvolError: not a 2D array of at least 8 x 8, a bad spacing, non-finite pixels.
    """
    from medvol.utils import optional_import

    ndimage = optional_import("scipy.ndimage", "measuring slice factors")
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 8:
        raise MedvolError(f"measure_slice: expected a (y, x) slice of at least 8 x 8, got shape {image.shape}")
    sy, sx = (float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in (sy, sx)):
        raise MedvolError(f"measure_slice: bad spacing {tuple(spacing)!r}: expected two positive mm values")
    if not np.isfinite(image).all():
        raise MedvolError("measure_slice: the slice holds NaN or infinite pixels")
    hu = to_hu(image, window)
    labels, count = ndimage.label(hu > BODY_HU)
    if count == 0:
        return {**{k: math.nan for k in SLICE_FACTORS}, "region": "none", "habitus": "unknown",
                "mode": "unknown/none"}
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    row = int(np.argmax(body.sum(axis=1)))
    cols = np.nonzero(body[row])[0]
    left_edge = _crossing(hu[row], int(cols[0]), -1, BODY_HU)
    right_edge = _crossing(hu[row], int(cols[-1]), 1, BODY_HU)
    col = int(np.argmax(body.sum(axis=0)))
    rows = np.nonzero(body[:, col])[0]
    depth = _crossing(hu[:, col], int(rows[-1]), 1, BODY_HU) - _crossing(hu[:, col], int(rows[0]), -1, BODY_HU)
    centre = (left_edge + right_edge) / 2.0
    inner = ndimage.binary_erosion(body, iterations=1)
    lung = ndimage.binary_fill_holes(inner & (hu < LUNG_HU)) & inner
    pixel_cm2 = sy * sx / 100.0
    # Image columns run towards the patient's left (x left+, as the phantom and LPS).
    left_side = (np.arange(hu.shape[1]) + 0.5 > centre + 0.5)[None, :]
    left = float((lung & left_side).sum()) * pixel_cm2
    right = float((lung & ~left_side).sum()) * pixel_cm2
    out: dict[str, Any] = {
        "body_width_mm": (right_edge - left_edge) * sx, "body_depth_mm": depth * sy,
        "lung_cm2": left + right, "lung_balance": (left - right) / (left + right) if left + right > 0 else math.nan,
        "bone_cm2": float((body & (hu > BONE_HU)).sum()) * pixel_cm2,
    }
    out["region"] = "lungs" if out["lung_cm2"] >= LUNG_REGION_CM2 else "no_lungs"
    out["habitus"] = next(name for bound, name in HABITUS_WIDTH_MM if out["body_width_mm"] < bound)
    out["mode"] = f"{out['habitus']}/{out['region']}"
    return out
