"""Measuring a phantom's factors back from its voxels, so generated volumes get a ground truth.

:func:`measure_factors` reads the factors of :mod:`medvol.data.phantom` from any chest volume: a
phantom in HU at its native grid, or a preprocessed volume in [-1, 1] (the cache's window
[-1024, 600], aspect kept and padded). It is deterministic and uses only the voxels and their
spacing. Every measurement is a plain image operation (HU thresholds, connected components, a
robust noise estimate); none is fitted to the phantom's records. The error of each against the
recorded factors over fresh seeds is tabulated in docs/data.md (``tools/phantom_factor_errors.py``).

Coordinates are mm from the volume's centre (x left+, y posterior+, z superior+), as in the
phantom; a preprocessed volume keeps that centre (its padding is symmetric).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from medvol.errors import MedvolError

#: HU between air / lung and soft tissue: the midpoint of lung (-850) and soft tissue (+40).
LUNG_HU = -400.0
#: HU between air (-1000) and the body surface (skin +30, fat -100).
BODY_HU = -500.0
#: Soft tissue (heart, vessels, nodules): above the lung threshold, below bone.
SOFT_HU = (-250.0, 200.0)
BONE_HU = 250.0
#: Nodule search: Gaussian smoothing (mm), the edge of a lesion on the smoothed image and the
#: smoothed peak a nodule reaches (HU); chosen on phantoms outside the error table's seeds.
NODULE_SMOOTH_MM = 3.0
NODULE_EDGE_HU = -150.0
NODULE_PEAK_HU = -80.0
#: Axial slices whose enclosed soft tissue is at least this fraction of the widest hold the heart.
HEART_SLICE = 0.5
#: Habitus class boundaries on the body width (mm): midway between the classes' width ranges.
HABITUS_WIDTH_MM = ((273.0, "slim"), (319.0, "average"), (math.inf, "broad"))
#: Asymmetry class boundaries on the left/right lung volume ratio.
ASYMMETRY_RATIO = ((0.55, "left_small"), (1.35, "none"), (math.inf, "right_small"))


def to_hu(array: np.ndarray, window: Sequence[float] | None = None) -> np.ndarray:
    """HU of ``array``: as it is (``window`` None), or mapped back from [-1, 1] over ``window``."""
    array = np.asarray(array, dtype=np.float32)
    if window is None:
        return array
    low, high = float(window[0]), float(window[1])
    return (array + 1.0) / 2.0 * (high - low) + low


def _coords(shape, spacing):
    return [(np.arange(n) + 0.5 - n / 2.0) * s for n, s in zip(shape, spacing)]  # z, y, x mm


def _crossing(profile: np.ndarray, inside: int, step: int, level: float) -> float:
    """Sub-voxel index where ``profile`` falls below ``level`` walking from ``inside`` by ``step``."""
    i = inside
    while 0 <= i + step < profile.size and profile[i + step] > level:
        i += step
    if not 0 <= i + step < profile.size:
        return float(i) + 0.5 * step
    a, b = profile[i], profile[i + step]
    return i + step * float((a - level) / (a - b)) if a != b else i + 0.5 * step


def _edges(hu: np.ndarray, interior: np.ndarray) -> tuple[float, float, float]:
    """The body's extent on one axial slice (``hu`` and its ``interior``, (y, x)), in pixels:
    the sub-pixel columns of its two edges on its widest row (low, high), and its depth on its
    deepest column (for :func:`measure_factors` per slice and :func:`measure_slice_factors`)."""
    row = int(np.argmax(interior.sum(axis=1)))
    cols = np.nonzero(interior[row])[0]
    lo = _crossing(hu[row], int(cols[0]), -1, BODY_HU)
    hi = _crossing(hu[row], int(cols[-1]), 1, BODY_HU)
    col = int(np.argmax(interior.sum(axis=0)))
    rows = np.nonzero(interior[:, col])[0]
    depth = _crossing(hu[:, col], int(rows[-1]), 1, BODY_HU) - _crossing(hu[:, col], int(rows[0]), -1, BODY_HU)
    return lo, hi, depth


#: What the checks of :func:`_checked_hu` call an array of each dimension: its axes, itself, its
#: cells, how many spacings.
_ARRAY_WORDS = {3: ("(z, y, x)", "volume", "voxels", "three"), 2: ("(y, x)", "slice", "pixels", "two")}


def _checked_hu(caller: str, ndim: int, array: np.ndarray, spacing: Sequence[float],
                window: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    """The HU of a volume (``ndim`` 3) or slice (2) and its spacing as floats, both checked first
    (for :func:`measure_factors` and :func:`measure_slice_factors`).

    Raises:
        MedvolError: not ``ndim`` axes or below 8 a side, a spacing not of ``ndim`` positive values,
            non-finite values (the message starts with ``caller``).
    """
    axes, thing, cells, count = _ARRAY_WORDS[ndim]
    array = np.asarray(array)
    if array.ndim != ndim or min(array.shape) < 8:
        raise MedvolError(f"{caller}: expected a {axes} {thing} of at least 8^{ndim}, got shape {array.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise MedvolError(f"{caller}: bad spacing {spacing!r}: expected {count} positive mm values")
    if not np.isfinite(array).all():
        raise MedvolError(f"{caller}: the {thing} holds NaN or infinite {cells}")
    return to_hu(array, window), spacing


def _body(hu: np.ndarray) -> np.ndarray | None:
    """The body: the largest connected component above :data:`BODY_HU` (the couch lies apart)."""
    from medvol.utils import optional_import

    ndimage = optional_import("scipy.ndimage", "measuring phantom factors")

    labels, count = ndimage.label(hu > BODY_HU)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def measure_factors(array: np.ndarray, spacing: Sequence[float], *,
                    window: Sequence[float] | None = None) -> dict[str, Any]:
    """The phantom factors of one volume, measured from its voxels.

    Args:
        array: (D, H, W) = (z, y, x) volume, in HU (``window`` None) or in [-1, 1].
        spacing: (z, y, x) mm of its voxels.
        window: the HU window [-1, 1] stands for (the cache's ``[-1024, 600]``), or None for HU.

    Returns:
        ``{factor: value}`` for :data:`medvol.data.phantom.CONTINUOUS_FACTORS` and
        :data:`~medvol.data.phantom.DISCRETE_FACTORS` (habitus from the body width, asymmetry from
        the lung ratio, mode their pair). A quantity that cannot be found (no body, no lungs) is
        NaN, a class ``"unknown"``. The heart's centroid is a rough estimate (docs/data.md).

    Raises:
        MedvolError: not a 3D array, a bad spacing, non-finite voxels.
    """
    from medvol.utils import optional_import

    ndimage = optional_import("scipy.ndimage", "measuring phantom factors")

    hu, spacing = _checked_hu("measure_factors", 3, array, spacing, window)
    z, y, x = _coords(hu.shape, spacing)
    sz, sy, sx = spacing
    out: dict[str, Any] = {}

    body = _body(hu)
    if body is None:  # nothing but air (a generated volume can be): nothing to measure
        from medvol.data.phantom import CONTINUOUS_FACTORS

        return {**{k: math.nan for k in CONTINUOUS_FACTORS}, "habitus": "unknown",
                "asymmetry": "unknown", "mode": "unknown/unknown"}
    interior = np.stack([ndimage.binary_fill_holes(s) for s in body])  # the body with what it encloses
    # Width and depth at mid-thorax: the widest row and the deepest column of the central slices.
    slab = [k for k in range(hu.shape[0]) if abs(z[k]) <= max(15.0, 0.6 * sz)]
    widths, depths, centres = [], [], []
    for k in slab:
        b = interior[k]
        if not b.any():
            continue
        lo, hi, depth = _edges(hu[k], b)
        widths.append((hi - lo) * sx)
        centres.append(np.interp((lo + hi) / 2.0, np.arange(x.size), x))
        depths.append(depth * sy)
    out["body_width_mm"] = float(np.mean(widths)) if widths else math.nan
    out["body_depth_mm"] = float(np.mean(depths)) if depths else math.nan
    mid_x = float(np.mean(centres)) if centres else 0.0

    # Lungs: dark voxels enclosed by the body, away from its surface, with the vessels and
    # lesions they enclose in each axial slice.
    inner = np.stack([ndimage.binary_erosion(s, iterations=1) for s in interior])
    dark = inner & (hu < LUNG_HU)
    lung = np.stack([ndimage.binary_fill_holes(s) for s in dark]) & inner
    voxel_ml = sz * sy * sx / 1000.0
    left_side = (x > mid_x)[None, None, :]
    left = float((lung & left_side).sum()) * voxel_ml
    right = float((lung & ~left_side).sum()) * voxel_ml
    out["lung_ml"] = left + right
    out["lung_ratio"] = left / right if right > 0 else math.nan

    # Heart, roughly: the soft tissue the lungs enclose (row-wise and column-wise, per axial
    # slice) in front of the spine, in the axial slices where that tissue is widest. It does not
    # separate the heart from the mediastinum and the abdomen under the domes (errors of 20-30 mm,
    # docs/data.md), so the factor metric does not score it.
    hx = hy = hz = math.nan
    near_mid = np.abs(x - mid_x) < 20.0
    spine_rows = np.nonzero((hu[:, :, near_mid] > BONE_HU).any(axis=(0, 2)) & (y > 0))[0]
    spine_front = y[spine_rows[0]] - 10.0 if spine_rows.size else y[-1]
    soft = np.zeros_like(lung)
    for k in np.nonzero(lung.any(axis=(1, 2)))[0]:
        s = lung[k]
        rows = np.maximum.accumulate(s, axis=1) & np.maximum.accumulate(s[:, ::-1], axis=1)[:, ::-1]
        cols = np.maximum.accumulate(s, axis=0) & np.maximum.accumulate(s[::-1], axis=0)[::-1]
        soft[k] = rows & cols & ~s & (hu[k] > SOFT_HU[0]) & (hu[k] < SOFT_HU[1])
    soft &= (y < spine_front)[None, :, None]
    per_slice = soft.sum(axis=(1, 2))
    if per_slice.max() > 0:
        soft &= (per_slice >= HEART_SLICE * per_slice.max())[:, None, None]
        weight = soft.astype(np.float64)
        total = weight.sum()
        hz = float((weight.sum(axis=(1, 2)) * z).sum() / total)
        hy = float((weight.sum(axis=(0, 2)) * y).sum() / total)
        hx = float((weight.sum(axis=(0, 1)) * x).sum() / total)
    out["heart_x_mm"], out["heart_y_mm"], out["heart_z_mm"] = hx, hy, hz

    # Nodules: soft-tissue lesions wholly enclosed by lung, found on a lightly smoothed image
    # (thin vessels fade below NODULE_EDGE_HU, so a nodule touching one stays apart) and kept if
    # their smoothed peak reaches NODULE_PEAK_HU (what is left of vessel pieces does not).
    smooth = ndimage.gaussian_filter(hu, [max(NODULE_SMOOTH_MM / s, 0.5) for s in spacing], mode="nearest")
    clear = inner & (smooth < NODULE_EDGE_HU)
    labels, count = ndimage.label(ndimage.binary_fill_holes(clear) & ~clear & lung)
    peaks = np.asarray(ndimage.maximum(smooth, labels, index=np.arange(1, count + 1))) if count else np.zeros(0)
    out["nodule_count"] = int((peaks >= NODULE_PEAK_HU).sum())

    # Noise and slice thickness from the air around the body, inside the reconstruction circle.
    air = _air(hu, body, z, y, x)
    out["noise_hu"], out["slice_mm"] = _noise(hu, air, sz)

    width, ratio = out["body_width_mm"], out["lung_ratio"]
    out["habitus"] = next(name for bound, name in HABITUS_WIDTH_MM if width < bound) if math.isfinite(width) else "unknown"
    out["asymmetry"] = next(name for bound, name in ASYMMETRY_RATIO if ratio < bound) if math.isfinite(ratio) else "unknown"
    out["mode"] = f"{out['habitus']}/{out['asymmetry']}"
    return out


def _air(hu, body, z, y, x) -> np.ndarray:
    """Air voxels: 20 mm clear of the body and the couch, within 170 mm of the axis, |z| <= 150 mm."""
    from medvol.utils import optional_import

    ndimage = optional_import("scipy.ndimage", "measuring phantom factors")

    sy = float(y[1] - y[0])
    anything = hu > -900.0
    reach = max(1, int(math.ceil(20.0 / sy)))
    near = np.stack([ndimage.binary_dilation(s, iterations=reach) for s in anything]) if anything.any() else anything
    circle = (y[:, None] ** 2 + x[None, :] ** 2) <= 170.0 ** 2
    return ~near & circle[None] & (np.abs(z) <= 150.0)[:, None, None]


def _noise(hu: np.ndarray, air: np.ndarray, spacing_z: float) -> tuple[float, float]:
    """(noise std in HU, slice thickness FWHM in mm) from the air voxels.

    Both use only the ranks above the air's median, which the window's clipping at -1024 HU
    leaves intact: the std is the 84th minus the 50th percentile; the correlation of z-neighbours
    comes from how often both lie above the median (for a Gaussian pair, ``P = 1/4 +
    asin(rho) / (2 pi)``), and the thickness is the Gaussian blur whose kernel gives that
    correlation on this grid (:func:`medvol.data.phantom._z_kernel`).
    """
    from medvol.data.phantom import _z_kernel

    values = hu[air]
    if values.size < 100:
        return math.nan, math.nan
    median = float(np.median(values))
    sigma = float(np.percentile(values, 84.134) - median)
    pair = air[1:] & air[:-1]
    if pair.sum() < 100:
        return sigma, math.nan
    above = hu > median
    p = float((above[1:] & above[:-1] & pair).sum()) / float(pair.sum())
    rho = math.sin(2.0 * math.pi * (p - 0.25))
    grid = np.linspace(0.0, 30.0, 601)  # FWHM in mm
    rhos = np.array([_lag1(_z_kernel(g, spacing_z)) for g in grid])
    if rho <= rhos[0]:
        return sigma, 0.0
    if rho >= rhos[-1]:
        return sigma, float(grid[-1])
    return sigma, float(np.interp(rho, rhos, grid))


def _lag1(kernel: np.ndarray) -> float:
    return float(np.sum(kernel[1:] * kernel[:-1]) / np.sum(kernel ** 2))


#: Factors measured on one axial slice (:func:`measure_slice_factors`), for 2D models: what a
#: slice alone shows of the population (the volume's lung volume, nodules, noise and slice
#: thickness need the third axis).
SLICE_FACTORS = ("body_width_mm", "body_depth_mm", "lung_fraction", "lung_left_share")
#: A slice whose lungs cover less than this fraction of the body's cross-section shows no lungs.
SLICE_LUNG_MIN = 0.02
#: Slice asymmetry boundaries on the left lung's share of the lung area, chosen on the 64^2 slices
#: of 24 phantoms of seed 2000 (outside the error table's seeds): the middle 80 % of a normal
#: slice's share lies in 0.37-0.60 (the heart takes room from the left lung), of a small left
#: lung's in 0.10-0.35, of a small right lung's in 0.59-0.94 (left / right area ratios 0.55 and
#: 1.45 at the boundaries).
SLICE_ASYMMETRY_SHARE = ((0.355, "left_small"), (0.592, "none"), (math.inf, "right_small"))


def measure_slice_factors(image: np.ndarray, spacing: Sequence[float], *,
                          window: Sequence[float] | None = None) -> dict[str, Any]:
    """The factors one axial slice shows, measured from its pixels (2D models' samples).

    The rules of :func:`measure_factors` on one slice: the body is the largest component above
    :data:`BODY_HU` with what it encloses; its width and depth are its widest row and deepest
    column (sub-pixel edges); the lungs are the pixels below :data:`LUNG_HU` inside the eroded
    body with what they enclose, split left/right at the widest row's centre.

    Args:
        image: (H, W) = (y, x) axial slice, in HU (``window`` None) or in [-1, 1].
        spacing: (y, x) mm of its pixels.
        window: the HU window [-1, 1] stands for, or None for HU.

    Returns:
        ``{factor: value}`` for :data:`SLICE_FACTORS` (``lung_fraction``: lung area over the body's
        cross-section; ``lung_left_share``: the left lung's share of the lung area, NaN without
        lungs; a share rather than a ratio, so that a slice through one lung stays finite),
        ``habitus`` (from the width, the boundaries of :func:`measure_factors`; the body widens
        by up to 8 % towards the shoulders, so upper slices of a wide slim body can read
        "average"), ``lungs`` (``"no_lungs"`` below :data:`SLICE_LUNG_MIN`, else the
        asymmetry class of the left share, :data:`SLICE_ASYMMETRY_SHARE`: ``none``, ``left_small``,
        ``right_small``) and ``mode``
        (``"habitus/lungs"``). No body: NaN and ``"unknown"``.

    Raises:
        MedvolError: not a 2D array, a bad spacing, non-finite pixels.
    """
    from medvol.utils import optional_import

    ndimage = optional_import("scipy.ndimage", "measuring phantom factors")

    hu, spacing = _checked_hu("measure_slice_factors", 2, image, spacing, window)
    sy, sx = spacing
    body = _body(hu)
    if body is None:
        return {**{k: math.nan for k in SLICE_FACTORS}, "habitus": "unknown", "lungs": "unknown",
                "mode": "unknown/unknown"}
    interior = ndimage.binary_fill_holes(body)
    lo, hi, depth = _edges(hu, interior)
    out: dict[str, Any] = {"body_width_mm": float((hi - lo) * sx), "body_depth_mm": float(depth * sy)}

    inner = ndimage.binary_erosion(interior, iterations=1)
    lung = ndimage.binary_fill_holes(inner & (hu < LUNG_HU)) & inner
    # Sub-pixel positions count from pixel centres; x left+ is the higher column indices.
    left_side = (np.arange(hu.shape[1]) > (lo + hi) / 2.0)[None, :]
    left, right = float((lung & left_side).sum()), float((lung & ~left_side).sum())
    out["lung_fraction"] = (left + right) / float(interior.sum())
    out["lung_left_share"] = left / (left + right) if left + right > 0 else math.nan
    width = out["body_width_mm"]
    out["habitus"] = next(name for bound, name in HABITUS_WIDTH_MM if width < bound)
    if out["lung_fraction"] < SLICE_LUNG_MIN:
        out["lungs"] = "no_lungs"
    else:
        out["lungs"] = next(name for bound, name in SLICE_ASYMMETRY_SHARE if out["lung_left_share"] < bound)
    out["mode"] = f"{out['habitus']}/{out['lungs']}"
    return out
