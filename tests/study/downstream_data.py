"""Phantom data for the downstream-study tests: a labelled cache, an ideal and a noise "generator".

Label maps are written here (lungs 1, nodules 2, from the phantom's own tissue map and nodule mask),
so the tests do not depend on what ``write_phantoms`` puts beside its volumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

LABELS = ["lungs", "nodules"]


def phantom_labels(size: int, seed) -> tuple:
    """``(volume in HU, uint8 labels)`` of a phantom with nodules: lungs 1, nodules 2 painted over."""
    from medvol.data.io import Volume
    from medvol.data.phantom import TISSUES, render_phantom

    phantom = render_phantom(size, seed, nodules=True)
    labels = np.zeros(phantom.hu.shape, np.uint8)
    labels[phantom.tissues == TISSUES["lung"]] = 1
    labels[phantom.mask > 0] = 2
    return Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin), labels


def write_scans(folder: Path, n: int, size: int, seed: int) -> Path:
    """``scan_NNNN.nii.gz`` phantoms with ``scan_NNNN_mask.nii.gz`` label maps (not marked synthetic)."""
    from medvol.data.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        volume, labels = phantom_labels(size, (seed, i))
        write_volume(volume, folder / f"scan_{i:04d}.nii.gz", dtype=np.int16)
        write_volume(dataclasses.replace(volume, array=labels), folder / f"scan_{i:04d}_mask.nii.gz", dtype=np.uint8)
    return folder


def write_generated(folder: Path, n: int, size: int, *, seed: int, noise: bool = False, masks: bool = True,
                    mark: bool = True, names=LABELS) -> Path:
    """What ``medvol generate`` of a model with mask channels would write: ``sample_NNNN.nii.gz`` (HU,
    size³, the cache's grid) with ``sample_NNNN_mask.nii.gz``, both marked synthetic (sidecar with
    ``mask_labels``). ``noise=False``: an ideal generator (preprocessed phantoms of other seeds);
    ``noise=True``: uniform noise images with random blob masks."""
    from medvol.data.io import Volume, write_volume
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info, to_intensity
    from medvol.data.provenance import write_synthetic

    params = PreprocessParams(size=size)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if noise:
            array = rng.uniform(-1.0, 1.0, (size,) * 3).astype(np.float32)
            labels = np.zeros((size,) * 3, np.uint8)
            for value in (1, 2):
                centre, radius = rng.integers(4, size - 4, 3), 2 + 4 * (value == 1)
                grid = np.indices(labels.shape) - centre[:, None, None, None]
                labels[(grid ** 2).sum(axis=0) <= radius ** 2] = value
            spacing = (380.0 / size,) * 3
        else:
            volume, raw = phantom_labels(size, (seed, i))
            array, info = preprocess_with_info(volume, params, labels=dataclasses.replace(volume, array=raw))
            labels, spacing = info["labels"], info["spacing"]
        image = Volume(array=to_intensity(array, params).astype(np.float32), spacing=spacing)
        record = {"model": "noise" if noise else "ideal", "seed": seed, "index": i, "mask_labels": list(names)}
        image_path, mask_path = folder / f"sample_{i:04d}.nii.gz", folder / f"sample_{i:04d}_mask.nii.gz"
        if mark:
            write_synthetic(image, image_path, record)
        else:
            write_volume(image, image_path)
        if masks:
            write_synthetic(dataclasses.replace(image, array=labels), mask_path, record, dtype=np.uint8)
    return folder


def build_cache(scans: Path, cache: Path, size: int) -> Path:
    from medvol.data.cache import build_cache as build
    from medvol.data.preprocess import PreprocessParams

    build(scans, cache, PreprocessParams(size=size), val_fraction=0.34, mask_labels=LABELS)
    return cache
