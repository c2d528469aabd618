"""Dataset layouts: which images (or volumes) a source holds, their masks, splits and classes.

Accepted (docs/data.md "2D images" has a command per layout):

- **a folder of images**, searched recursively; a mask is paired by name: ``X_mask``, ``X_seg``,
  ``X_label``, ``X_labels``, ``X-mask``, ``X-seg`` beside ``X`` (any image or volume format), or
  ``X`` (any suffix) in a sibling mask folder (``images/`` -> ``masks/``, ``labels/``,
  ``segmentations/``; ``imagesTr`` -> ``labelsTr``);
- **split folders**: first-level folders named ``train``/``training``/``imagesTr`` and
  ``val``/``validation``/``test``/``testing``/``imagesTs`` give the dataset's own split;
- **class folders** (``classes="folders"``): the first-level folders below the split folders (or
  the source) are classes 0, 1, ... in sorted order, ImageFolder style;
- **a MONAI Decathlon ``dataset.json``** or any datalist JSON of that shape: ``"training"``,
  ``"validation"``, ``"test"`` lists of ``{"image": ..., "label": ...}`` (or plain paths), relative
  to the JSON's folder (a folder holding ``dataset.json`` counts as the file); its ``"labels"``
  table names the mask classes. Accepted for volumes too (``medvol preprocess`` without ``--images``).

Every relative path read from a JSON is checked to stay inside the JSON's folder
(:func:`medvol.outputs.safe_relpath`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from medvol.data.discover import LABEL_SUFFIXES
from medvol.data.images import (DICOM_SUFFIXES, IMAGE_SUFFIXES, VOLUME_IMAGE_SUFFIXES, image_stem, image_suffix,
                                 looks_dicom)
from medvol.errors import MedvolError
from medvol.outputs import safe_relpath

#: Dataset split words (lower case) -> the cache's split.
SPLIT_WORDS = {"train": "train", "training": "train", "imagestr": "train",
               "val": "val", "valid": "val", "validation": "val", "test": "val", "testing": "val", "imagests": "val"}
#: Datalist keys -> the cache's split.
DATALIST_KEYS = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "val",
                 "testing": "val"}
#: Folders of masks beside a folder of images (lower case).
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "segmentations", "segmentation", "labelstr", "labelsts",
                     "annotations", "gt", "groundtruth")
IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "imagestr", "imagests")
CLASS_MODES = ("none", "folders")


@dataclasses.dataclass
class Item:
    """One source of a 2D cache: an image file (or a volume, whose slices are cut), and what the
    layout says about it."""

    source: Path
    labels: Path | None = None
    split: str | None = None          # "train" / "val" as the dataset defines it; None: dealt by seed
    dataset_split: str | None = None  # the dataset's own word ("test", "imagesTs", "validation")
    label: int | None = None          # class index from a class folder


@dataclasses.dataclass
class Layout:
    """What :func:`find_items` found: the items, how the split is defined, class and mask names."""

    items: list[Item]
    kind: str                                # "folder", "split folders", "datalist"
    classes: list[str] | None = None         # class folder names, label i = classes[i]
    mask_labels: list[str] | None = None     # names of mask ids 1.. from a dataset.json "labels"


def _is_image(path: Path, volumes: bool) -> bool:
    from medvol.data.io import volume_suffix

    if volumes:
        return bool(volume_suffix(path)) and volume_suffix(path) != ".dcm"
    if image_suffix(path) in IMAGE_SUFFIXES + DICOM_SUFFIXES or volume_suffix(path) in VOLUME_IMAGE_SUFFIXES:
        return True
    return not path.suffix and looks_dicom(path)  # DICOM files are often named without a suffix


def _mask_stem(stem: str) -> bool:
    low = stem.lower()
    return any(low.endswith(s) for s in LABEL_SUFFIXES) or low.startswith("segmentation")


def _in_mask_folder(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts[:-1]
    return any(p.lower() in MASK_FOLDER_NAMES for p in parts)


def _files(folder: Path, volumes: bool) -> list[Path]:
    found = []
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(dirpath) / name
            if not name.startswith(".") and _is_image(path, volumes):
                found.append(path)
    return found


def _by_stem(folder: Path, index: dict[Path, dict[str, list[Path]]]) -> dict[str, list[Path]]:
    """``{stem: files}`` of a folder, listed once per :func:`find_items` call."""
    if folder not in index:
        stems: dict[str, list[Path]] = {}
        try:
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    stems.setdefault(image_stem(path), []).append(path)
        except OSError:
            pass
        index[folder] = stems
    return index[folder]


def pair_mask(image: Path, root: Path, index: dict | None = None) -> Path | None:
    """The mask of ``image`` by name (module docstring), or None.

    Args:
        image: the image (or volume) file.
        root: the folder searched (a mask folder is looked for only below it).
        index: a cache of folder listings shared between calls.

    Raises:
        MedvolError: more than one file fits (names two of them).
    """
    index = {} if index is None else index
    stem = image_stem(image)
    wanted = [(image.parent, f"{stem}{suffix}") for suffix in LABEL_SUFFIXES]
    if stem.lower().startswith("volume-"):
        wanted.append((image.parent, f"segmentation-{stem[len('volume-'):]}"))
    if image.parent != root and image.parent.name.lower() in IMAGE_FOLDER_NAMES:
        base = image.parent.parent
        folders = [c for c in sorted(base.iterdir()) if c.is_dir() and c.name.lower() in MASK_FOLDER_NAMES]
        if image.parent.name.lower() in ("imagestr", "imagests"):
            paired = "labels" + image.parent.name.lower()[len("images"):]
            folders = [c for c in folders if c.name.lower() == paired]
        wanted += [(folder, stem) for folder in folders]
    found = [f for folder, name in wanted for f in _by_stem(folder, index).get(name, []) if f != image]
    found = list(dict.fromkeys(found))
    if len(found) > 1:
        raise MedvolError(f"{image}: {len(found)} masks fit it ({found[0]}, {found[1]}); keep one")
    return found[0] if found else None


def _folder_items(folder: Path, volumes: bool, classes: str, split: str | None, word: str | None,
                  class_names: list[str] | None) -> list[Item]:
    items = []
    index: dict[Path, dict[str, list[Path]]] = {}
    for path in _files(folder, volumes):
        if _mask_stem(image_stem(path)) or _in_mask_folder(path, folder):
            continue
        label = None
        if classes == "folders":
            relative = path.relative_to(folder).parts
            if len(relative) < 2:
                raise MedvolError(f"{path}: not inside a class folder (--classes folders expects "
                                  f"{folder}/<class>/<image>)")
            label = class_names.index(relative[0])
        items.append(Item(source=path, labels=pair_mask(path, folder, index), split=split, dataset_split=word,
                          label=label))
    return items


def _class_names(folders: list[Path]) -> list[str]:
    names = sorted({c.name for f in folders for c in f.iterdir() if c.is_dir() and not c.name.startswith(".")})
    if len(names) < 2:
        raise MedvolError(f"{folders[0]}: --classes folders needs at least two class folders, found "
                          f"{len(names)} ({', '.join(names) or 'none'})")
    return names


def find_items(src: str | os.PathLike, *, volumes: bool = False, classes: str = "none") -> Layout:
    """The items of ``src``: a folder of images (split and class folders too), or a datalist JSON.

    Args:
        src: a folder, an image file, or a ``.json`` datalist (``dataset.json``).
        volumes: look for volumes (NIfTI, MetaImage, NRRD) instead of 2D images.
        classes: ``"folders"``: class folders give each item's class (module docstring).

    Raises:
        MedvolError: a missing source, no images, a path in a JSON leading outside its folder, a
            malformed JSON, a mask that fits twice (one line naming the culprit).
    """
    if classes not in CLASS_MODES:
        raise MedvolError(f"--classes {classes!r}: choose one of {', '.join(CLASS_MODES)}")
    src = Path(src)
    if src.is_dir() and (src / "dataset.json").is_file():
        src = src / "dataset.json"
    if not src.exists():
        raise MedvolError(f"{src}: no such file or folder (--src)")
    if src.is_file() and src.suffix.lower() == ".json":
        if classes != "none":
            raise MedvolError("--classes folders: a datalist names its files; class folders apply to folders only")
        return read_datalist(src, volumes=volumes)
    if src.is_file():
        if not _is_image(src, volumes):
            raise MedvolError(f"{src}: not an image file medvol reads")
        return Layout(items=[Item(source=src, labels=pair_mask(src, src.parent))], kind="folder")
    children = sorted(c for c in src.iterdir() if c.is_dir() and not c.name.startswith("."))
    split_folders = [c for c in children if c.name.lower() in SPLIT_WORDS]
    if split_folders:
        names = _class_names(split_folders) if classes == "folders" else None
        items = []
        for folder in split_folders:
            items += _folder_items(folder, volumes, classes, SPLIT_WORDS[folder.name.lower()], folder.name, names)
        kind = "split folders"
    else:
        names = _class_names([src]) if classes == "folders" else None
        items = _folder_items(src, volumes, classes, None, None, names)
        kind = "folder"
    if not items:
        suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES + VOLUME_IMAGE_SUFFIXES
        what = "volumes" if volumes else f"images ({', '.join(suffixes)})"
        raise MedvolError(f"{src}: holds no {what}")
    return Layout(items=items, kind=kind, classes=names)


def _json_path(root: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str):
        raise MedvolError(f"{where}: {value!r} is not a path")
    rel = value[2:] if value.startswith("./") else value
    try:
        return safe_relpath(root, rel, where)
    except MedvolError:
        raise MedvolError(f"{where} {value!r}: not a path inside {root}; refusing to read outside the "
                          "datalist's folder") from None


def read_datalist(path: str | os.PathLike, *, volumes: bool = False) -> Layout:
    """The items of a MONAI Decathlon ``dataset.json`` or datalist (module docstring).

    Raises:
        MedvolError: unreadable or malformed JSON, no lists, a path outside the JSON's folder, or a
            listed file that is missing (names the JSON and the key).
    """
    path = Path(path)
    root = path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable datalist ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), list) for k in DATALIST_KEYS):
        raise MedvolError(f"{path}: not a datalist (needs a list under one of {', '.join(DATALIST_KEYS)})")
    items = []
    for key, split in DATALIST_KEYS.items():
        for number, record in enumerate(data.get(key) or []):
            where = f"{path}: {key}[{number}]"
            image, labels = (record.get("image"), record.get("label")) if isinstance(record, dict) else (record, None)
            source = _json_path(root, image, f"{where} image")
            mask = _json_path(root, labels, f"{where} label") if labels is not None else None
            for file in (source, mask):
                if file is not None and not file.is_file():
                    raise MedvolError(f"{where}: {file} is missing")
            if not _is_image(source, volumes):
                what = "a volume (NIfTI, MetaImage, NRRD)" if volumes else "an image file"
                raise MedvolError(f"{where}: {source} is not {what}")
            items.append(Item(source=source, labels=mask, split=split, dataset_split=key))
    if not items:
        raise MedvolError(f"{path}: the datalist lists no files")
    names = None
    table = data.get("labels")
    if isinstance(table, dict):
        try:
            ids = sorted((int(k), str(v)) for k, v in table.items())
        except (TypeError, ValueError):
            raise MedvolError(f"{path}: \"labels\" must map integer ids to names") from None
        names = [name for i, name in ids if i > 0]
        if [i for i, _ in ids if i > 0] != list(range(1, len(names) + 1)):
            names = None  # ids with gaps: named label_<i> instead
    return Layout(items=items, kind="datalist", mask_labels=names)
