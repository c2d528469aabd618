"""Reading and writing medical volumes with their geometry.

Formats: NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mhd`` + ``.raw`` as LUNA16 ships it, ``.mha``),
NRRD (``.nrrd``, ``.nhdr``), DICOM series folders and single (multi-frame) DICOM files.

Readers (``reader=``):
    ``"sitk"``: SimpleITK, every format; DICOM rescale slope/intercept is applied by GDCM, so CT
        comes out in Hounsfield units (no pydicom involved).
    ``"nibabel"``: NIfTI only. nibabel is the better NIfTI reader: it refuses a truncated file
        (ITK fills the missing voxels with zeros), keeps NaN voxels visible (ITK's NIfTI reader
        turns them into 0, hiding corrupt data), accepts a sheared sform that ITK refuses, and
        applies ``scl_slope``/``scl_inter``. Its RAS+ affine is converted to ITK's LPS.
    ``"itk"``: ITK's Python wrapping, every format.
    ``"auto"``: nibabel for NIfTI, SimpleITK for everything else.

Geometry follows ITK: the array is (D, H, W) = (z, y, x); ``spacing`` is given in the same
(z, y, x) order as the array axes; ``origin`` is the physical (x, y, z) LPS position of voxel 0 in
mm; ``direction`` holds the 3x3 direction cosines row-major, column j being the physical direction
of index axis j (x, y, z).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np

from medvol.errors import MedvolError
from medvol.utils import checked_write, fsync_file, optional_import, write_failure

log = logging.getLogger(__name__)

#: File suffixes read as volumes (longest first, so ``.nii.gz`` wins over ``.gz``).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr", ".dcm")
WRITE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd")
READERS = ("auto", "sitk", "nibabel", "itk")

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclasses.dataclass
class Volume:
    """A 3D scalar image with its physical geometry.

    Attributes:
        array: float32 array of shape (D, H, W) = (z, y, x).
        spacing: voxel size in mm, (z, y, x), matching the array axes.
        origin: physical (x, y, z) LPS position of voxel (0, 0, 0) in mm.
        direction: 9 direction cosines, row-major 3x3 matrix as ITK stores it.
        path: the file or folder it was read from, if any.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    path: str | None = None

    @property
    def name(self) -> str:
        """The file or folder name, for messages."""
        return self.path if self.path is not None else "<in-memory volume>"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)


def volume_suffix(path: str | os.PathLike) -> str:
    """The recognised suffix of ``path`` (``".nii.gz"``, ``".mhd"``, ...) or ``""``."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def volume_stem(path: str | os.PathLike) -> str:
    """The name of ``path`` without its volume suffix (``"a.nii.gz"`` -> ``"a"``)."""
    name = Path(path).name
    suffix = volume_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else name


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` file or a file carrying the DICOM preamble magic ``DICM``."""
    if path.suffix.lower() == ".dcm":
        return True
    if not path.is_file():  # opening a FIFO to look would block
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a location line; the last informative line says what went wrong.
    for line in reversed(lines):
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__


def _check_volume(array: np.ndarray, name: str, components: int = 1) -> None:
    if components != 1:
        raise MedvolError(f"{name}: has {components} components per voxel; a scalar volume is needed")
    if array.ndim != 3:
        raise MedvolError(f"{name}: is {array.ndim}D (shape {tuple(array.shape)}); a 3D volume is needed")
    if min(array.shape) < 2:
        raise MedvolError(
            f"{name}: is a 2D image (shape {tuple(array.shape)}); a 3D volume is needed")


def _from_sitk(image, name: str) -> Volume:
    sitk = optional_import("SimpleITK", "reading and writing volume files")

    components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() != 3:
        shape = tuple(reversed(image.GetSize()))
        raise MedvolError(f"{name}: is {image.GetDimension()}D (shape {shape}); a 3D volume is needed")
    if components == 1 and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    _check_volume(array, name, components)
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
        path=name,
    )


def _to_sitk(volume: Volume, dtype=None):
    sitk = optional_import("SimpleITK", "reading and writing volume files")

    array = np.asarray(volume.array)
    if dtype is not None:
        array = array.astype(dtype)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(volume.spacing)))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction))
    return image


def _dicom_series_files(folder: Path) -> list[str]:
    """Files of the largest DICOM series in ``folder`` (slice order from GDCM)."""
    sitk = optional_import("SimpleITK", "reading and writing volume files")

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise MedvolError(f"{folder}: no DICOM series found in this folder")
    series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids]
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the largest", folder, len(series))
    return list(max(series, key=len))


def _read_sitk(path: Path) -> Volume:
    sitk = optional_import("SimpleITK", "reading and writing volume files")

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_dicom_series_files(path))
        reader.SetOutputPixelType(sitk.sitkFloat32)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return _from_sitk(image, str(path))


def _read_nibabel(path: Path) -> Volume:
    nib = optional_import("nibabel", "reader 'nibabel'")

    if path.is_dir() or volume_suffix(path) not in (".nii", ".nii.gz"):
        raise MedvolError(f"{path}: reader 'nibabel' reads only NIfTI (.nii, .nii.gz) files")
    image = nib.load(str(path))
    # get_fdata applies scl_slope/scl_inter; float32 keeps memory at half of float64.
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    _check_volume(data, str(path))
    affine = np.asarray(image.affine, dtype=np.float64)
    # nibabel's affine maps (i, j, k) to RAS+; ITK works in LPS, i.e. x and y negated.
    linear = _LPS_FROM_RAS @ affine[:3, :3]
    origin = _LPS_FROM_RAS @ affine[:3, 3]
    spacing_xyz = np.linalg.norm(linear, axis=0)
    direction = linear / spacing_xyz
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.float32)
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in spacing_xyz[::-1]),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction.ravel()),
        path=str(path),
    )


def _read_itk(path: Path) -> Volume:
    itk = optional_import("itk", "reader 'itk'")

    image = itk.imread(str(path), itk.F)
    array = np.asarray(itk.array_from_image(image))
    name = str(path)
    if array.ndim != 3:
        raise MedvolError(f"{name}: is {array.ndim}D (shape {array.shape}); a 3D volume is needed")
    _check_volume(array, name)
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=tuple(float(s) for s in reversed(tuple(image.GetSpacing()))),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in np.asarray(itk.array_from_matrix(image.GetDirection())).ravel()),
        path=name,
    )


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header declares.

    ITK reads a truncated NIfTI without complaint and fills the missing voxels with zeros, so the
    length is checked here (for ``.nii.gz`` by streaming through the decompressor).
    """
    import gzip

    nib = optional_import("nibabel", "checking a NIfTI file")

    header = nib.load(str(path)).header
    expected = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if volume_suffix(path) == ".nii":
        actual = path.stat().st_size
    else:
        actual = 0
        with gzip.open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                actual += len(block)
    if actual < expected:
        raise MedvolError(f"{path}: cannot read volume (truncated: {actual} of {expected} bytes)")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def read_volume(path: str | os.PathLike, reader: str = "auto") -> Volume:
    """Read a 3D volume with its spacing, origin and direction.

    Args:
        path: a NIfTI, MetaImage, NRRD or DICOM file, or a folder holding a DICOM series.
        reader: ``"auto"`` | ``"sitk"`` | ``"nibabel"`` | ``"itk"`` (see the module docstring).

    Returns:
        A :class:`Volume` whose array is float32 (D, H, W); CT comes out in HU.

    Raises:
        MedvolError: missing path, unknown reader or format, unreadable/corrupt file, or an image
            that is not a 3D scalar volume. The message names the file.

    Example:
        >>> vol = read_volume("subset0/1.3.6.1.4.1.14519.mhd")   # doctest: +SKIP
        >>> vol.array.shape, vol.spacing                          # doctest: +SKIP
        ((121, 512, 512), (2.5, 0.703125, 0.703125))
    """
    path = Path(path)
    if reader not in READERS:
        raise MedvolError(f"unknown reader {reader!r}: choose one of {', '.join(READERS)}")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise MedvolError(f"{path}: no such file or folder") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # Opening a FIFO blocks until something writes to it; a device file never ends.
        raise MedvolError(f"{path}: not a regular file or folder ({_file_kind(mode)}); "
                          "a volume must be a file or a DICOM folder")
    if path.is_file() and not volume_suffix(path) and not is_dicom_file(path):
        raise MedvolError(
            f"{path}: unrecognised volume format (expected {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")
    if path.is_file() and path.stat().st_size == 0:
        raise MedvolError(f"{path}: file is empty")
    is_nifti = path.is_file() and volume_suffix(path) in (".nii", ".nii.gz")
    try:
        if reader == "nibabel" or (reader == "auto" and is_nifti):
            return _read_nibabel(path)
        if is_nifti:
            _check_nifti_complete(path)
        if reader == "itk":
            return _read_itk(path)
        return _read_sitk(path)
    except MedvolError:
        raise
    except Exception as error:  # corrupt, truncated or unsupported content: ITK/nibabel errors
        raise MedvolError(f"{path}: cannot read volume ({_one_line(error)})") from error


def write_volume(volume: Volume, path: str | os.PathLike, *, dtype=None, compress: bool | None = None,
                 notes: str | None = None, header: dict[str, str] | None = None) -> Path:
    """Write ``volume`` with its spacing, origin and direction, atomically.

    The format follows the suffix: ``.nii``/``.nii.gz`` (NIfTI), ``.mhd`` (header + ``.raw``),
    ``.mha``, ``.nrrd``. The file is written under a temporary name, checked, flushed to the
    disk and only then renamed: ITK's NIfTI writer meets a full disk with a note on stderr and a
    short file, so a NIfTI file is read back against its header before it counts as written. A
    failure leaves nothing at ``path`` and no temporary.

    Args:
        volume: the volume; its array is (z, y, x).
        path: the destination.
        dtype: cast the voxels before writing (e.g. ``np.int16`` for CT in HU); None keeps them.
        compress: compress the voxel data; None compresses ``.nii.gz``, ``.nrrd`` and ``.mha``.
        notes: a short description stored in the file (NIfTI ``descrip``, 79 characters at most).
        header: more free-text header fields, ``{key: value}``: MetaImage and NRRD store any key;
            ITK's NIfTI writer only the NIfTI fields it knows (``aux_file``, 23 characters).

    Returns:
        The path written.

    Raises:
        MedvolError: a format or array that cannot be written, or a failed write (a full disk),
            naming ``path``.
    """
    sitk = optional_import("SimpleITK", "reading and writing volume files")

    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise MedvolError(f"{path}: cannot write this format (use one of {', '.join(WRITE_SUFFIXES)})")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise MedvolError(f"{path}: expected a 3D array to write, got shape {array.shape}")
    image = _to_sitk(volume, dtype)
    if notes is not None:
        image.SetMetaData("ITK_FileNotes", notes[:79])  # ITK's NIfTI writer puts it in descrip
    for key, value in (header or {}).items():
        image.SetMetaData(str(key), str(value))
    if compress is None:
        compress = suffix in (".nii.gz", ".nrrd", ".mha")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mhd":
        # The header names its .raw file, so both are written under their final names in a
        # private folder and moved into place, the header last: readers find it only when whole.
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.tmp-", dir=path.parent))
            sitk.WriteImage(image, str(tmp / path.name), bool(compress))
            files = sorted(tmp.iterdir(), key=lambda p: p.suffix == ".mhd")
            for data_file in files:
                fsync_file(data_file)
            for data_file in files:
                os.replace(data_file, path.parent / data_file.name)
        except (OSError, RuntimeError) as error:
            raise MedvolError(f"cannot write volume {path}: {write_failure(error, path.parent)}") from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return path
    with checked_write(path, "volume", library_errors=(RuntimeError,)) as tmp:
        sitk.WriteImage(image, str(tmp), bool(compress))
        if suffix in (".nii", ".nii.gz"):
            _check_written_nifti(tmp)
    return path


def _check_written_nifti(path: Path) -> None:
    """Raise ``OSError`` unless the NIfTI file just written holds every voxel its header declares.

    The MetaImage and NRRD writers raise on a short write; ITK's NIfTI writer only prints one.
    """
    try:
        _check_nifti_complete(path)
    except Exception as error:  # noqa: BLE001 - short, empty or garbled: the write did not succeed
        counts = re.search(r"truncated: (\d+ of \d+ bytes)", str(error))
        detail = counts.group(1) if counts else _one_line(error)
        raise OSError(f"short write, the file does not read back ({detail})") from None


def source_files(path: str | os.PathLike) -> list[Path]:
    """Every file that makes up the volume at ``path`` (header and data files, DICOM slices)."""
    path = Path(path)
    if path.is_dir():
        return sorted(Path(f) for f in _dicom_series_files(path))
    files = [path]
    if volume_suffix(path) in (".mhd", ".nhdr"):
        key = "elementdatafile" if volume_suffix(path) == ".mhd" else "data file"
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, value = line.partition("=" if key == "elementdatafile" else ":")
            value = value.strip()
            if name.strip().lower() == key and value and value.upper() not in ("LOCAL", "LIST"):
                data = path.parent / value
                if data.exists():
                    files.append(data)
    return files


def regular_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file (links followed) or missing (its reader names it then).

    A named pipe, socket or device is refused: opening or reading one blocks forever (a FIFO
    with no writer) or never ends, and would do so while a cache lock is held.

    Raises:
        MedvolError: one line naming ``path`` and what it is.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return Path(path)
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return Path(path)
    raise MedvolError(f"{path}: not a regular file or folder ({_file_kind(mode)}); a volume must be a file or "
                      "a DICOM folder")


def check_regular(source: str | os.PathLike) -> Path:
    """``source`` (a volume file or DICOM folder) if every file it is read from is regular.

    A folder's every entry is checked (GDCM opens them all to find the series); an ``.mhd`` or
    ``.nhdr`` header's data file too.

    Raises:
        MedvolError: as :func:`regular_file`, naming the first file that is not regular.
    """
    source = Path(source)
    if source.is_dir():
        for entry in sorted(os.scandir(source), key=lambda e: e.name):
            if not entry.is_dir():
                regular_file(entry.path)
        return source
    regular_file(source)
    if volume_suffix(source) in (".mhd", ".nhdr") and source.is_file():
        for file in source_files(source)[1:]:
            regular_file(file)
    return source


def checksum(path: str | os.PathLike) -> str:
    """SHA-256 over every file of the volume at ``path`` (names and contents).

    Raises:
        MedvolError: a file of the volume is not a regular file (:func:`regular_file`).
    """
    import hashlib

    digest = hashlib.sha256()
    for file in source_files(path):
        regular_file(file)
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
