"""Finding the volumes of a dataset: a file, a folder (recursive), a glob, or a text list.

Dataset layouts as shipped work unchanged:
    LUNA16: ``subset0/ ... subset9/`` with ``<seriesuid>.mhd`` + ``.raw``; the lung masks in
        ``seg-lungs-LUNA16/`` are not images and are skipped.
    LiTS: ``volume-<n>.nii`` images beside ``segmentation-<n>.nii`` labels; only volumes are images.
    DICOM: every folder holding DICOM slices is one series (one source).
Masks written beside images (``*_mask.*``, ``*_seg.*``, ``*_label.*``) are skipped in folders and
globs; a file named explicitly (directly or in a list) is always taken. :func:`find_labels` finds the
label map of an image (``medvol preprocess`` caches it with the image).

Only regular files are read: a named pipe, socket or device (given, in a list, or found in a
searched folder with a volume's suffix or inside a DICOM series folder) is refused with a one-line
error naming it, before anything reads it (reading a FIFO blocks forever). A searched folder's
other non-regular files are not volumes and are passed over, as any other file is.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import os
from pathlib import Path

from medvol.data.io import check_regular, is_dicom_file, regular_file, volume_stem, volume_suffix
from medvol.errors import MedvolError

#: Names (lower case, fnmatch) of label/mask files that are not images.
MASK_PATTERNS = ("segmentation-*", "segmentation_*", "*_mask", "*-mask", "*_seg", "*-seg",
                 "*_label", "*_labels", "*_labelmap")
#: Folders whose contents are masks (LUNA16 lung segmentations).
MASK_FOLDERS = ("seg-lungs-*", "seg_lungs*")
#: Label-map names beside an image ``<stem>.<ext>``, in the order they are looked for.
LABEL_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "-mask", "-seg")
#: Suffixes a label map may have (any readable format, whatever the image's).
LABEL_FORMATS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: How far up from an image :func:`find_labels` looks for a LUNA16-style mask folder.
MASK_FOLDER_LEVELS = 2


def _is_mask(path: Path) -> bool:
    stem = volume_stem(path).lower()
    if any(fnmatch.fnmatch(stem, pattern) for pattern in MASK_PATTERNS):
        return True
    return any(fnmatch.fnmatch(part.lower(), pattern) for part in path.parent.parts for pattern in MASK_FOLDERS)


def _scan_folder(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_path = Path(root)
        dicom_here = False
        for name in sorted(files):
            if name.startswith("."):
                continue
            file = root_path / name
            suffix = volume_suffix(file)
            if suffix:  # masks too: find_labels would pass a pipe over silently
                regular_file(file)
            if suffix == ".dcm" or (not suffix and not Path(name).suffix and is_dicom_file(file)):
                dicom_here = True
            elif suffix and not _is_mask(file):
                found.append(file)
        if dicom_here and not _is_mask(root_path / "x"):
            found.append(check_regular(root_path))
    return found


def discover(source: str | os.PathLike | list) -> list[Path]:
    """List the volumes named by ``source``.

    Args:
        source: a volume file, a DICOM folder, a folder searched recursively, a glob pattern
            (``**`` allowed), a ``.txt`` file listing one path per line (``#`` comments, paths
            relative to the list's folder), or a list of any of these.

    Returns:
        Sorted, de-duplicated paths; a DICOM series is its folder.

    Raises:
        MedvolError: a missing path, a glob matching nothing, a folder without volumes, or a list
            naming a missing file, or a file that is not regular (module docstring): the message
            names it.
    """
    if isinstance(source, (list, tuple)):
        found = [path for item in source for path in discover(item)]
        if not found:
            raise MedvolError("no volumes given")
        return sorted(dict.fromkeys(found))
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists():
        if any(ch in text for ch in "*?["):
            matches = [Path(m) for m in sorted(globlib.glob(os.path.expanduser(text), recursive=True))]
            found = []
            for match in matches:
                if match.is_dir():
                    found.extend(_scan_folder(match))
                elif volume_suffix(match) == ".dcm" or (not volume_suffix(match) and is_dicom_file(match)):
                    found.append(check_regular(match.parent))  # DICOM slices stand for their series folder
                elif volume_suffix(match) and not _is_mask(match):
                    found.append(check_regular(match))
            if not found:
                raise MedvolError(f"{text}: no volumes match this pattern")
            return sorted(dict.fromkeys(found))
        raise MedvolError(f"{text}: no such file or folder")
    if not path.is_dir():
        regular_file(path)  # before a list is read or a file taken
    if path.is_dir():
        found = _scan_folder(path)
        if not found:
            raise MedvolError(
                f"{path}: no volumes found in this folder (looked for .nii, .nii.gz, .mhd, .mha, "
                f".nrrd and DICOM series)")
        return sorted(dict.fromkeys(found))
    if path.suffix.lower() == ".txt":
        return _read_list(path)
    if not volume_suffix(path) and not is_dicom_file(path):
        raise MedvolError(f"{path}: not a volume (expected .nii, .nii.gz, .mhd, .mha, .nrrd, .dcm or a .txt list)")
    return [check_regular(path)]


def _read_list(list_file: Path) -> list[Path]:
    found: list[Path] = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        if not entry.is_absolute():
            entry = list_file.parent / entry
        if not entry.exists():
            raise MedvolError(f"{list_file}:{number}: {line}: no such file or folder")
        found.extend(_scan_folder(entry) if entry.is_dir() else [check_regular(entry)])
    if not found:
        raise MedvolError(f"{list_file}: the list names no volumes")
    return sorted(dict.fromkeys(found))


def find_labels(image: str | os.PathLike) -> Path | None:
    """The label map stored beside an image, or None.

    Looked for, in every format of :data:`LABEL_FORMATS`:

    - beside the image: ``<stem>_mask``, ``_seg``, ``_label``, ``_labels``, ``-mask``, ``-seg``
      (a DICOM series folder's stem is its folder name, so ``CT_seg.nii.gz`` beside ``CT/``);
    - LiTS: ``segmentation-<n>`` for ``volume-<n>``;
    - LUNA16: ``<uid>`` in a mask folder (:data:`MASK_FOLDERS`, e.g. ``seg-lungs-LUNA16/``) in the
      image's folder or up to :data:`MASK_FOLDER_LEVELS` folders above it, for ``subset*/<uid>.mhd``.

    Raises:
        MedvolError: more than one label map fits the image (names two of them): which one is
            meant cannot be guessed.
    """
    image = Path(image)
    stem = volume_stem(image)
    names = [stem + suffix for suffix in LABEL_SUFFIXES]
    if stem.lower().startswith("volume-"):
        names.append("segmentation-" + stem[len("volume-"):])
    folders = [image.parent]
    found = [image.parent / (name + ext) for name in names for ext in LABEL_FORMATS]
    for parent in [image.parent, *image.parent.parents][: MASK_FOLDER_LEVELS + 1]:
        try:
            children = sorted(c for c in parent.iterdir() if c.is_dir())
        except OSError:
            continue
        folders += [c for c in children if any(fnmatch.fnmatch(c.name.lower(), p) for p in MASK_FOLDERS)]
    found += [folder / (stem + ext) for folder in folders[1:] for ext in LABEL_FORMATS]
    found = [f for f in dict.fromkeys(found) if f.is_file() and f.resolve() != image.resolve()]
    if len(found) > 1:
        raise MedvolError(f"{image}: {len(found)} label maps fit it ({found[0]}, {found[1]}); keep one, "
                          "or preprocess without labels (--no-labels)")
    return found[0] if found else None
