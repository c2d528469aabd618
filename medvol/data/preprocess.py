"""The published preprocessing protocol, configurable: volume in HU -> (S, S, S) float32 in [-1, 1].

Steps (:func:`preprocess_volume`), in order:

1. Check the volume: 3D, every voxel finite.
2. Reorient to a standard orientation (``orient="LPS"``: axial slices inferior -> superior, rows
   anterior -> posterior, columns right -> left), so that volumes from different scanners and file
   formats agree. ``orient=None`` keeps the stored voxel order.
3. Blank axial slices (every voxel at or below ``blank_threshold``, i.e. air or scanner padding;
   for MR at or below the volume minimum). ``"replace"`` (default) overwrites each blank slice
   *inside* the scanned anatomy (a dropped or corrupt slice) with its nearest non-blank slice along
   z (the lower one on a tie), so the physical extent and slice spacing are kept and no sheet of air
   cuts through the anatomy; blank slices before the first and after the last non-blank one are
   real air beyond the patient and stay as they are (they become background, like the padding).
   ``"remove"`` drops every blank slice (the published code's literal step; the volume gets
   shorter), ``"keep"`` leaves them all.
4. Intensity, with MONAI: CT is clipped to the HU ``window`` and scaled linearly to [-1, 1]
   (``ScaleIntensityRange``); MR is scaled between the ``percentiles`` (default 0.5-99.5) and
   clipped (``ScaleIntensityRangePercentiles``).
5. Resample to isotropic voxels with SimpleITK (linear, Gaussian anti-aliasing along the axes that
   are downsampled). The isotropic spacing is the finest original spacing, but never finer than
   the final grid needs (longest physical extent / S), so a 512 x 512 x 300 CT is not first blown
   up to 1 GB.
6. Resize to S^3 with MONAI: the longest axis becomes S and the others keep the physical aspect
   ratio (``Resize(size_mode="longest")``), then the short axes are padded symmetrically with -1
   (air / background) up to S (``ResizeWithPadOrCrop``). ``keep_aspect=False`` stretches every axis
   to S instead.

:func:`to_intensity` maps [-1, 1] back to HU for generated volumes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from medvol.data.io import Volume
from medvol.errors import MedvolError

#: Output sizes (cube edge S) the models are built for.
SIZES = (32, 64, 128, 256, 512)
MODALITIES = ("ct", "mr")
BLANK_MODES = ("replace", "remove", "keep")
#: Bumped whenever the pipeline's output changes, so caches built by an older one are redone.
PIPELINE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    """Every parameter of the preprocessing (all recorded in the cache manifest).

    Attributes:
        size: output cube edge S, one of 32, 64, 128, 256, 512.
        modality: ``"ct"`` (HU window) or ``"mr"`` (percentile normalisation).
        window: CT window (min, max) in HU; clipped to it, then scaled to [-1, 1].
        percentiles: MR lower and upper percentiles mapped to -1 and 1.
        keep_aspect: pad to a cube keeping the physical aspect ratio (True) or stretch (False).
        blank_slices: ``"replace"`` | ``"remove"`` | ``"keep"`` (see the module docstring).
        blank_threshold: CT: a slice whose every voxel is at or below this HU is blank.
        orient: target orientation code for ``SimpleITK.DICOMOrient`` (e.g. ``"LPS"``), or None.
        antialias: Gaussian smoothing before downsampling.
    """

    size: int
    modality: str = "ct"
    window: tuple[float, float] = (-1024.0, 600.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    keep_aspect: bool = True
    blank_slices: str = "replace"
    blank_threshold: float = -1000.0
    orient: str | None = "LPS"
    antialias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size not in SIZES:
            raise MedvolError(f"unsupported size {self.size!r} (--size): choose one of {', '.join(map(str, SIZES))}")
        if self.modality not in MODALITIES:
            raise MedvolError(f"unknown modality {self.modality!r} (--modality): choose ct or mr")
        window = tuple(float(v) for v in self.window)
        if len(window) != 2 or not all(np.isfinite(window)):
            raise MedvolError(f"invalid window {self.window!r} (--window): expected two finite numbers MIN,MAX")
        if window[0] >= window[1]:
            raise MedvolError(f"invalid window {window[0]:g},{window[1]:g} (--window): min must be below max")
        percentiles = tuple(float(v) for v in self.percentiles)
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise MedvolError(f"invalid percentiles {self.percentiles!r} (--percentiles): need 0 <= low < high <= 100")
        if self.blank_slices not in BLANK_MODES:
            raise MedvolError(f"unknown blank-slice handling {self.blank_slices!r} (--blank-slices): "
                              f"choose one of {', '.join(BLANK_MODES)}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "percentiles", percentiles)
        object.__setattr__(self, "blank_threshold", float(self.blank_threshold))

    @property
    def intensity_window(self) -> tuple[float, float] | None:
        """The HU window that [-1, 1] stands for (CT), or None (MR has no absolute scale)."""
        return self.window if self.modality == "ct" else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, with the pipeline version (compared to decide cache reuse)."""
        data = dataclasses.asdict(self)
        data["window"] = list(self.window)
        data["percentiles"] = list(self.percentiles)
        data["pipeline_version"] = PIPELINE_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessParams":
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        for key in ("window", "percentiles"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def parse_window(text: str) -> tuple[float, float]:
    """Parse ``"-1024,600"`` into ``(-1024.0, 600.0)``; a MedvolError names ``--window`` otherwise."""
    parts = str(text).replace(":", ",").split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise MedvolError(f"invalid window {text!r} (--window): expected MIN,MAX such as -1024,600") from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise MedvolError(f"invalid window {text!r} (--window): expected two finite numbers")
    if low >= high:
        raise MedvolError(f"invalid window {text!r} (--window): min must be below max")
    return low, high


def check_volume(volume: Volume) -> None:
    """Raise a MedvolError naming the volume if it is not 3D or holds NaN/inf voxels."""
    array = np.asarray(volume.array)
    if array.ndim != 3 or min(array.shape) < 2:
        raise MedvolError(f"{volume.name}: shape {tuple(array.shape)} is not a 3D volume")
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise MedvolError(f"{volume.name}: {bad} voxels are NaN or infinite")


def blank_slice_mask(array: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (D,): True for axial slices whose every voxel is <= ``threshold``."""
    return array.reshape(array.shape[0], -1).max(axis=1) <= threshold


def handle_blank_slices(array: np.ndarray, blank: np.ndarray, mode: str) -> np.ndarray:
    """Replace, remove or keep the slices flagged in ``blank`` (see the module docstring).

    Args:
        array: (D, H, W).
        blank: (D,) bool.
        mode: ``"replace"`` | ``"remove"`` | ``"keep"``.
    """
    if mode == "keep" or not blank.any():
        return array
    kept = np.flatnonzero(~blank)
    if mode == "remove":
        return array[kept]
    # Nearest non-blank index for every slice; on a tie the lower neighbour wins. Slices outside
    # [first, last] non-blank map to themselves (air beyond the patient stays air).
    positions = np.arange(array.shape[0])
    right = np.clip(np.searchsorted(kept, positions), 0, len(kept) - 1)
    left = np.clip(right - 1, 0, len(kept) - 1)
    use_left = np.abs(kept[left] - positions) <= np.abs(kept[right] - positions)
    source = np.where(use_left, kept[left], kept[right])
    outside = (positions < kept[0]) | (positions > kept[-1])
    return array[np.where(outside, positions, source)]


def _scale_intensity(array: np.ndarray, params: PreprocessParams, name: str) -> np.ndarray:
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles
    from monai.utils import convert_to_numpy

    if params.modality == "ct":
        low, high = params.window
        transform = ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True)
    else:
        low, high = np.percentile(array, params.percentiles)
        if high <= low:
            raise MedvolError(f"{name}: intensities between the {params.percentiles[0]:g} and "
                              f"{params.percentiles[1]:g} percentiles are constant; cannot normalise")
        transform = ScaleIntensityRangePercentiles(lower=params.percentiles[0], upper=params.percentiles[1],
                                                   b_min=-1.0, b_max=1.0, clip=True)
    return convert_to_numpy(transform(array[None]), dtype=np.float32)[0]


def _resample_isotropic(image, size: int, antialias: bool):
    """SimpleITK image -> isotropic image (spacing = finest original, at least extent / size)."""
    import SimpleITK as sitk

    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    extent = spacing * np.asarray(image.GetSize())
    iso = max(float(spacing.min()), float(extent.max()) / size)
    new_size = [max(1, int(round(e / iso))) for e in extent]
    if antialias:
        # skimage's rule: sigma = (factor - 1) / 2 input voxels along each downsampled axis.
        sigma = np.maximum(0.0, (iso / spacing - 1.0) / 2.0) * spacing
        if sigma.max() > 0:
            image = sitk.DiscreteGaussian(image, [float(s) ** 2 for s in sigma], 32, 0.01, True)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    # Keep the outer edges of the volume in place: voxel centres move by half the size change.
    origin = np.asarray(image.GetOrigin()) + direction @ ((iso - spacing) / 2.0)
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, tuple(origin),
                         (iso,) * 3, image.GetDirection(), -1.0, sitk.sitkFloat32)


def _output_grid(iso_image, before_pad: Sequence[int], size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Spacing (z, y, x) and origin (x, y, z) of the output voxels, from the isotropic image.

    MONAI's trilinear ``Resize`` (``align_corners=False``) maps ``n_in`` voxels onto ``n_out`` with
    their outer edges kept: output voxel ``j`` sits at input index ``(j + 1/2) n_in / n_out - 1/2``.
    ``ResizeWithPadOrCrop`` then adds ``(size - n_out) // 2`` voxels before the content.
    """
    n_in = np.asarray(iso_image.GetSize(), dtype=np.float64)  # x, y, z
    n_out = np.asarray(before_pad[::-1], dtype=np.float64)
    iso = np.asarray(iso_image.GetSpacing(), dtype=np.float64)
    step = n_in / n_out
    spacing_xyz = iso * step
    pad = np.floor((size - n_out) / 2.0)
    direction = np.asarray(iso_image.GetDirection(), dtype=np.float64).reshape(3, 3)
    first_voxel = iso * (step / 2.0 - 0.5) - pad * spacing_xyz  # along each index axis, in mm
    origin = np.asarray(iso_image.GetOrigin(), dtype=np.float64) + direction @ first_voxel
    return tuple(float(s) for s in spacing_xyz[::-1]), tuple(float(o) for o in origin)


#: Below this value a CT voxel in HU is air or lung; a CT in HU has plenty of them (outside the body, in
#: the lungs and airways), an MR scan (non-negative scanner units) none.
AIR_HU = -200.0
#: The smallest fraction of voxels below :data:`AIR_HU` that a CT in HU is expected to have.
MIN_AIR_FRACTION = 0.01


def looks_like_hu(array: np.ndarray) -> bool:
    """Whether intensities look like CT in Hounsfield units: at least :data:`MIN_AIR_FRACTION` of
    the voxels below :data:`AIR_HU`.

    An MR scan (or a CT stored without its rescale to HU) fails this; through the default CT window
    [-1024, 600] it would come out washed out, its tissue clipped at the window's top."""
    return bool(np.count_nonzero(array < AIR_HU) >= MIN_AIR_FRACTION * array.size)


def not_hu_warning(sources: Sequence[str], total: int, window: Sequence[float]) -> str:
    """The one line that says ``sources`` (of ``total`` volumes) went through the CT ``window``
    without looking like HU (:func:`looks_like_hu`), and which option fits them."""
    return (f"{len(sources)} of {total} volume(s) do not look like CT in HU (under {100 * MIN_AIR_FRACTION:g}% "
            f"of voxels below {AIR_HU:g}, e.g. {sources[0]}): through the CT window {window[0]:g},{window[1]:g} "
            "an MR scan comes out washed out; use --modality mr (or --window for CT in other units)")


def preprocess_with_info(volume: Volume, params: PreprocessParams,
                         labels: Volume | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`preprocess_volume` that also says what it did, and carries a label map along.

    Returns:
        ``(array, info)``: array float32 (S, S, S) in [-1, 1]; info holds the geometry of the output
        grid as :class:`medvol.data.io.Volume` states it (``spacing`` z, y, x mm of the output voxels;
        ``origin`` x, y, z LPS mm of voxel 0; ``direction`` after reorientation), so the array
        overlays the source scan; ``isotropic_spacing``, ``blank_slices`` (how many were found) and
        ``shape_before_pad``; for CT, ``looks_like_hu`` (:func:`looks_like_hu` of the input). With ``blank_slices="remove"`` the kept slices are treated as
        contiguous from the first kept one, so positions along z are only approximate.

        With ``labels`` (a label map of the image: integer values 0..255, any grid that overlaps
        the image's), ``info["labels"]`` is that map on exactly the output grid, uint8 (S, S, S):
        resampled by nearest neighbour onto the image's grid where it is another, reoriented and
        blank-slice handled as the image, then sampled by nearest neighbour at the output voxel
        centres (0 outside it, e.g. in the padding). Nearest neighbour keeps class ids (no
        averaged labels), but a structure much smaller than an output voxel may vanish.
    """
    import SimpleITK as sitk
    from monai.transforms import Resize, ResizeWithPadOrCrop
    from monai.utils import convert_to_numpy

    check_volume(volume)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(volume.spacing)))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction))
    label_image = _label_image(labels, image, volume.name) if labels is not None else None
    if params.orient:
        image = sitk.DICOMOrient(image, params.orient)
        if label_image is not None:
            label_image = sitk.DICOMOrient(label_image, params.orient)
    array = sitk.GetArrayFromImage(image)

    threshold = params.blank_threshold if params.modality == "ct" else float(array.min())
    blank = blank_slice_mask(array, threshold)
    if blank.all():
        raise MedvolError(f"{volume.name}: every axial slice is blank (all voxels <= {threshold:g})")
    array = handle_blank_slices(array, blank, params.blank_slices)
    array = _scale_intensity(array, params, volume.name)

    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    first = int(np.flatnonzero(~blank)[0]) if params.blank_slices == "remove" else 0
    scaled = sitk.GetImageFromArray(np.ascontiguousarray(array))
    scaled.SetSpacing(image.GetSpacing())
    # Removed leading slices move voxel 0 to the first kept slice (the values do not change).
    scaled.SetOrigin(tuple(np.asarray(image.GetOrigin()) + direction[:, 2] * (first * image.GetSpacing()[2])))
    scaled.SetDirection(image.GetDirection())
    iso_image = _resample_isotropic(scaled, params.size, params.antialias)
    iso = float(iso_image.GetSpacing()[0])
    iso_array = sitk.GetArrayFromImage(iso_image)[None]

    size = params.size
    if params.keep_aspect:
        resized = Resize(size, size_mode="longest", mode="trilinear", anti_aliasing=params.antialias)(iso_array)
        before_pad = tuple(int(s) for s in resized.shape[1:])
        out = ResizeWithPadOrCrop(size, mode="constant", value=-1.0)(resized)
    else:
        out = Resize((size,) * 3, mode="trilinear", anti_aliasing=params.antialias)(iso_array)
        before_pad = (size,) * 3
    out = np.clip(convert_to_numpy(out, dtype=np.float32)[0], -1.0, 1.0)
    spacing, origin = _output_grid(iso_image, before_pad, size)
    info = {
        "spacing": spacing,
        "origin": origin,
        "direction": tuple(float(d) for d in image.GetDirection()),
        "isotropic_spacing": iso,
        "blank_slices": int(blank.sum()),
        "shape_before_pad": before_pad,
    }
    if params.modality == "ct":
        info["looks_like_hu"] = looks_like_hu(volume.array)
    if label_image is not None:
        label_array = handle_blank_slices(sitk.GetArrayFromImage(label_image), blank, params.blank_slices)
        moved = sitk.GetImageFromArray(np.ascontiguousarray(label_array))
        moved.CopyInformation(scaled)  # the blank-slice handled grid, as the image's
        info["labels"] = _labels_on_grid(moved, info, size)
    return np.ascontiguousarray(out), info


def _label_image(labels: Volume, image, name: str):
    """A label map as a uint8 SimpleITK image on the grid of ``image`` (the scan, before reorienting).

    A map stored on the scan's own grid (same shape, geometry equal to 1e-3 mm) takes the scan's
    geometry as it is; another grid is resampled onto the scan's by nearest neighbour (0 outside).

    Raises:
        MedvolError: a map that is not 3D, holds values other than integers 0..255, or (resampled)
            does not overlap the scan at all; the message names the label file.
    """
    import SimpleITK as sitk

    where = labels.name
    array = np.asarray(labels.array)
    if array.ndim != 3:
        raise MedvolError(f"{where}: label map of shape {tuple(array.shape)} is not 3D (labels of {name})")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array)):
        raise MedvolError(f"{where}: a label map holds integers 0..255; this one has other values "
                          f"(min {float(np.nanmin(array)):g}, max {float(np.nanmax(array)):g})")
    mapped = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    mapped.SetSpacing(tuple(float(s) for s in reversed(labels.spacing)))
    mapped.SetOrigin(tuple(float(o) for o in labels.origin))
    mapped.SetDirection(tuple(float(d) for d in labels.direction))
    same = mapped.GetSize() == image.GetSize() and all(
        np.allclose(a(), b(), atol=1e-3) for a, b in ((mapped.GetSpacing, image.GetSpacing),
                                                      (mapped.GetOrigin, image.GetOrigin),
                                                      (mapped.GetDirection, image.GetDirection)))
    if same:
        mapped.CopyInformation(image)
        return mapped
    resampled = sitk.Resample(mapped, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if array.any() and not sitk.GetArrayViewFromImage(resampled).any():
        raise MedvolError(f"{where}: the label map does not overlap its image {name} (compare their origins "
                          "and directions)")
    return resampled


def _labels_on_grid(label_image, info: dict[str, Any], size: int) -> np.ndarray:
    """Sample a label image by nearest neighbour at the output voxels (``info``'s grid): uint8 (S, S, S)."""
    import SimpleITK as sitk

    grid = sitk.Resample(label_image, [size] * 3, sitk.Transform(), sitk.sitkNearestNeighbor,
                         tuple(info["origin"]), tuple(float(s) for s in reversed(info["spacing"])),
                         tuple(info["direction"]), 0, sitk.sitkUInt8)
    return np.ascontiguousarray(sitk.GetArrayFromImage(grid), dtype=np.uint8)


def preprocess_volume(volume: Volume, params: PreprocessParams) -> np.ndarray:
    """Apply the protocol (module docstring) to one volume.

    Args:
        volume: CT in HU (or MR in scanner units), any shape and spacing.
        params: the preprocessing parameters.

    Returns:
        float32 array (S, S, S) = (z, y, x) in [-1, 1], S = ``params.size``.

    Raises:
        MedvolError: a volume that is not 3D, holds NaN/inf, or is entirely blank (names the file).

    Example:
        >>> vol, _ = make_phantom(64, seed=1)                      # doctest: +SKIP
        >>> preprocess_volume(vol, PreprocessParams(size=64)).shape  # doctest: +SKIP
        (64, 64, 64)
    """
    return preprocess_with_info(volume, params)[0]


def preprocess_aligned(volume: Volume, params: PreprocessParams) -> np.ndarray:
    """:func:`preprocess_volume` in numpy alone, for CT whose reorientation and resize do nothing.

    That is CT with an identity direction (already LPS) whose isotropic grid has S voxels along its
    longest axis, as every phantom of :func:`medvol.data.phantom.make_phantom` has; the phantom data
    source then trains without SimpleITK and MONAI (a bare GPU image). Steps 3-5 and the padding of
    step 6 are written after SimpleITK's ``DiscreteGaussian`` (the kernel ``exp(-t) I_n(t)``, cut
    when it holds 99% of its mass, edges replicated) and ``Resample`` (linear, outer edges kept,
    -1 outside). The result equals :func:`preprocess_volume` to float32 rounding (tested).

    Raises:
        MedvolError: as :func:`preprocess_volume`, and for a volume outside that case, naming it.
    """
    check_volume(volume)
    if (params.modality != "ct" or params.orient not in (None, "LPS")
            or not np.allclose(np.asarray(volume.direction, dtype=np.float64), np.eye(3).ravel())):
        raise MedvolError(f"{volume.name}: preprocess_aligned takes CT with an identity direction;"
                          " preprocess_volume takes the rest (pip install 'medvol[itk]')")
    array = np.asarray(volume.array, dtype=np.float32)
    blank = blank_slice_mask(array, params.blank_threshold)
    if blank.all():
        raise MedvolError(f"{volume.name}: every axial slice is blank (all voxels <= {params.blank_threshold:g})")
    array = handle_blank_slices(array, blank, params.blank_slices)
    array = window_to_unit(array, *params.window).astype(np.float32)

    spacing = np.asarray(volume.spacing, dtype=np.float64)  # (z, y, x), the array's axis order
    extent = spacing * np.asarray(array.shape)
    iso = max(float(spacing.min()), float(extent.max()) / params.size)  # as _resample_isotropic
    outside = np.zeros((1, 1, 1), dtype=bool)
    for axis in range(3):
        # Smoothing along one axis commutes with resampling along another: one axis at a time.
        variance = max(0.0, (iso / spacing[axis] - 1.0) / 2.0) ** 2  # in this axis's voxels
        if params.antialias and variance > 0:
            array = _smooth_axis(array, axis, variance)
        array, out = _resample_axis(array, axis, spacing[axis], iso, max(1, int(round(extent[axis] / iso))))
        outside = outside | out
    array = np.where(outside, np.float32(-1.0), array)

    size = params.size
    if max(array.shape) != size or (not params.keep_aspect and array.shape != (size,) * 3):
        raise MedvolError(f"{volume.name}: its isotropic grid {array.shape} needs a resize to {size};"
                          " preprocess_volume does that (pip install 'medvol[itk]')")
    pads = [((size - n) // 2, size - n - (size - n) // 2) for n in array.shape]  # as ResizeWithPadOrCrop
    return np.clip(np.pad(array, pads, constant_values=-1.0), -1.0, 1.0).astype(np.float32)


def _gaussian_taps(variance: float, max_error: float = 0.01, max_width: int = 32) -> np.ndarray:
    """ITK's discrete Gaussian for ``variance`` (voxels^2): taps ``exp(-t) I_n(t)``, n = 0, 1, ...
    until they hold ``1 - max_error`` of the mass (or ``max_width`` taps a side), normalised."""

    def bessel_i(n: int, t: float) -> float:  # the power series converges fast for these small t
        term = (t / 2) ** n / math.factorial(n)
        total, k = term, 0
        while term > 1e-17 * total:
            k += 1
            term *= (t / 2) ** 2 / (k * (k + n))
            total += term
        return total

    scale = math.exp(-variance)
    half = [scale * bessel_i(0, variance), scale * bessel_i(1, variance)]
    mass = half[0] + 2 * half[1]
    while mass < 1 - max_error and half[-1] > 0 and len(half) <= max_width:
        half.append(scale * bessel_i(len(half), variance))
        mass += 2 * half[-1]
    half = np.asarray(half) / mass
    return np.concatenate([half[:0:-1], half])


def _smooth_axis(array: np.ndarray, axis: int, variance: float) -> np.ndarray:
    taps = _gaussian_taps(variance)
    radius, n = len(taps) // 2, array.shape[axis]
    out = np.zeros(array.shape, dtype=np.float64)
    for offset, weight in zip(range(-radius, radius + 1), taps):
        out += weight * np.take(array, np.clip(np.arange(n) + offset, 0, n - 1), axis=axis)
    return out.astype(np.float32)


def _resample_axis(array: np.ndarray, axis: int, spacing: float, iso: float, n_out: int):
    """Linear resample of one axis from ``spacing`` to ``iso`` with its outer edges in place;
    returns the array and the mask of output planes outside the input."""
    n = array.shape[axis]
    source = ((iso - spacing) / 2 + np.arange(n_out) * iso) / spacing  # continuous input index
    base = np.floor(source)
    shape = [1, 1, 1]
    shape[axis] = n_out
    frac = (source - base).reshape(shape)
    below = np.take(array, np.clip(base, 0, n - 1).astype(int), axis=axis).astype(np.float64)
    above = np.take(array, np.clip(base + 1, 0, n - 1).astype(int), axis=axis)
    outside = ((source < -0.5) | (source > n - 0.5)).reshape(shape)
    return ((1 - frac) * below + frac * above).astype(np.float32), outside


def window_to_unit(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """``array`` clipped to the window [``low``, ``high``] and scaled linearly to [-1, 1], in its
    own float precision; all -1 where the window is empty (a constant image has nothing to show).
    The one intensity scaling of aligned CT (:func:`preprocess_aligned`; :func:`preprocess_volume`
    does the same through MONAI), slices of volumes and 2D images (:mod:`medvol.data.image_prep`,
    :func:`medvol.data.images.scale_image`); :func:`to_intensity` inverts it."""
    if not high > low:
        return np.full(np.shape(array), -1.0)
    return np.clip((array - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0)


def to_intensity(x, params_or_window: PreprocessParams | Sequence[float] | None):
    """Invert the intensity scaling: [-1, 1] -> HU (window min .. max).

    Args:
        x: numpy array or torch tensor of any shape, values in [-1, 1].
        params_or_window: the :class:`PreprocessParams`, a (min, max) window, or None (MR: values
            are returned unchanged, since percentile scaling has no absolute unit).

    Returns:
        Same type and shape as ``x``: ``min + (x + 1) / 2 * (max - min)``.
    """
    window = params_or_window.intensity_window if isinstance(params_or_window, PreprocessParams) else params_or_window
    if window is None:
        return x
    low, high = (float(v) for v in window)
    if low >= high:
        raise MedvolError(f"invalid window {low:g},{high:g}: min must be below max")
    return (x + 1.0) * ((high - low) / 2.0) + low
