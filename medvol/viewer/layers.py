"""From files to napari layer data: reading, names, physical transforms, contrast.

Nothing here imports napari: the functions return napari "layer data" tuples
``(array, kwargs, layer_type)``, which both the viewer (:mod:`medvol.viewer.app`) and the napari
reader plugin (:mod:`medvol.viewer.plugin`) hand to napari.

Coordinates: arrays are (z, y, x); :class:`medvol.data.io.Volume` keeps the ITK (LPS) origin and
direction in (x, y, z) order. A layer maps a voxel index ``i`` (z, y, x) to the world point
``rotate @ (scale * i) + translate``, so ``scale`` is the spacing, ``translate`` the reversed origin
and ``rotate`` the direction matrix with rows and columns reversed (after undoing axis
permutations, see :func:`layer_transform`). The world is then LPS in mm, which napari draws
(x right, y down) in the radiological convention for axial slices.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np


#: World axes, in array order.
AXIS_LABELS = ("z", "y", "x")

LayerData = tuple[np.ndarray, dict[str, Any], str]


def volume_name(path: str | os.PathLike | None, fallback: str = "volume") -> str:
    """Layer name for a volume file or DICOM folder: the file name without its volume suffix.

    Example:
        >>> volume_name("out/sample_003.nii.gz")
        'sample_003'
    """
    from medvol.data.io import volume_stem

    return (volume_stem(path) or fallback) if path is not None else fallback


def load_volumes(sources: Sequence[str | os.PathLike]) -> list:
    """Read every volume named by ``sources`` (files, DICOM series, sample folders, globs).

    Each source is expanded with :func:`medvol.data.discover.discover`, so a folder written by
    ``medvol generate`` gives one volume per file and a DICOM series folder gives one volume.
    A preprocessed cache (its folder, or ``CACHE/volumes/NAME.npy``) gives its entries with their
    geometry, CT in HU (:func:`medvol.data.cache.cache_volumes`).

    Args:
        sources: paths as given on the command line.

    Returns:
        list of :class:`medvol.data.io.Volume`, in order; ``volume.path`` names the file.

    Raises:
        MedvolError: naming the first source that is missing, holds no volume or is unreadable.
    """
    from medvol.data.cache import cache_volumes
    from medvol.data.discover import discover
    from medvol.data.io import read_volume

    volumes = []
    for source in sources:
        cached = cache_volumes(source)
        volumes.extend(cached if cached is not None else [read_volume(path) for path in discover(source)])
    return volumes


def layer_transform(volume, *, use_origin: bool = True) -> dict[str, Any]:
    """Where ``volume`` goes in the LPS world (z, y, x) mm: napari transform plus an axis order.

    A direction that permutes axes (a sagittal or coronal acquisition) is undone by transposing
    the array (a view, no copy): napari slices only along world axes, and a layer whose data axes
    are rotated off them would be shown without the rotation. What remains in ``rotate`` is then
    diagonal (axis flips); an oblique direction stays a full rotation.

    Args:
        volume: a :class:`medvol.data.io.Volume`.
        use_origin: False puts the first voxel at the world origin (used to align volumes
            voxel by voxel in a grid).

    Returns:
        dict with ``axes`` (the array transpose, 3 ints), ``scale`` (3 floats, the spacing along
        the transposed axes), ``translate`` (3 floats) and ``rotate`` (3x3 orthonormal array).
    """
    spacing = np.asarray(volume.spacing, dtype=float)
    rotate = np.asarray(volume.direction, dtype=float).reshape(3, 3)[::-1, ::-1]
    # Data axis closest to each world axis; a proper permutation only if no two world axes pick
    # the same data axis (otherwise the direction is too oblique to call any axis "z").
    axes = tuple(int(a) for a in np.argmax(np.abs(rotate), axis=1))
    if sorted(axes) != [0, 1, 2]:
        axes = (0, 1, 2)
    origin = tuple(float(o) for o in volume.origin)[::-1] if use_origin else (0.0, 0.0, 0.0)
    return {
        "axes": axes,
        "scale": tuple(float(s) for s in spacing[list(axes)]),
        "translate": origin,
        "rotate": rotate[:, list(axes)],
    }


def _oriented(array: np.ndarray, transform: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the ``axes`` of a :func:`layer_transform` to ``array``; return napari kwargs."""
    kwargs = dict(transform)
    axes = kwargs.pop("axes", (0, 1, 2))
    return (array if tuple(axes) == (0, 1, 2) else np.transpose(array, axes)), kwargs


def default_contrast(array: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the data: the 0.5th to 99.5th percentile.

    Percentiles rather than min/max so that CT padding (-3024 HU) or a few hot voxels do not
    wash the picture out. A constant volume gets (v, v + 1).
    """
    sample = np.asarray(array)
    # A strided subsample is enough for percentiles and keeps this instant on 512^3 volumes.
    step = max(1, int(round((sample.size / 2_000_000) ** (1 / 3))))
    sample = sample[::step, ::step, ::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if not low < high:
        low, high = float(sample.min()), float(sample.max())
    if not low < high:
        high = low + 1.0
    return (low, high)


def image_layer_data(
    volume,
    *,
    window: tuple[float, float] | None = None,
    name: str | None = None,
    transform: dict[str, Any] | None = None,
) -> LayerData:
    """napari image layer data for one volume.

    Args:
        volume: a :class:`medvol.data.io.Volume`, array (D, H, W) float32.
        window: (low, high) contrast limits (HU for CT); None: :func:`default_contrast`.
        name: layer name; default from ``volume.path``.
        transform: from :func:`layer_transform` (default: this volume's own).

    Returns:
        ``(array, kwargs, "image")``; ``array`` is ``volume.array`` or a transposed view of it.
    """
    transform = transform or layer_transform(volume)
    array, kwargs = _oriented(volume.array, transform)
    kwargs.update(
        name=name or volume_name(volume.path),
        contrast_limits=tuple(window) if window is not None else default_contrast(volume.array),
        colormap="gray",
        axis_labels=AXIS_LABELS,
        units=("mm", "mm", "mm"),
        metadata={"path": volume.path, "spacing": tuple(float(s) for s in volume.spacing),
                  "axes": transform["axes"]},
    )
    return (array, kwargs, "image")


def labels_layer_data(mask, *, name: str | None = None, transform: dict[str, Any] | None = None) -> LayerData:
    """napari labels layer data for a mask volume (values rounded to integer labels).

    Args:
        mask: a :class:`medvol.data.io.Volume` whose array holds label values.
        name: layer name; default from ``mask.path``.
        transform: from :func:`layer_transform` (default: the mask's own).
    """
    transform = transform or layer_transform(mask)
    array, kwargs = _oriented(np.rint(np.asarray(mask.array)).astype(np.int32), transform)
    kwargs.update(
        name=name or volume_name(mask.path, "labels"),
        axis_labels=AXIS_LABELS,
        units=("mm", "mm", "mm"),
        metadata={"path": mask.path, "axes": transform["axes"]},
    )
    return (array, kwargs, "labels")
