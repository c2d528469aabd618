"""2D images: reading PNG, JPEG, TIFF, BMP and 2D DICOM files, scaling them to [-1, 1], resizing.

The 2D counterpart of :mod:`medvol.data.io` and :mod:`medvol.data.preprocess`, used by
:mod:`medvol.data.image_cache` (``medvol preprocess --images``).

What a file becomes (:func:`read_image`): float64 ``(C, H, W)`` with C = 1 (grey) or 3 (RGB), and
the intensity range its values stand for (``"range"``, below):

- PNG, JPEG, BMP, TIFF through Pillow: 8-bit (0..255), 16-bit (0..65535) and float grey; RGB(A)
  and palette images as RGB (alpha dropped). ``colour="grey"`` turns RGB into luma with the
  ITU-R 601 weights (0.299, 0.587, 0.114), as Pillow's ``"L"`` conversion does.
- 2D DICOM (CR, DX and any single-frame image) through pydicom: the Modality LUT (rescale slope
  and intercept, or a Modality LUT sequence: pydicom's ``apply_modality_lut``), then the VOI LUT
  sequence if there is one (as pydicom prefers it; applied here: :func:`_voi_lut_sequence`), else
  the window (pydicom's ``apply_voi_lut``); the range is the VOI output range of DICOM PS3.3
  C.11.2.1 (``[0, 2^bits - 1]``, shifted by the rescale for a window).
  ``MONOCHROME1`` (bright = low values) is inverted after scaling, so bone is bright in every
  image. Pixel spacing (``PixelSpacing``, else ``ImagerPixelSpacing``) is kept.

Scaling (:func:`scale_image`) maps an interval to [-1, 1] and clips: ``"range"`` the file's
nominal range (8-bit, the DICOM VOI output), ``"minmax"`` each image's own minimum and maximum,
``"window"`` a fixed LOW,HIGH in the file's unit (HU for CT DICOM after its Modality LUT).
``"auto"``: 8-bit files, windowed DICOM and one-slice volume files already in [-1, 1] by range;
16-bit and float files, and DICOM without a window, by min-max (16-bit files often hold 10- to
14-bit data, which the 16-bit range would leave nearly black).

One-slice NIfTI, MetaImage and NRRD files (what ``medvol generate`` writes for a 2D model) are
read as grey images with their spacing.

Resizing (:func:`resize_image`) is bilinear with antialiasing for images and nearest-neighbour for
label maps, to S x S; with ``keep_aspect`` the longer side becomes S and the other is padded with
-1 (images) or 0 (labels), centred, as the 3D cache pads its cubes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medvol.errors import MedvolError

#: Image files by suffix (lower case). ``.dcm`` and suffix-less DICOM files are read with pydicom.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: One-slice volume files read as 2D images (what ``medvol generate`` writes for the 2D models).
VOLUME_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
SCALES = ("auto", "range", "minmax", "window")
COLOURS = ("grey", "rgb")
#: ITU-R BT.601 luma weights (Pillow's RGB -> "L").
LUMA = (0.299, 0.587, 0.114)


def image_suffix(path: str | os.PathLike) -> str:
    """The image suffix of ``path`` (``".png"``, ``".dcm"`` ...), or ``""`` for none of them."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def image_stem(path: str | os.PathLike) -> str:
    """The name of ``path`` without its image or volume suffix (``"a.png"`` -> ``"a"``)."""
    from medvol.data.io import volume_stem

    name = Path(path).name
    suffix = image_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else volume_stem(path)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def read_image(path: str | os.PathLike, colour: str = "grey") -> tuple[np.ndarray, dict[str, Any]]:
    """One 2D image file as float64 ``(C, H, W)`` and what it is.

    Args:
        path: a PNG, JPEG, TIFF, BMP or DICOM file.
        colour: ``"grey"`` (C = 1; RGB converted to luma) or ``"rgb"`` (C = 3; grey repeated).

    Returns:
        ``(array, info)``: ``info`` has ``format``, ``bits`` (8, 16, or None for float), ``range``
        (the nominal ``[low, high]`` or None), ``spacing`` (row, column mm, or None),
        ``photometric`` and ``voi`` (DICOM: which VOI transform was applied: ``"lut"``,
        ``"window"`` or None), ``inverted`` (MONOCHROME1).

    Raises:
        MedvolError: an unreadable, empty, multi-frame, non-finite or not 2D image (names the file).
    """
    path = Path(path)
    if colour not in COLOURS:
        raise MedvolError(f"--colour {colour!r}: choose one of {', '.join(COLOURS)}")
    if not path.is_file():
        raise MedvolError(f"{path}: no such image file")
    suffix = image_suffix(path)
    from medvol.data.io import volume_suffix

    if suffix in DICOM_SUFFIXES or (suffix == "" and not path.suffix and looks_dicom(path)):
        array, info = _read_dicom(path)
    elif suffix in IMAGE_SUFFIXES:
        array, info = _read_pillow(path)
    elif volume_suffix(path) in VOLUME_IMAGE_SUFFIXES:
        array, info = _read_volume_image(path)
    else:
        raise MedvolError(f"{path}: not an image file medvol reads ({', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)})")
    if array.ndim != 3 or array.shape[0] not in (1, 3) or min(array.shape[1:]) < 1:
        raise MedvolError(f"{path}: not a 2D grey or RGB image (array of shape {array.shape})")
    if not np.isfinite(array).all():
        raise MedvolError(f"{path}: holds NaN or infinite values")
    if colour == "grey" and array.shape[0] == 3:
        array = np.tensordot(np.asarray(LUMA), array, axes=1)[None]
    elif colour == "rgb" and array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return array, info


def looks_dicom(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_volume_image(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A one-slice NIfTI, MetaImage or NRRD file (a 2D model's sample): its values, and the range
    [-1, 1] when they lie in it (medvol's own scale), else none."""
    from medvol.utils import optional_import

    sitk = optional_import("SimpleITK", "reading one-slice volume files")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise MedvolError(f"{path}: unreadable image ({_one_line(error)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedvolError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per pixel; one expected")
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    spacing = [float(s) for s in reversed(image.GetSpacing())]
    if array.ndim == 3 and array.shape[0] == 1:
        array, spacing = array[0], spacing[1:]
    if array.ndim != 2:
        raise MedvolError(f"{path}: a volume of shape {array.shape}, not one 2D image "
                          "(use --images slices for the slices of volumes)")
    unit = bool(np.isfinite(array).all() and array.min() >= -1 and array.max() <= 1)
    return array[None], {"format": "volume file", "bits": None, "range": [-1.0, 1.0] if unit else None,
                         "spacing": spacing, "photometric": None, "voi": None, "inverted": False,
                         "unit_range": unit}


def _read_pillow(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from medvol.utils import optional_import

    image_module = optional_import("PIL.Image", "reading PNG, JPEG, TIFF and BMP images")
    try:
        with image_module.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise MedvolError(f"{path}: holds {image.n_frames} frames; 2D images only (one frame per file)")
            mode = image.mode
            if mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                image = image.convert("L" if mode in ("LA", "1") else "RGB")
                mode = image.mode
            array = np.asarray(image)
            image_format = image.format
    except MedvolError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds for a damaged file
        raise MedvolError(f"{path}: unreadable image ({_one_line(error)})") from None
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    if array.dtype == np.uint8:
        bits, nominal = 8, [0.0, 255.0]
    elif array.dtype in (np.uint16, np.int32) and mode.startswith("I"):
        bits, nominal = 16, [0.0, 65535.0]
        if array.min() < 0 or array.max() > 65535:
            bits, nominal = None, None
    else:
        bits, nominal = None, None
    return array.astype(np.float64), {"format": image_format, "mode": mode, "bits": bits, "range": nominal,
                                      "spacing": None, "photometric": None, "voi": None, "inverted": False}


def _read_dicom(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from medvol.utils import optional_import

    pydicom = optional_import("pydicom", "reading 2D DICOM images")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as error:  # noqa: BLE001 - InvalidDicomError, truncated files, bad tags
        raise MedvolError(f"{path}: unreadable DICOM file ({_one_line(error)})") from None
    if "PixelData" not in ds:
        raise MedvolError(f"{path}: a DICOM file without pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedvolError(f"{path}: a multi-frame DICOM ({frames} frames); 2D images only (a CT or MR series "
                          "is a volume: medvol preprocess without --images)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        array = ds.pixel_array
        samples = int(ds.get("SamplesPerPixel", 1))
        voi = None
        nominal = None
        if samples == 1:
            if photometric not in ("MONOCHROME1", "MONOCHROME2"):
                raise MedvolError(f"{path}: photometric interpretation {photometric} (grey DICOM images are "
                                  "MONOCHROME1 or MONOCHROME2; colour ones RGB)")
            array = apply_modality_lut(array, ds)
            voi, nominal = _voi_range(ds)
            if voi == "lut":
                array = _voi_lut_sequence(array, ds)
            elif voi == "window":
                array = apply_voi_lut(array, ds)
            array = np.asarray(array, dtype=np.float64)[None]
        else:
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                array = convert_color_space(array, photometric, "RGB")
            array = np.moveaxis(np.asarray(array, dtype=np.float64), -1, 0)
            bits = int(ds.get("BitsStored", 8))
            nominal = [0.0, float(2 ** bits - 1)]
    except MedvolError:
        raise
    except Exception as error:  # noqa: BLE001 - missing decoders, bad LUTs: pydicom raises many kinds
        raise MedvolError(f"{path}: cannot decode its pixels ({_one_line(error)})") from None
    spacing = None
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            try:
                spacing = [float(value[0]), float(value[1])]
            except (TypeError, ValueError):
                continue
            if all(np.isfinite(spacing)) and min(spacing) > 0:
                break
            spacing = None
    bits = int(ds.get("BitsStored", 8) or 8)
    return array, {"format": "DICOM", "modality": str(ds.get("Modality", "")), "bits": bits, "range": nominal,
                   "spacing": spacing, "photometric": photometric, "voi": voi,
                   "inverted": photometric == "MONOCHROME1"}


def _voi_lut_sequence(array: np.ndarray, ds) -> np.ndarray:
    """The first VOI LUT of ``ds`` applied to ``array`` (PS3.3 C.11.2.1.1): values below the first
    mapped value take the first entry, values past the last the last entry.

    Done here rather than by pydicom's ``apply_voi``: pydicom 3.0.2 computes the LUT index in the
    LUT's own dtype, so with an 8-bit LUT an index above 255 wraps around (an input 1019 with the
    first mapped value 237 gave entry 13 instead of the last one; tests/data/test_images_dicom.py).
    """
    item = ds.VOILUTSequence[0]
    count, first, _ = (int(v) for v in item.LUTDescriptor)
    count = count or 2 ** 16
    element = item["LUTData"]
    if element.VR == "OW":
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        table = np.frombuffer(bytes(element.value), dtype="<u2" if little else ">u2")[:count]
    else:
        table = np.asarray(element.value, dtype=np.int64).ravel()[:count]
    if table.size != count:
        raise MedvolError(f"VOI LUT of {count} entries holds {table.size}")
    index = np.clip(np.asarray(array, dtype=np.int64) - first, 0, count - 1)
    return table.astype(np.float64)[index]


def _voi_range(ds) -> tuple[str | None, list[float] | None]:
    """Which VOI transform ``apply_voi_lut`` applies to ``ds`` and the range of its output.

    DICOM PS3.3 C.11.2.1: a VOI LUT sequence maps to ``[0, 2^n - 1]`` (n its descriptor's third
    value); a window maps to the range of the stored values (``[0, 2^bits - 1]``, or the signed
    range), after the Modality LUT's rescale, as pydicom's ``apply_windowing`` does.
    """
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return "lut", [0.0, float(2 ** bits - 1)]
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None, None
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return "window", [low, high]


def scale_image(array: np.ndarray, info: dict[str, Any], scale: str = "auto",
                window: tuple[float, float] | None = None, *, name: str = "image") -> tuple[np.ndarray, list[float]]:
    """``array`` mapped to [-1, 1] (float32, clipped), and the interval that was mapped.

    Args:
        array: ``(C, H, W)`` as :func:`read_image` returns it.
        info: its ``info``.
        scale: ``"auto"``, ``"range"``, ``"minmax"`` or ``"window"`` (module docstring).
        window: LOW,HIGH for ``"window"``.
        name: the image in messages.

    Returns:
        ``(scaled, [low, high])``; a MONOCHROME1 image is negated after scaling.

    Raises:
        MedvolError: ``"range"`` for an image without a nominal range, or ``"window"`` without one.
    """
    if scale not in SCALES:
        raise MedvolError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    if scale == "auto":
        by_range = info.get("bits") == 8 or info.get("voi") or info.get("unit_range")
        scale = "range" if info.get("range") is not None and by_range else "minmax"
    if scale == "range":
        if info.get("range") is None:
            raise MedvolError(f"{name}: has no nominal intensity range (a float or 16-bit file outside 0..65535); "
                              "use --scale minmax or --scale window")
        low, high = (float(v) for v in info["range"])
    elif scale == "window":
        if window is None:
            raise MedvolError("--scale window needs --window LOW,HIGH")
        low, high = (float(v) for v in window)
    else:
        low, high = float(array.min()), float(array.max())
    from medvol.data.preprocess import window_to_unit

    scaled = window_to_unit(np.asarray(array, dtype=np.float64), low, high)  # a constant image: blank (-1)
    if info.get("inverted"):
        scaled = -scaled
    return scaled.astype(np.float32), [low, high]


def _fit(height: int, width: int, size: int, keep_aspect: bool) -> tuple[int, int]:
    if not keep_aspect:
        return size, size
    longest = max(height, width)
    return max(1, int(round(height * size / longest))), max(1, int(round(width * size / longest)))


def _pad(array: np.ndarray, size: int, value: float) -> np.ndarray:
    height, width = array.shape[-2:]
    top, left = (size - height) // 2, (size - width) // 2
    pads = [(0, 0)] * (array.ndim - 2) + [(top, size - height - top), (left, size - width - left)]
    return np.pad(array, pads, constant_values=value)


def resize_image(array: np.ndarray, size: int, keep_aspect: bool = True) -> np.ndarray:
    """``(C, H, W)`` -> float32 ``(C, S, S)``: bilinear, antialiased when shrinking; padded with -1
    around the fitted image with ``keep_aspect``. An image already S x S is returned as it is."""
    import torch

    array = np.asarray(array, dtype=np.float32)
    height, width = array.shape[-2:]
    fitted = _fit(height, width, size, keep_aspect)
    if (height, width) != fitted:
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
        shrink = fitted[0] < height or fitted[1] < width
        tensor = torch.nn.functional.interpolate(tensor, size=fitted, mode="bilinear", align_corners=False,
                                                 antialias=shrink)
        array = np.clip(tensor[0].numpy(), -1.0, 1.0)
    return _pad(array, size, -1.0).astype(np.float32)


def resize_labels(labels: np.ndarray, size: int, keep_aspect: bool = True) -> np.ndarray:
    """A ``(H, W)`` label map -> uint8 ``(S, S)`` by nearest neighbour (pixel centres), padded with 0,
    on the same grid as :func:`resize_image`'s output."""
    labels = np.asarray(labels)
    height, width = labels.shape
    fitted = _fit(height, width, size, keep_aspect)
    rows = np.minimum((np.arange(fitted[0]) + 0.5) * height / fitted[0], height - 1).astype(np.int64)
    cols = np.minimum((np.arange(fitted[1]) + 0.5) * width / fitted[1], width - 1).astype(np.int64)
    return _pad(labels[rows][:, cols], size, 0).astype(np.uint8)


def resized_spacing(spacing: list[float] | None, shape: tuple[int, int], size: int,
                    keep_aspect: bool) -> list[float]:
    """(row, column) mm of the resized pixels (pixel units for an image without spacing)."""
    spacing = spacing or [1.0, 1.0]
    fitted = _fit(shape[0], shape[1], size, keep_aspect)
    return [float(spacing[0]) * shape[0] / fitted[0], float(spacing[1]) * shape[1] / fitted[1]]


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """A 2D label map (PNG, TIFF, BMP; or a one-slice NIfTI, MetaImage, NRRD) as int64 ``(H, W)``.

    A colour label image counts a pixel as labelled 1 where any channel is nonzero; a grey one keeps
    its integer values.

    Raises:
        MedvolError: unreadable, not integer-valued, negative or not 2D (names the file).
    """
    from medvol.data.io import VOLUME_SUFFIXES, read_volume, volume_suffix

    path = Path(path)
    if volume_suffix(path) in VOLUME_SUFFIXES and volume_suffix(path) != ".dcm":
        array = np.asarray(read_volume(path).array)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        labels = array[None]
    else:
        labels, _ = read_image(path, colour="rgb")
        if not np.array_equal(labels[0], labels[1]) or not np.array_equal(labels[0], labels[2]):
            labels = (labels != 0).any(axis=0, keepdims=True).astype(np.float64)
    labels = np.asarray(labels)[0] if np.ndim(labels) == 3 else np.asarray(labels)
    if labels.ndim != 2:
        raise MedvolError(f"{path}: a label map must be 2D, got shape {labels.shape}")
    if not np.isfinite(labels).all() or (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() > 255:
        raise MedvolError(f"{path}: a label map holds values other than the integers 0..255")
    return labels.astype(np.int64)
