"""The preprocessed-volume cache: one ``.npy`` per volume plus ``manifest.json``.

Layout of a cache folder::

    manifest.json          what every array is and where it came from (below)
    volumes/<name>.npy     float32 (S, S, S) in [-1, 1]
    volumes/<name>_labels.npy   uint8 (S, S, S) label map of the volume, where its source has one
    .medvol-cache.lock     held (``fcntl.flock``) by the run writing the cache

The manifest lists every volume in the cache with: its source path, the source's SHA-256 (over all
of its files), size and mtime, the original shape/spacing/origin/direction, the geometry of the
array (``spacing`` z, y, x mm; ``origin`` x, y, z LPS mm of voxel 0; ``direction`` as
:class:`medvol.data.io.Volume` holds them), the split (``train`` or ``val``) and fold index, and
whether it is synthetic (``"synthetic": true`` and its ``"provenance"``, or ``false``: see
:mod:`medvol.data.provenance`);
globally: every preprocessing parameter (with the pipeline version), the medvol version, the split
settings and every ``src`` ever given.

Label maps: a source with a label file beside it (:func:`medvol.data.discover.find_labels`: ``X_mask``,
``X_seg``, LiTS ``segmentation-N``, LUNA16 ``seg-lungs-LUNA16/<uid>``) gets ``volumes/<name>_labels.npy``,
the map resampled by nearest neighbour onto exactly the array's grid
(:func:`medvol.data.preprocess.preprocess_with_info`); its entry records ``labels`` (the file),
``labels_source`` with its checksum, size and mtime, and ``label_values`` (the ids present). The
manifest's ``mask_labels`` names the classes: label i is ``mask_labels[i - 1]`` (given, LiTS
``liver, tumour``, else ``label_1`` ...). A label file that appears, changes or disappears redoes
its volume.

A cache only grows. A run adds the volumes of its source to those already there; a volume already
in the cache from the same source file with the same parameters is skipped (an unchanged size and
mtime reuse the recorded checksum; a changed source is redone). One cache has one set of
parameters: a run with others is refused unless ``overwrite=True``, which replaces the whole cache
(only once the new one is complete). Volumes keep their fold as the cache grows; new volumes are
dealt into the folds after them.

Safety: one run at a time holds the lock (a second one waits, or is refused with ``wait=0``); the
kernel drops it when its holder dies. Workers write arrays under hidden pending names; a finished
run writes the new manifest to a temporary file, renames the arrays into place and then the
manifest, so a failed or killed run leaves the previous cache as it was. Temporaries of a killed
run are removed by the next run once it holds the lock.

The split is seeded: volumes (sorted by name) are shuffled with ``seed`` and dealt round-robin into
``round(1 / val_fraction)`` folds (10 for 90/10); fold ``val_fold`` is validation. A cache of a
single volume is all training. Synthetic entries are training-only whatever their fold: the
validation split is what generated volumes are scored against, so it stays real.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import medvol
from medvol.data.discover import discover, find_labels
from medvol.data.io import Volume, checksum, read_volume, volume_stem
from medvol.data.preprocess import PreprocessParams, preprocess_with_info
from medvol.data.provenance import refuse_synthetic_sources, sidecar_path, source_marks, write_synthetic
from medvol.errors import MedvolError
from medvol.outputs import is_temp_name, plain_name, safe_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VOLUME_DIR = "volumes"
LOCK_NAME = ".medvol-cache.lock"
#: 2: entries carry the array's geometry (``origin``, ``direction``) and keep their fold as the cache grows.
#: 3: entries may carry a label map (``labels``); a reader of format 2 would delete those arrays as strays.
MANIFEST_FORMAT = 3
LABELS_SUFFIX = "_labels"
#: Class names of LiTS label maps (``segmentation-N``: 1 liver, 2 tumour).
LITS_LABELS = ("liver", "tumour")
#: The end of a worker's pending array ``volumes/.<name>.tmp-pending.npy``: medvol's temporary
#: naming (:func:`medvol.outputs.is_temp_name`), so a killed run's pending arrays are cleaned.
PENDING = ".tmp-pending.npy"
#: The manifest a run is committing (``.manifest.tmp-<pid>.json``, a temporary name too).
MANIFEST_TMP = ".manifest.tmp-"
GEOMETRY_KEYS = ("spacing", "origin", "direction")
SPLIT_DEFAULTS = {"seed": 0, "val_fraction": 0.1, "val_fold": 0}
SPLIT_OPTIONS = {"seed": "--seed", "val_fraction": "--val-fraction", "val_fold": "--val-fold"}


@dataclasses.dataclass
class CacheSummary:
    """What :func:`build_cache` did.

    Attributes:
        path: the cache folder.
        manifest: the manifest written (as loaded by :func:`load_manifest`).
        processed: names of volumes preprocessed in this run.
        reused: names of volumes skipped because they were already done with the same parameters.
        failed: ``(source, one-line reason)`` of volumes skipped as unreadable or invalid.
        replaced: with ``overwrite``, what was replaced (one line), else None.
        cleaned: temporaries of an earlier, killed run that were removed.
        exported: NIfTI files written (``export_dir``).
        not_hu: sources preprocessed as CT whose intensities do not look like HU
            (:func:`medvol.data.preprocess.looks_like_hu`: an MR scan, most likely).
    """

    path: Path
    manifest: dict[str, Any]
    processed: list[str]
    reused: list[str]
    failed: list[tuple[str, str]]
    replaced: str | None = None
    cleaned: list[Path] = dataclasses.field(default_factory=list)
    exported: list[Path] = dataclasses.field(default_factory=list)
    not_hu: list[str] = dataclasses.field(default_factory=list)


def load_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``cache_dir/manifest.json``.

    Raises:
        MedvolError: the folder or manifest is missing, unreadable or malformed (names the path).
    """
    path = Path(cache_dir) / MANIFEST
    if not Path(cache_dir).is_dir():
        raise MedvolError(f"{cache_dir}: no such cache folder (build one with `medvol preprocess`)")
    if not path.is_file():
        raise MedvolError(f"{path}: missing; {cache_dir} is not a medvol cache (run `medvol preprocess`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable manifest ({str(error).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("volumes"), list) \
            or not isinstance(manifest.get("params"), dict):
        raise MedvolError(f"{path}: not a medvol cache manifest")
    if isinstance(manifest.get("format"), int) and manifest["format"] > MANIFEST_FORMAT:
        raise MedvolError(f"{path}: manifest format {manifest['format']} is newer than this medvol reads "
                          f"({MANIFEST_FORMAT}); upgrade medvol")
    for number, entry in enumerate(manifest["volumes"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "file", "source")):
            raise MedvolError(f"{path}: volume entry {number} is malformed (needs name, file and source)")
        _check_entry_names(path, number, entry)
    return manifest


def _check_entry_names(path: Path, number: int, entry: dict[str, Any]) -> None:
    """Refuse an entry whose name is no plain file name, or whose files are not named after it.

    Writers build paths from the name (``volumes/<name>.npy``, ``DIR/<name>.nii.gz``), readers
    from ``file``: both must stay inside their folder, and say the same.
    """
    name = plain_name(path.parent / VOLUME_DIR, entry["name"], f"{path}: volume entry {number} name")
    for key, expected in (("file", f"{VOLUME_DIR}/{name}.npy"), ("labels", f"{VOLUME_DIR}/{name}{LABELS_SUFFIX}.npy")):
        value = entry.get(key)
        if isinstance(value, str) and value != expected:
            raise MedvolError(f"{path}: volume entry {number} ({name!r}): {key} {value!r} is not {expected!r}; "
                              "refusing a file that is not named after its entry")


def entry_file(cache_dir: str | os.PathLike, entry: dict[str, Any], key: str = "file") -> Path:
    """The array ``entry[key]`` (``file`` or ``labels``) of a checked entry (:func:`load_manifest`).

    Raises:
        MedvolError: the file is a link leading out of the cache's ``volumes/`` folder.
    """
    return safe_name(Path(cache_dir) / VOLUME_DIR, entry[key].rpartition("/")[2],
                     f"{Path(cache_dir) / MANIFEST}: {key} of volume {entry['name']!r}:")


class CacheLock:
    """Exclusive lock of a cache folder: ``fcntl.flock`` on ``.medvol-cache.lock``.

    The lock file stays (it is hidden); only the lock is released. The kernel releases it when the
    holder dies, so a killed run never leaves the cache locked.

    Args:
        cache_dir: an existing cache folder.
        wait: seconds to wait for another holder (None: as long as it takes; 0: refuse at once).
        on_wait: called once with a one-line message when the lock is busy and we wait.

    Raises:
        MedvolError: the lock stayed busy for ``wait`` seconds, or cannot be taken (names the file).
    """

    def __init__(self, cache_dir: str | os.PathLike, *, wait: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        import fcntl

        self.path = Path(cache_dir) / LOCK_NAME
        deadline = None if wait is None else time.monotonic() + max(0.0, float(wait))
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise MedvolError(f"{self.path}: cannot create the cache lock ({_reason(error)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise MedvolError(f"{self.path}: cannot lock the cache ({_reason(error)})") from None
            holder = self._holder()
            if deadline is not None and time.monotonic() >= deadline:
                advice = "wait for it or use another --dst" if not wait else \
                    f"still locked after {wait:g} s (--lock-wait); try again later"
                raise MedvolError(f"cache {cache_dir} is in use by {holder}; {advice}")
            if not told and on_wait is not None:
                on_wait(f"cache {cache_dir} is in use by {holder}; waiting for it to finish")
                told = True
            time.sleep(0.1)
        self.fd: int | None = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _holder(self) -> str:
        try:
            pid = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        return f"another medvol process (pid {pid})" if pid.isdigit() else "another medvol process"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "CacheLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _reason(error: OSError) -> str:
    return os.strerror(error.errno).lower() if error.errno else str(error)


def clean_temporaries(cache_dir: str | os.PathLike) -> list[Path]:
    """Delete what killed runs left in ``cache_dir``, and nothing else.

    Removed: files of medvol's temporary naming (:func:`medvol.outputs.is_temp_name`: workers'
    pending arrays, atomic-write temporaries, the manifest being committed) in the cache and its
    ``volumes/``; and the arrays a run killed while committing had already renamed into place:
    those its uncommitted manifest (``.manifest.tmp-*.json``) lists and the manifest does not (a
    run names new volumes so that they never take the name of a file already there). An array the
    manifest does not list is otherwise kept: it may be the user's.

    Only call this while holding the :class:`CacheLock`: a live run's temporaries look the same.
    """
    cache_dir = Path(cache_dir)
    try:
        listed = _listed_files(load_manifest(cache_dir)) if (cache_dir / MANIFEST).is_file() else set()
    except MedvolError:
        listed = None
    removed = []
    for folder in (cache_dir, cache_dir / VOLUME_DIR):
        if folder.is_dir():  # a listed array is never a temporary, whatever its name (".x.tmp-1" as a source)
            removed += [p for p in sorted(folder.iterdir()) if is_temp_name(p.name) and (p.is_symlink() or p.is_file())
                        and (folder != cache_dir / VOLUME_DIR or f"{VOLUME_DIR}/{p.name}" not in (listed or ()))]
    journals = [p for p in removed if p.parent == cache_dir and p.name.startswith(MANIFEST_TMP)]
    if journals and (cache_dir / MANIFEST).is_file():
        for journal in journals if listed is not None else []:
            removed += [p for p in _committed_arrays(cache_dir, journal)
                        if f"{VOLUME_DIR}/{p.name}" not in listed and p not in removed]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _committed_arrays(cache_dir: Path, journal: Path) -> list[Path]:
    """The arrays an uncommitted manifest lists that exist (checked as :func:`load_manifest` does)."""
    try:
        manifest = json.loads(journal.read_text(encoding="utf-8"))
        entries = manifest["volumes"]
        for number, entry in enumerate(entries):
            _check_entry_names(journal, number, entry)
        return [p for entry in entries for key in ("file", "labels") if isinstance(entry.get(key), str)
                for p in [entry_file(cache_dir, entry, key)] if p.is_file() or p.is_symlink()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, MedvolError):
        return []  # a journal cut short by the kill: nothing was renamed after it was written


def _listed_files(manifest: dict[str, Any]) -> set[str]:
    """Every array file a manifest lists: volumes and label maps."""
    return {entry[key] for entry in manifest["volumes"] for key in ("file", "labels")
            if isinstance(entry.get(key), str)}


def _write_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` to ``path`` (an open file: ``np.save`` would append ``.npy``)."""
    with open(path, "wb") as handle:
        np.save(handle, array)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _source_stat(source: Path) -> tuple[int, int]:
    stat = source.stat()
    if source.is_dir():
        files = [f.stat() for f in sorted(source.iterdir()) if f.is_file()]
        return sum(f.st_size for f in files), max((f.st_mtime_ns for f in files), default=stat.st_mtime_ns)
    return stat.st_size, stat.st_mtime_ns


def _labels_pending(out_file: str) -> Path:
    """The pending label file beside a worker's pending array ``.<name>.tmp-pending.npy``."""
    path = Path(out_file)
    return path.with_name(f"{path.name[: -len(PENDING)]}{LABELS_SUFFIX}{PENDING}")


def _process_one(source: str, out_file: str, final: str, params_dict: dict, reader: str,
                 label_source: str | None = None) -> dict[str, Any]:
    """Worker: read, preprocess and save one volume to ``out_file``. Returns its entry or an error.

    With ``label_source`` the label map is read, carried onto the array's grid and saved beside
    (:func:`_labels_pending`). An error that is the volume's fault is ``{"error": ...}``; a failed
    write (a full disk) is also ``"fatal"``: it would fail for every volume, so the run stops.
    """
    labels_out = _labels_pending(out_file)
    try:
        params = PreprocessParams.from_dict(params_dict)
        path = Path(source)
        size, mtime = _source_stat(path)
        digest = checksum(path)
        volume = read_volume(path, reader=reader)
        labels = read_volume(label_source, reader=reader) if label_source is not None else None
        array, info = preprocess_with_info(volume, params, labels=labels)
    except MedvolError as error:
        return {"error": str(error)}
    except Exception as error:  # a worker must report, never die: the run names the bad volume
        return {"error": f"{source}: {type(error).__name__}: {error}".splitlines()[0]}
    try:
        _write_array(Path(out_file), array)
        if labels is not None:
            _write_array(labels_out, info["labels"])
    except OSError as error:
        Path(out_file).unlink(missing_ok=True)
        labels_out.unlink(missing_ok=True)
        return {"error": f"{final}: cannot write ({_reason(error)})", "fatal": True}
    extra = {}
    if labels is not None:
        label_size, label_mtime = _source_stat(Path(label_source))
        extra = {"labels_source": str(label_source), "labels_checksum": checksum(label_source),
                 "labels_size": label_size, "labels_mtime_ns": label_mtime,
                 "label_values": [int(v) for v in np.unique(info["labels"])]}
    from medvol.data.phantom import read_factors

    factors = read_factors(path)  # a phantom's recorded factors (medvol data phantom), kept with it
    if factors is not None:
        extra["phantom_factors"] = factors
    return {**extra,
        "source": str(path),
        "checksum": digest,
        "source_size": size,
        "source_mtime_ns": mtime,
        "original_shape": list(volume.array.shape),
        "original_spacing": list(volume.spacing),
        "original_origin": list(volume.origin),
        "original_direction": list(volume.direction),
        "blank_slices": info["blank_slices"],
        "spacing": list(info["spacing"]),
        "origin": list(info["origin"]),
        "direction": list(info["direction"]),
        "shape": list(array.shape),
        "medvol_version": medvol.__version__,
        "looks_like_hu": info.get("looks_like_hu", True),
    }


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the main process answers it (it cancels the
    # pool and cleans up), so a worker never prints a traceback of its own.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One thread per worker: the processes already use every core.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _assign_split(names: list[str], seed: int, val_fraction: float, val_fold: int,
                  start: int = 0) -> dict[str, tuple[int, str]]:
    """Deal ``names`` into folds: ``{name: (fold, "train" | "val")}``.

    ``start`` volumes are already dealt (a growing cache): the deal continues after them, with a
    shuffle seeded by ``(seed, start)``, so the folds stay balanced and earlier volumes keep theirs.
    """
    folds = max(2, int(round(1.0 / val_fraction)))
    order = np.random.default_rng(seed if start == 0 else [seed, start]).permutation(len(names))
    result = {}
    for position, index in enumerate(order):
        fold = (start + position) % folds
        result[names[index]] = (fold, "val" if fold == val_fold and start + len(names) > 1 else "train")
    return result


def _assign_names(sources: Sequence[Path], known: dict[str, str], occupied: set[str] = frozenset(),
                  volume_dir: Path = Path(VOLUME_DIR)) -> list[str]:
    """Cache names of ``sources``: a source already in the cache keeps its name (``known``: source
    -> name); a new one gets its file stem, or the stem and a short hash of its path where the stem
    is shared (e.g. DICOM folders all named "CT", or two folders of ``phantom_0000.nii.gz``) or its
    array's or label map's file name is in ``occupied`` (files in ``volume_dir`` that the cache does
    not list: never replaced).

    Raises:
        MedvolError: a stem that is no plain file name, or a file already holding both names.
    """
    def free(name: str) -> bool:
        return f"{name}.npy" not in occupied and f"{name}{LABELS_SUFFIX}.npy" not in occupied

    taken = set(known.values())
    stems = [volume_stem(s) for s in sources]
    new_stems = [stem for src, stem in zip(sources, stems) if str(src) not in known]
    names = []
    for src, stem in zip(sources, stems):
        if str(src) in known:
            names.append(known[str(src)])
            continue
        plain_name(volume_dir, stem, f"{src}: its cache name")
        name = stem
        if new_stems.count(stem) != 1 or stem in taken or not free(stem):
            name = f"{stem}-{hashlib.sha1(str(src).encode()).hexdigest()[:8]}"
            if not free(name):
                raise MedvolError(f"{src}: its cache names {stem!r} and {name!r} are both taken by files in "
                                  f"{volume_dir} that the cache does not list; move them away")
        names.append(name)
    return names


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {_format_value(old.get(k))} -> {_format_value(new.get(k))}" for k in keys)


def _array_ok(path: Path, size: int, dtype=np.float32) -> bool:
    """True if ``path`` opens as a ``dtype`` (size, size, size) ``.npy`` (a truncated file does not)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return array.shape == (size,) * 3 and array.dtype == dtype


def _labels_unchanged(previous: dict[str, Any], label_source: Path | None, dst: Path, size: int) -> bool:
    """True if a cached entry's label map is still that of ``label_source`` (None: it has none)."""
    if label_source is None:
        return "labels" not in previous
    if previous.get("labels_source") != str(label_source) or not isinstance(previous.get("labels"), str) \
            or not _array_ok(entry_file(dst, previous, "labels"), size, np.uint8):
        return False
    stat = _source_stat(label_source)
    return stat == (previous.get("labels_size"), previous.get("labels_mtime_ns")) \
        or checksum(label_source) == previous.get("labels_checksum")


def _resolve_mask_labels(given: Sequence[str] | None, old: dict[str, Any] | None, entries: dict[str, dict],
                         dst: Path) -> list[str] | None:
    """The manifest's ``mask_labels``: names for every label id in ``entries`` (None: no labels).

    Given names must agree with the cache's earlier ones and name every id found; without them the
    cache's names are kept (extended by ``label_<i>``), or LiTS ``segmentation-N`` maps get
    :data:`LITS_LABELS`, others ``label_1`` ... ``label_K``.
    """
    labelled = [e for e in entries.values() if isinstance(e.get("labels"), str)]
    if not labelled:
        return list(given) if given else None
    top = max(labelled, key=lambda e: max(e.get("label_values") or [0]))
    highest = max(top.get("label_values") or [0])
    before = old.get("mask_labels") if old is not None else None
    if given:
        names = list(given)
        if before and list(before) != names[: len(before)]:
            raise MedvolError(f"cache {dst} names its labels {','.join(before)}; --mask-labels {','.join(names)} "
                              "differs: give the same names (or more, after them), or --overwrite")
        if highest > len(names):
            raise MedvolError(f"{top.get('labels_source')}: holds label {highest}, but --mask-labels names only "
                              f"{len(names)} class(es) ({','.join(names)})")
        return names
    names = list(before) if before else []
    if not names and all(Path(e["labels_source"]).name.lower().startswith("segmentation") for e in labelled) \
            and highest <= len(LITS_LABELS):
        names = list(LITS_LABELS)
    return names + [f"label_{i}" for i in range(len(names) + 1, highest + 1)]


def parse_mask_labels(text: str | None) -> list[str] | None:
    """``"lungs,nodules"`` -> ``["lungs", "nodules"]``; a one-line error naming ``--mask-labels``."""
    if text is None:
        return None
    names = [n.strip() for n in str(text).split(",")]
    if not names or not all(names) or len(set(names)) != len(names) or any(n == "background" for n in names):
        raise MedvolError(f"--mask-labels {text!r}: expected distinct comma-separated class names (label 1 first; "
                          "label 0 is the background)")
    return names


def _old_cache(dst: Path, overwrite: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The cache's manifest (None for a new cache), or with ``overwrite`` a damaged one's description."""
    arrays = sorted((dst / VOLUME_DIR).glob("[!.]*.npy"))
    if not (dst / MANIFEST).exists():
        if not arrays:
            return None, None
        if overwrite:
            return None, f"{len(arrays)} array(s) without a manifest"
        raise MedvolError(f"{dst / MANIFEST}: missing, but {dst / VOLUME_DIR} holds {len(arrays)} array(s); "
                          "not a complete medvol cache: use another --dst, or --overwrite to rebuild it")
    try:
        return load_manifest(dst), None
    except MedvolError as error:
        if overwrite:
            return None, f"a damaged cache ({error}) with {len(arrays)} array(s)"
        raise MedvolError(f"{error}; repair it, use another --dst, or --overwrite to rebuild the cache") from None


def build_cache(src: str | os.PathLike | Sequence[str | os.PathLike], dst: str | os.PathLike,
                params: PreprocessParams, *, workers: int = 1, strict: bool = False, seed: int | None = None,
                val_fraction: float | None = None, val_fold: int | None = None, reader: str = "auto",
                progress: bool = False, overwrite: bool = False, wait: float | None = None,
                on_wait: Callable[[str], None] | None = None,
                export_dir: str | os.PathLike | None = None, allow_synthetic: bool = False,
                labels: bool = True, mask_labels: Sequence[str] | None = None) -> CacheSummary:
    """Preprocess every volume of ``src`` into the cache folder ``dst`` (module docstring).

    Args:
        src: anything :func:`medvol.data.discover.discover` accepts, or a list of paths.
        dst: the cache folder (created; an existing cache grows).
        params: the preprocessing parameters; an existing cache must have the same ones.
        workers: worker processes (1 runs in this process).
        strict: fail the run on the first bad volume (default: report it and skip it).
        seed, val_fraction, val_fold: the train/validation split (module docstring); None: the
            cache's own (0, 0.1, 0 for a new cache).
        reader: passed to :func:`medvol.data.io.read_volume`.
        progress: report on stderr (:func:`medvol.progress.track`): a bar on a terminal, else one
            line when the volumes are done.
        overwrite: replace a cache made with other parameters or split settings (or a damaged one),
            and redo this run's volumes even where they are already done.
        wait, on_wait: waiting for another run that holds the cache (:class:`CacheLock`).
        export_dir: afterwards, write every volume of the cache there as NIfTI (:func:`export_nifti`).
        allow_synthetic: accept volumes marked synthetic (:mod:`medvol.data.provenance`); their
            entries record it. Without it a marked volume fails the run before anything is written.
        labels: cache the label map found beside each volume (module docstring); False ignores them.
        mask_labels: class names of the label ids 1..K (``--mask-labels``); None: the cache's, or
            derived (module docstring).

    Returns:
        A :class:`CacheSummary`.

    Raises:
        MedvolError: bad arguments, no volumes found, every volume of ``src`` failed, other
            parameters than the cache's (without ``overwrite``), a busy cache (``wait``), a failed
            write, under ``strict`` the first bad volume (named), or without ``allow_synthetic``
            a volume marked synthetic (named). A failed run leaves the cache as it was.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MedvolError(f"invalid worker count {workers!r} (--workers): expected an integer >= 1")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise MedvolError(f"invalid validation fraction {val_fraction!r} (--val-fraction): expected 0 < f < 1")
    sources = [s.resolve() for s in discover(list(src) if isinstance(src, (list, tuple)) else src)]
    marks = source_marks(sources)
    if not allow_synthetic:
        refuse_synthetic_sources(marks)
    if mask_labels is not None and not labels:
        raise MedvolError("--mask-labels names label classes, --no-labels drops the label maps: give one of them")
    label_files: dict[str, Path | None] = {}
    for source in sources:
        found = find_labels(source) if labels else None
        label_files[str(source)] = found.resolve() if found is not None else None
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise MedvolError(f"{dst}: exists and is not a folder (--dst)")
    volume_dir = dst / VOLUME_DIR
    try:
        volume_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"{dst}: cannot create the cache folder ({_reason(error)})") from None
    with CacheLock(dst, wait=wait, on_wait=on_wait):
        cleaned = clean_temporaries(dst)
        before = _manifest_identity(dst)
        try:
            summary = _build_locked(src, sources, dst, params, workers=workers, strict=strict,
                                    split_given={"seed": seed, "val_fraction": val_fraction, "val_fold": val_fold},
                                    reader=reader, progress=progress, overwrite=overwrite, marks=marks,
                                    label_files=label_files, mask_labels=mask_labels)
        except KeyboardInterrupt:
            if _manifest_identity(dst) == before:
                raise KeyboardInterrupt(f"interrupted (Ctrl-C); the cache {dst} is unchanged "
                                        "(this run's volumes were not kept)") from None
            raise KeyboardInterrupt(f"interrupted (Ctrl-C) as it finished; the cache {dst} holds this run's "
                                    "volumes (run it again to see them reused)") from None
        summary.cleaned = cleaned
        if export_dir is not None:
            summary.exported = _export(dst, summary.manifest, Path(export_dir))
    return summary


def _manifest_identity(dst: Path) -> tuple[int, int] | None:
    """What tells a replaced manifest from the old one (it is renamed into place: a new inode)."""
    try:
        stat = (dst / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _split_settings(old: dict[str, Any] | None, given: dict[str, Any], keep_old: bool,
                    overwrite: bool, dst: Path) -> tuple[dict[str, Any], bool]:
    """The split settings of this run, and whether every fold must be dealt anew."""
    stored = dict(SPLIT_DEFAULTS)
    if old is not None and isinstance(old.get("split"), dict):
        stored.update({k: old["split"][k] for k in SPLIT_DEFAULTS if k in old["split"]})
    settings = {k: stored[k] if given[k] is None else given[k] for k in SPLIT_DEFAULTS}
    folds = max(2, int(round(1.0 / settings["val_fraction"])))
    if not (isinstance(settings["val_fold"], int) and 0 <= settings["val_fold"] < folds):
        raise MedvolError(f"invalid validation fold {settings['val_fold']!r} (--val-fold): expected 0..{folds - 1}")
    differ = [k for k in SPLIT_DEFAULTS if settings[k] != stored[k]]
    if not keep_old or not differ:
        return settings, not keep_old
    if not overwrite:
        asked = " ".join(f"{SPLIT_OPTIONS[k]} {_format_value(settings[k])}" for k in differ)
        has = " ".join(f"{SPLIT_OPTIONS[k]} {_format_value(stored[k])}" for k in differ)
        raise MedvolError(f"cache {dst} is split with {has}, this run asks for {asked}: leave the option out "
                          "to keep the cache's split, or give --overwrite to deal all its volumes anew")
    return settings, True


def _build_locked(src, sources: list[Path], dst: Path, params: PreprocessParams, *, workers: int, strict: bool,
                  split_given: dict[str, Any], reader: str, progress: bool, overwrite: bool,
                  marks: dict[str, dict[str, Any]], label_files: dict[str, Path | None],
                  mask_labels: Sequence[str] | None) -> CacheSummary:
    volume_dir = dst / VOLUME_DIR
    old, damaged = _old_cache(dst, overwrite)
    params_dict = params.to_dict()
    old_entries = {e["name"]: e for e in old["volumes"]} if old is not None else {}
    replaced = None
    if damaged is not None:
        replaced = f"replaced {damaged}"
    elif old is not None and old["params"] != params_dict and old_entries:
        changes = _changes(old["params"], params_dict)
        if not overwrite:
            raise MedvolError(f"cache {dst} holds {len(old_entries)} volume(s) preprocessed with other parameters "
                              f"({changes}); refusing to mix them: give the cache's parameters, another --dst, "
                              "or --overwrite to replace the cache")
        replaced = f"replaced the cache's {len(old_entries)} volume(s) preprocessed with other parameters ({changes})"
        old_entries = {}
    settings, redeal = _split_settings(old, split_given, bool(old_entries), overwrite, dst)
    if replaced is None and redeal and old_entries:
        replaced = f"dealt the cache's {len(old_entries)} volume(s) anew into folds"

    # Files the cache does not list are not medvol's to replace (a damaged cache's arrays are: --overwrite).
    listed_before = _listed_files(old) if old is not None else set()
    occupied = set() if damaged is not None else {p.name for p in volume_dir.iterdir() if not is_temp_name(p.name)
                                                   and f"{VOLUME_DIR}/{p.name}" not in listed_before}
    names = _assign_names(sources, {e["source"]: name for name, e in old_entries.items()}, occupied, volume_dir)
    entries: dict[str, dict[str, Any]] = dict(old_entries)
    todo: list[tuple[str, Path]] = []
    reused: list[str] = []
    for name, source in zip(names, sources):
        previous = old_entries.get(name)
        if previous is not None and previous["source"] == str(source) and not overwrite \
                and all(k in previous for k in GEOMETRY_KEYS) and _array_ok(entry_file(dst, previous), params.size) \
                and _labels_unchanged(previous, label_files[str(source)], dst, params.size):
            size, mtime = _source_stat(source)
            unchanged = (size, mtime) == (previous.get("source_size"), previous.get("source_mtime_ns"))
            if unchanged or checksum(source) == previous.get("checksum"):
                kept = {k: v for k, v in previous.items() if k != "provenance"}  # this run's marks replace it
                if "labels" in kept:
                    kept["labels_size"], kept["labels_mtime_ns"] = _source_stat(label_files[str(source)])
                entries[name] = dict(kept, source_size=size, source_mtime_ns=mtime, **marks[str(source)])
                reused.append(name)
                continue
        todo.append((name, source))

    clash = sorted({f"{n}{LABELS_SUFFIX}" for n, s in todo if label_files[str(s)] is not None}
                   & (set(entries) | set(names)))
    if clash:
        raise MedvolError(f"{dst}: a volume is named {clash[0]!r}, the name of another volume's label map; "
                          "rename that source or preprocess without labels (--no-labels)")
    processed: list[str] = []
    not_hu: list[str] = []  # sources whose intensities do not look like HU (CT modality only)
    failed: list[tuple[str, str]] = []
    # Workers write hidden pending files; they replace the cache's arrays only once the run has
    # succeeded, so a failed (strict, full disk or interrupted) run leaves the previous cache intact.
    jobs = [(name, str(source), str(volume_dir / f".{name}{PENDING}")) for name, source in todo]
    for name, _ in todo:  # the final names, before any work: none may be a link out of volumes/
        safe_name(volume_dir, f"{name}.npy", f"{dst}: cache array")
        safe_name(volume_dir, f"{name}{LABELS_SUFFIX}.npy", f"{dst}: cache label map")
    pools: list[futures.ProcessPoolExecutor] = []

    def run_jobs():
        # A generator, so that loading MONAI (tens of seconds on a busy machine) and starting the
        # workers happen inside the progress phase: the bar shows while they do.
        if workers > 1 and len(jobs) > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            if method == "fork":
                # Imported once here, MONAI and SimpleITK are shared by the forked workers instead
                # of being imported by each (seconds apiece).
                import monai.transforms  # noqa: F401
                import SimpleITK  # noqa: F401
            pools.append(futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                                     mp_context=multiprocessing.get_context(method),
                                                     initializer=_worker_init))
            pending = {pools[0].submit(_process_one, source, out, str(volume_dir / f"{name}.npy"), params_dict,
                                       reader, _str_or_none(label_files[source])): (name, source, out)
                       for name, source, out in jobs}
            for done in futures.as_completed(pending):
                yield pending[done], done.result()
        else:
            for name, source, out in jobs:
                yield (name, source, out), _process_one(source, out, str(volume_dir / f"{name}.npy"), params_dict,
                                                        reader, _str_or_none(label_files[source]))

    try:
        results = run_jobs()
        if progress and jobs:
            from medvol.progress import track

            results = track(results, len(jobs), "preprocess", "vol")
        for (name, source, out), result in results:
            if "error" in result:
                if strict or result.get("fatal"):
                    raise MedvolError(result["error"])
                log.info("skipped %s", result["error"])
                failed.append((source, result["error"]))
                continue
            if not result.pop("looks_like_hu"):
                not_hu.append(source)
            entry = dict(result, name=name, file=f"{VOLUME_DIR}/{name}.npy", **marks[source])
            if label_files[source] is not None:
                entry["labels"] = f"{VOLUME_DIR}/{name}{LABELS_SUFFIX}.npy"
            entries[name] = entry
            processed.append(name)
        if not processed and not reused:
            reasons = "; ".join(reason for _, reason in failed[:3])
            raise MedvolError(f"no volume of {src} could be preprocessed ({len(failed)} failed: {reasons})")
        manifest = _new_manifest(old, entries, old_entries, src, sources, params_dict, settings, redeal, failed)
        manifest["mask_labels"] = _resolve_mask_labels(mask_labels, old if old_entries else None, entries, dst)
        arrays = [(out, volume_dir / f"{name}.npy") for name, _, out in jobs if name in processed]
        arrays += [(str(_labels_pending(out)), volume_dir / f"{name}{LABELS_SUFFIX}.npy")
                   for name, source, out in jobs if name in processed and label_files[source] is not None]
        _commit(dst, manifest, arrays)
        listed = _listed_files(manifest)
        for name in processed:  # a label file that disappeared: its old map goes with it
            if f"{VOLUME_DIR}/{name}{LABELS_SUFFIX}.npy" not in listed:
                (volume_dir / f"{name}{LABELS_SUFFIX}.npy").unlink(missing_ok=True)
    except BaseException:
        if pools:
            pools.pop().shutdown(wait=True, cancel_futures=True)
        for _, _, out in jobs:
            Path(out).unlink(missing_ok=True)
            _labels_pending(out).unlink(missing_ok=True)
        raise
    finally:
        if pools:
            pools.pop().shutdown(wait=True)
    if replaced is not None:
        # Only now that the new manifest is in place: arrays of the replaced cache no longer listed
        # (those its manifest listed; with a damaged manifest, every array of volumes/).
        listed = _listed_files(manifest)
        before = sorted(volume_dir.glob("[!.]*.npy")) if damaged is not None else \
            [volume_dir / f.rpartition("/")[2] for f in sorted(listed_before)]
        removed = [p for p in before if f"{VOLUME_DIR}/{p.name}" not in listed and (p.is_file() or p.is_symlink())]
        for path in removed:
            path.unlink()
        old_names = {e["name"] for e in old["volumes"]} if old is not None else set()
        volumes_removed = [p for p in removed if not any(p.name == f"{n}{LABELS_SUFFIX}.npy" for n in old_names)]
        replaced += (f"; {len(set(processed) & old_names)} re-made from this run's source, "
                     f"{len(volumes_removed)} removed")
    return CacheSummary(path=dst, manifest=manifest, processed=processed, reused=reused, failed=failed,
                        replaced=replaced, not_hu=not_hu)


def _new_manifest(old, entries, old_entries, src, sources, params_dict, settings, redeal, failed) -> dict[str, Any]:
    ordered = sorted(entries)
    folds = max(2, int(round(1.0 / settings["val_fraction"])))
    # A volume redone from a changed source keeps its fold: it is the same scan.
    fold_of = {} if redeal else {n: old_entries[n]["fold"] for n in ordered
                                 if n in old_entries and isinstance(old_entries[n].get("fold"), int)}
    new = [n for n in ordered if n not in fold_of]
    dealt = _assign_split(new, settings["seed"], settings["val_fraction"], settings["val_fold"], start=len(fold_of))
    fold_of.update({n: fold for n, (fold, _) in dealt.items()})
    volumes = []
    for name in ordered:
        real = entries[name].get("synthetic") is not True
        which = "val" if fold_of[name] == settings["val_fold"] and len(ordered) > 1 and real else "train"
        volumes.append(dict(entries[name], fold=fold_of[name], split=which, label=int(entries[name].get("label", 0))))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    given = [str(s) for s in src] if isinstance(src, (list, tuple)) else [str(src)]
    earlier = old.get("sources", [old["source"]] if "source" in old else []) if old is not None and old_entries else []
    done = {v["source"] for v in volumes} | {str(s) for s in sources}
    earlier_failed = [f for f in (old.get("failed", []) if old is not None and old_entries else [])
                      if isinstance(f, dict) and f.get("source") not in done]
    return {
        "format": MANIFEST_FORMAT,
        "medvol_version": medvol.__version__,
        "created": old.get("created", now) if old is not None and old_entries else now,
        "updated": now,
        "sources": list(dict.fromkeys([*earlier, *given])),
        "params": params_dict,
        "split": {**settings, "folds": folds,
                  "train": sum(v["split"] == "train" for v in volumes),
                  "val": sum(v["split"] == "val" for v in volumes)},
        "volumes": volumes,
        "failed": earlier_failed + [{"source": s, "error": e} for s, e in failed],
    }


def _commit(dst: Path, manifest: dict[str, Any], arrays: list[tuple[str, Path]]) -> None:
    """Manifest to a temporary file, then the arrays into place, then the manifest (all renames)."""
    tmp = dst / f"{MANIFEST_TMP}{os.getpid()}.json"
    try:
        _write_text(tmp, json.dumps(manifest, indent=1))
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise MedvolError(f"{dst / MANIFEST}: cannot write ({_reason(error)}); the cache is unchanged") from None
    fresh = []  # arrays renamed to a name that was free: taken back if the commit fails
    try:
        for pending, final in arrays:
            new = not (final.exists() or final.is_symlink())
            os.replace(pending, final)
            if new:
                fresh.append(final)
        os.replace(tmp, dst / MANIFEST)
    except BaseException:
        for final in fresh:
            final.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        raise


def entry_geometry(entry: dict[str, Any], manifest_path: str | os.PathLike = MANIFEST) -> dict[str, tuple[float, ...]]:
    """``{"spacing", "origin", "direction"}`` of a manifest entry, as :class:`Volume` holds them.

    Raises:
        MedvolError: the entry has no (or malformed) geometry: a cache built before medvol recorded
            it; running ``medvol preprocess`` again with its source adds it.
    """
    name = entry.get("name", "?")
    missing = [k for k in GEOMETRY_KEYS if k not in entry]
    if missing:
        raise MedvolError(f"{manifest_path}: volume {name!r} has no {', '.join(missing)} (built by an older medvol); "
                          "run `medvol preprocess` again with its source to add the geometry")
    try:
        geometry = {k: tuple(float(v) for v in entry[k]) for k in GEOMETRY_KEYS}
    except (TypeError, ValueError):
        geometry = {}
    if [len(geometry.get(k, ())) for k in GEOMETRY_KEYS] != [3, 3, 9] or not all(
            np.isfinite(v).all() for v in geometry.values()):
        raise MedvolError(f"{manifest_path}: volume {name!r} has a malformed geometry")
    return geometry


def _load(cache_dir: Path, manifest: dict[str, Any], entry: dict[str, Any], physical: bool) -> Volume:
    from medvol.data.preprocess import to_intensity

    geometry = entry_geometry(entry, cache_dir / MANIFEST)
    path = entry_file(cache_dir, entry)
    array = _read_cached(path, "cached volume", (int(manifest["params"].get("size", 0)),) * 3, np.float32)
    if physical:
        array = to_intensity(array, PreprocessParams.from_dict(manifest["params"])).astype(np.float32)
    return Volume(array=array, path=str(path), **geometry)


def entry_labels(cache_dir: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> np.ndarray:
    """The uint8 (S, S, S) label map of a cache entry.

    Raises:
        MedvolError: the entry has no label map (names the cache and entry), or its file is
            missing, unreadable or of the wrong shape or type (names the file).
    """
    if not isinstance(entry.get("labels"), str):
        raise MedvolError(f"{cache_dir}: volume {entry.get('name')!r} has no label map (the cache was built "
                          "without a label file beside its source, or by a medvol without labels); put "
                          "<name>_mask.nii.gz beside the source and run `medvol preprocess` again")
    path = entry_file(cache_dir, entry, "labels")
    return _read_cached(path, "label map", (int(manifest["params"].get("size", 0)),) * 3, np.uint8)


def _read_cached(path: Path, what: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array of ``path`` (a writable copy: torch refuses read-only memory), checked against the
    ``shape`` and ``dtype`` the manifest implies.

    Raises:
        MedvolError: the file is missing, unreadable, or of another shape or type (names it).
    """
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise MedvolError(f"{path}: missing; the manifest lists it (rebuild it with `medvol preprocess`)") from None
    except (OSError, ValueError, EOFError) as error:
        raise MedvolError(f"{path}: unreadable {what} ({str(error).splitlines()[0]}); "
                          "rebuild it with `medvol preprocess`") from None
    if array.shape != shape or array.dtype != dtype:
        raise MedvolError(f"{path}: {array.dtype} array of shape {array.shape}, expected {np.dtype(dtype).name} "
                          f"{shape} ({what}) as the manifest says")
    return np.array(array)


def load_labels(cache_dir: str | os.PathLike, name: str) -> Volume:
    """The label map of one cache entry with its geometry (that of :func:`load_entry`'s array).

    Returns:
        A Volume whose array is uint8 (S, S, S): 0 background, i the class ``mask_labels[i - 1]``.

    Raises:
        MedvolError: as :func:`load_entry`, and an entry without a label map (names the cache).
    """
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    entry = {e["name"]: e for e in manifest["volumes"]}.get(name)
    if entry is None:
        raise MedvolError(f"{cache_dir}: no volume {name!r} in this cache")
    geometry = entry_geometry(entry, cache_dir / MANIFEST)
    return Volume(array=np.array(entry_labels(cache_dir, manifest, entry)),
                  path=str(entry_file(cache_dir, entry, "labels")), **geometry)


def load_entry(cache_dir: str | os.PathLike, name: str, *, physical: bool = False) -> Volume:
    """One cache entry with its geometry, as a :class:`medvol.data.io.Volume`.

    Args:
        cache_dir: the cache folder.
        name: the entry's name (``volumes/<name>.npy``).
        physical: map [-1, 1] back to HU (CT, the cache's window); MR stays in [-1, 1].

    Returns:
        A Volume with the float32 (S, S, S) array and the spacing, origin and direction of the
        preprocessed grid (it overlays the source scan); ``path`` is the ``.npy`` file.

    Raises:
        MedvolError: a missing or damaged manifest, an unknown name, a missing or corrupt array,
            or an entry without geometry (one line naming the file).

    Example:
        >>> vol = load_entry("cache64", "phantom_0000", physical=True)  # doctest: +SKIP
        >>> vol.array.shape, vol.spacing                                  # doctest: +SKIP
        ((64, 64, 64), (5.9375, 5.9375, 5.9375))
    """
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    by_name = {e["name"]: e for e in manifest["volumes"]}
    if name not in by_name:
        some = ", ".join(sorted(by_name)[:3]) + (", ..." if len(by_name) > 3 else "")
        raise MedvolError(f"{cache_dir}: no volume {name!r} in this cache ({len(by_name)} volume(s): {some})")
    return _load(cache_dir, manifest, by_name[name], physical)


def cache_volumes(source: str | os.PathLike, *, physical: bool = True) -> list[Volume] | None:
    """The cache entries that ``source`` names, or None if it names none (for viewers).

    ``source`` is a cache folder (all its volumes, in manifest order) or ``CACHE/volumes/NAME.npy``.

    Raises:
        MedvolError: a ``.npy`` outside a cache, or anything :func:`load_entry` refuses.
    """
    path = Path(source)
    if path.is_dir() and (path / MANIFEST).is_file():
        manifest = load_manifest(path)
        return [_load(path, manifest, entry, physical) for entry in manifest["volumes"]]
    if path.suffix.lower() != ".npy":
        return None
    cache_dir = path.parent.parent
    if path.parent.name != VOLUME_DIR or not (cache_dir / MANIFEST).is_file():
        raise MedvolError(f"{path}: a .npy outside a medvol cache (no {MANIFEST} beside its {VOLUME_DIR}/ "
                          "folder); give CACHE/volumes/NAME.npy or the cache folder")
    manifest = load_manifest(cache_dir)
    for entry in manifest["volumes"]:
        if entry["file"] == f"{VOLUME_DIR}/{path.name}":
            return [_load(cache_dir, manifest, entry, physical)]
    raise MedvolError(f"{path}: not listed in {cache_dir / MANIFEST}")


def export_nifti(cache_dir: str | os.PathLike, out_dir: str | os.PathLike, *, wait: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> list[Path]:
    """Write every cache entry as ``out_dir/<name>.nii.gz`` with its geometry.

    CT is written in HU (the cache's window mapped back), MR in [-1, 1], float32; an entry's label
    map as ``out_dir/<name>_mask.nii.gz`` (uint8, same geometry). Each file is
    written under a temporary name and renamed; an existing file of the same name is replaced.
    A synthetic entry is written marked, with a sidecar (:mod:`medvol.data.provenance`): the
    export of a mixed cache never passes a generated volume off as a scan.
    The cache is locked meanwhile, so a run writing it is waited for (``wait``, ``on_wait`` as
    :class:`CacheLock`).

    Returns:
        The files written, in manifest order (an entry's volume, then its label map if it has one).

    Raises:
        MedvolError: anything :func:`load_entry` refuses, or a failed write (names the file).
    """
    cache_dir = Path(cache_dir)
    load_manifest(cache_dir)  # a folder that is no cache fails before a lock file is made in it
    with CacheLock(cache_dir, wait=wait, on_wait=on_wait):
        return _export(cache_dir, load_manifest(cache_dir), Path(out_dir))


def _export(cache_dir: Path, manifest: dict[str, Any], out_dir: Path) -> list[Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise MedvolError(f"{out_dir}: exists and is not a folder (--export-nifti)")
    try:
        return _export_checked(cache_dir, manifest, out_dir)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted (Ctrl-C) while exporting; the cache {cache_dir} is complete, and "
                                f"the files already in {out_dir} are whole (each is written under a temporary "
                                "name and renamed)") from None


def _export_checked(cache_dir: Path, manifest: dict[str, Any], out_dir: Path) -> list[Path]:
    from medvol.data.io import write_volume

    # Every file's name is checked before the first is written: none may be a link out of out_dir.
    plans = []
    for entry in manifest["volumes"]:
        names = [f"{entry['name']}.nii.gz"] + ([f"{entry['name']}_mask.nii.gz"] if isinstance(entry.get("labels"), str)
                                              else [])
        targets = [safe_name(out_dir, name, "--export-nifti file") for name in names]
        if entry.get("synthetic") is True:  # and their sidecars
            for target in targets:
                safe_name(out_dir, sidecar_path(target).name, "--export-nifti sidecar")
        plans.append((entry, targets))
    written = []
    for entry, targets in plans:
        synthetic = entry.get("synthetic") is True
        volume = _load(cache_dir, manifest, entry, physical=True)
        pairs = [(volume, targets[0], None)]
        if len(targets) > 1:
            labels = dataclasses.replace(volume, array=np.array(entry_labels(cache_dir, manifest, entry)))
            pairs.append((labels, targets[1], np.uint8))
        try:
            for item, target, dtype in pairs:
                if synthetic:
                    record = dict(entry.get("provenance") or {}, exported_from={"cache": str(cache_dir),
                                                                                 "entry": entry["name"]})
                    if dtype is not None:
                        record["mask_labels"] = manifest.get("mask_labels")
                    write_synthetic(item, target, record, dtype=dtype)
                    written.append(target)
                else:
                    written.append(write_volume(item, target, dtype=dtype))
        except MedvolError:
            raise
        except (OSError, RuntimeError) as error:
            reason = _reason(error) if isinstance(error, OSError) else str(error).strip().splitlines()[-1]
            raise MedvolError(f"{target}: cannot write ({reason})") from None
    return written
