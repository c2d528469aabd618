"""Slices to 8-bit PNG images for the study page, under one display window per pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvol.errors import MedvolError
from medvol.utils import checked_write, optional_import

#: Percentiles of the pair's voxels that ``--window auto`` maps to black and white (MR, or CT
#: without a preset): one mapping for both images, so that an intensity difference stays visible.
AUTO_PERCENTILES = (0.5, 99.5)


def resolve_window(text: str, *images: np.ndarray) -> tuple[float, float]:
    """(low, high) for the images shown together (a pair, or one single image): a viewer preset or
    ``LOW,HIGH`` (HU), or ``auto`` (percentiles of their pixels, each image counted once)."""
    from medvol.viewer.presets import parse_window

    if text.strip().lower() != "auto":
        return parse_window(text)
    low, high = np.percentile(np.concatenate([image.ravel() for image in images]), AUTO_PERCENTILES)
    if not high > low:
        high = low + 1.0  # a constant pair: grey, not a division by zero
    return float(low), float(high)


def to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map ``window`` (low, high) linearly to 0..255, clipping outside; (H, W) float -> uint8."""
    if not np.isfinite(image).all():
        raise MedvolError("a slice holds NaN or infinite values")
    low, high = window
    scaled = (np.asarray(image, dtype=np.float64) - low) / (high - low)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def write_png(image: np.ndarray, path: Path) -> None:
    """Write an 8-bit greyscale PNG with no metadata chunks (nothing but the pixels)."""
    pil = optional_import("PIL.Image", "medvol study reader make (PNG images)")
    with checked_write(path, "study image") as tmp:
        pil.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(tmp, format="PNG", optimize=False)
