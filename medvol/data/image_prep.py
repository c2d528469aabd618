"""One source of a 2D cache made into pending arrays: :class:`ImageParams` and the worker.

:mod:`medvol.data.image_cache` describes the cache and runs :func:`_process_source` once per source
file (in worker processes with ``--workers``): read the image or the volume's axial slices
(:mod:`medvol.data.images`), select by class and fraction, resize, and write each kept image and
mask under a hidden pending name that the cache's commit renames into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import medvol
from medvol.data.cache_store import LABELS_SUFFIX, PENDING, VOLUME_DIR, _reason
from medvol.data.images import COLOURS, SCALES
from medvol.errors import MedvolError

IMAGE_PIPELINE_VERSION = 1
SOURCES = ("images", "slices")
KEEP = ("all", "with", "without")


@dataclasses.dataclass(frozen=True)
class ImageParams:
    """How files become a 2D cache (module docstring); every field is recorded in the manifest.

    Attributes:
        size: side S of the cached images (4 .. 2048).
        source: ``"images"`` (2D files) or ``"slices"`` (axial slices of volumes).
        colour: ``"grey"`` or ``"rgb"`` (images; slices are grey).
        scale: images: ``"auto"``, ``"range"``, ``"minmax"`` or ``"window"`` (:mod:`medvol.data.images`).
        window: LOW,HIGH of ``scale="window"``, and the HU window of CT slices.
        modality: slices: ``"ct"`` (``window``) or ``"mr"`` (``percentiles`` of each volume).
        percentiles: MR slices: LOW,HIGH percentiles mapped to -1, 1.
        keep_aspect: pad to a square (with -1) instead of stretching.
        classes: ``"folders"``: class folders give each image's class.
        select_class: a mask id C: class label 1 where the mask has C, else 0; None: no selection.
        keep: ``"all"``, or only the images ``"with"`` / ``"without"`` C.
        fraction: keep each image with this probability (1: all).
        fraction_seed: the seed of that draw.
    """

    size: int
    source: str = "images"
    colour: str = "grey"
    scale: str = "auto"
    window: tuple[float, float] | None = None
    modality: str = "ct"
    percentiles: tuple[float, float] = (0.5, 99.5)
    keep_aspect: bool = True
    classes: str = "none"
    select_class: int | None = None
    keep: str = "all"
    fraction: float = 1.0
    fraction_seed: int = 0

    def __post_init__(self):
        from medvol.data.layouts import CLASS_MODES

        def bad(option: str, value: Any, need: str) -> MedvolError:
            return MedvolError(f"{option} {value!r}: {need}")

        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 4 <= self.size <= 2048:
            raise bad("--size", self.size, "expected an integer 4..2048 (the side of the cached images)")
        for option, value, choices in (("--images", self.source, SOURCES), ("--colour", self.colour, COLOURS),
                                       ("--scale", self.scale, SCALES), ("--modality", self.modality, ("ct", "mr")),
                                       ("--classes", self.classes, CLASS_MODES), ("--keep", self.keep, KEEP)):
            if value not in choices:
                raise bad(option, value, f"choose one of {', '.join(choices)}")
        if self.window is not None:
            low, high = self.window
            if not (np.isfinite([low, high]).all() and low < high):
                raise bad("--window", self.window, "expected LOW,HIGH with LOW < HIGH")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise bad("--percentiles", self.percentiles, "expected 0 <= LOW < HIGH <= 100")
        if self.scale == "window" and self.window is None:
            raise MedvolError("--scale window needs --window LOW,HIGH")
        if self.source == "slices" and self.modality == "ct" and self.window is None:
            raise MedvolError("CT slices need --window LOW,HIGH (HU)")
        if self.select_class is not None and (isinstance(self.select_class, bool)
                                              or not isinstance(self.select_class, int) or self.select_class < 1):
            raise bad("--select-class", self.select_class, "expected a mask label id >= 1")
        if self.keep != "all" and self.select_class is None:
            raise MedvolError(f"--keep {self.keep}: needs --select-class C (the class that decides)")
        if self.select_class is not None and self.classes != "none":
            raise MedvolError("--select-class labels images by their masks, --classes folders by their folders: "
                              "give one of them")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            raise bad("--fraction", self.fraction, "expected 0 < f <= 1")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["window"] = list(self.window) if self.window is not None else None
        out["percentiles"] = list(self.percentiles)
        out["fraction"] = float(self.fraction)
        out["dims"] = 2
        out["pipeline"] = IMAGE_PIPELINE_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageParams":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key in ("window", "percentiles"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def _keep_by_fraction(name: str, params: ImageParams) -> bool:
    if params.fraction >= 1:
        return True
    digest = hashlib.sha256(f"{params.fraction_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < params.fraction


def _source_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _write_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` to ``path`` (an open file: ``np.save`` would append ``.npy``)."""
    with open(path, "wb") as handle:
        np.save(handle, array)


class _WriteFailed(Exception):
    """A pending array could not be written (a full disk): it would fail for every file, so the run stops."""


def _write_pending(path: Path, array: np.ndarray, final: str) -> None:
    try:
        _write_array(path, array)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise _WriteFailed(f"{final}: cannot write ({_reason(error)})") from None


def _pending(volume_dir: Path, name: str, labels: bool = False) -> Path:
    return volume_dir / f".{name}{LABELS_SUFFIX if labels else ''}{PENDING}"


def _images_of(source: Path, labels_path: Path | None, params: ImageParams):
    """Yield ``(slice index or None, image (C, H, W) in [-1, 1], labels (H, W) or None, info)``."""
    from medvol.data.images import read_image, read_label_image, scale_image
    from medvol.data.preprocess import window_to_unit

    if params.source == "images":
        array, info = read_image(source, params.colour)
        labels = read_label_image(labels_path) if labels_path is not None else None
        if labels is not None and labels.shape != array.shape[1:]:
            raise MedvolError(f"{labels_path}: mask of shape {labels.shape}, its image {source} is "
                              f"{array.shape[1:]}")
        window = params.window if params.scale == "window" else None
        scaled, interval = scale_image(array, info, params.scale, window, name=str(source))
        yield None, scaled, labels, dict(info, scaled_from=interval)
        return
    volume, labels = _oriented(source, labels_path)
    array = np.asarray(volume.array, dtype=np.float64)
    if params.modality == "ct":
        low, high = params.window
    else:
        low, high = (float(v) for v in np.percentile(array, params.percentiles))
    info = {"format": "volume", "spacing": [float(volume.spacing[1]), float(volume.spacing[2])],
            "volume_spacing": [float(s) for s in volume.spacing], "scaled_from": [low, high]}
    for k in range(array.shape[0]):
        plane = array[k][None]
        yield k, window_to_unit(plane, low, high).astype(np.float32), None if labels is None else labels[k], info


def _oriented(source: Path, labels_path: Path | None):
    """The volume (and label map) read and reoriented to LPS, as numpy (z, y, x)."""
    from medvol.data.io import Volume, _to_sitk, read_volume
    from medvol.utils import optional_import

    sitk = optional_import("SimpleITK", "cutting slices of volumes")
    volume = read_volume(source)
    if not np.isfinite(volume.array).all():
        raise MedvolError(f"{source}: holds NaN or infinite values")
    image = sitk.DICOMOrient(_to_sitk(volume), "LPS")
    oriented = Volume(array=sitk.GetArrayFromImage(image), spacing=tuple(reversed(image.GetSpacing())),
                      origin=image.GetOrigin(), direction=image.GetDirection())
    labels = None
    if labels_path is not None:
        label_volume = read_volume(labels_path)
        if tuple(label_volume.array.shape) != tuple(volume.array.shape):
            raise MedvolError(f"{labels_path}: label map of shape {tuple(label_volume.array.shape)}, its volume "
                              f"{source} is {tuple(volume.array.shape)}")
        values = np.asarray(label_volume.array)
        if not np.isfinite(values).all() or (values != np.round(values)).any() or values.min() < 0 \
                or values.max() > 255:
            raise MedvolError(f"{labels_path}: a label map holds values other than the integers 0..255")
        label_volume = dataclasses.replace(volume, array=values.astype(np.uint8))
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(_to_sitk(label_volume), "LPS")).astype(np.int64)
    return oriented, labels


def _process_source(name: str, source: str, labels_source: str | None, params_dict: dict,
                    volume_dir: str, label: int | None) -> dict[str, Any]:
    """Worker: every image of one source to pending arrays. ``{"entries": [...], "dropped": n}``
    or ``{"error": ...}`` (``"fatal"`` for a failed write)."""
    from medvol.data.images import resize_image, resize_labels, resized_spacing
    from medvol.data.io import checksum

    params = ImageParams.from_dict(params_dict)
    folder = Path(volume_dir)
    path = Path(source)
    labels_path = Path(labels_source) if labels_source is not None else None
    written: list[Path] = []
    try:
        size, mtime = _source_stat(path)
        digest = checksum(path)
        entries, dropped = [], 0
        for k, image, labels, info in _images_of(path, labels_path, params):
            entry_name = name if k is None else f"{name}_z{k:04d}"
            has_class = None
            if params.select_class is not None:
                if labels is None:
                    raise MedvolError(f"{source}: has no mask, and --select-class {params.select_class} reads masks")
                has_class = bool((labels == params.select_class).any())
                if (params.keep == "with" and not has_class) or (params.keep == "without" and has_class):
                    dropped += 1
                    continue
            if not _keep_by_fraction(entry_name, params):
                dropped += 1
                continue
            array = resize_image(image, params.size, params.keep_aspect)
            entry = {"name": entry_name, "file": f"{VOLUME_DIR}/{entry_name}.npy", "source": str(path),
                     "checksum": digest, "source_size": size, "source_mtime_ns": mtime,
                     "original_shape": [int(n) for n in image.shape[1:]],
                     "original_spacing": info.get("spacing"),
                     "spacing": resized_spacing(info.get("spacing"), image.shape[1:], params.size, params.keep_aspect),
                     "scaled_from": [float(v) for v in info["scaled_from"]],
                     "channels": int(array.shape[0]),
                     "label": int(label if label is not None else (has_class or 0)),
                     "medvol_version": medvol.__version__}
            if info.get("spacing") is None:
                entry["spacing_unit"] = "pixel"
            if k is not None:
                entry["slice"] = int(k)
                entry["volume_spacing"] = info["volume_spacing"]
            for key in ("photometric", "voi", "modality"):
                if info.get(key):
                    entry[key] = info[key]
            pending = _pending(folder, entry_name)
            written.append(pending)
            _write_pending(pending, array, str(folder / f"{entry_name}.npy"))
            if labels is not None:
                entry["labels"] = f"{VOLUME_DIR}/{entry_name}{LABELS_SUFFIX}.npy"
                entry["label_values"] = [int(v) for v in np.unique(labels)]
                pending_labels = _pending(folder, entry_name, labels=True)
                written.append(pending_labels)
                _write_pending(pending_labels, resize_labels(labels, params.size, params.keep_aspect),
                               str(folder / f"{entry_name}{LABELS_SUFFIX}.npy"))
            entries.append(entry)
        if labels_path is not None:
            label_size, label_mtime = _source_stat(labels_path)
            extra = {"labels_source": str(labels_path), "labels_checksum": checksum(labels_path),
                     "labels_size": label_size, "labels_mtime_ns": label_mtime}
            for entry in entries:
                entry.update(extra)
        return {"entries": entries, "dropped": dropped}
    except MedvolError as error:
        _unlink(written)
        return {"error": str(error)}
    except _WriteFailed as error:
        _unlink(written)
        return {"error": str(error), "fatal": True}
    except OSError as error:
        _unlink(written)
        return {"error": f"{source}: {_reason(error)}"}
    except Exception as error:  # noqa: BLE001 - a worker reports, never dies: the run names the bad file
        _unlink(written)
        return {"error": f"{source}: {type(error).__name__}: {error}".splitlines()[0]}


def _unlink(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
