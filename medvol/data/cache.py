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

The code follows the flow: :mod:`medvol.data.cache_store` (layout, manifest, lock, temporaries),
:mod:`medvol.data.cache_split` (names, split, label classes of a new manifest), this module (the
workers and the commit: :func:`build_cache`), :mod:`medvol.data.cache_read` (readers, export).
Every name is importable from here.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import medvol
from medvol.data.cache_read import (_export, _load, _read_cached, cache_volumes, entry_geometry,  # noqa: F401
                                    entry_labels, export_nifti, load_entry, load_labels)
from medvol.data.cache_split import (LITS_LABELS, SPLIT_DEFAULTS, SPLIT_OPTIONS, _assign_names,  # noqa: F401
                                     _assign_split, _changes, _format_value, _new_manifest,
                                     _resolve_mask_labels, _split_settings, parse_mask_labels)
from medvol.data.cache_store import (GEOMETRY_KEYS, LABELS_SUFFIX, LOCK_NAME, MANIFEST,  # noqa: F401
                                     MANIFEST_FORMAT, MANIFEST_TMP, PENDING, VOLUME_DIR, CacheLock,
                                     _check_entry_names, _committed_arrays, _listed_files,
                                     _manifest_identity, _old_cache, _reason, clean_temporaries, entry_file,
                                     load_manifest, worker_init)
from medvol.data.discover import discover, find_labels
from medvol.data.io import Volume, checksum, read_volume  # noqa: F401
from medvol.data.preprocess import PreprocessParams, preprocess_with_info
from medvol.data.provenance import refuse_synthetic_sources, source_marks
from medvol.errors import MedvolError
from medvol.outputs import is_temp_name, safe_name

log = logging.getLogger(__name__)


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
    datalist = _datalist(src)
    if datalist is not None:  # a Decathlon dataset.json names its images and label maps
        sources = [item.source.resolve() for item in datalist.items]
        listed = {str(item.source.resolve()): item.labels for item in datalist.items}
        if mask_labels is None and labels and datalist.mask_labels:
            mask_labels = datalist.mask_labels
    else:
        sources = [s.resolve() for s in discover(list(src) if isinstance(src, (list, tuple)) else src)]
    marks = source_marks(sources)
    if not allow_synthetic:
        refuse_synthetic_sources(marks)
    if mask_labels is not None and not labels:
        raise MedvolError("--mask-labels names label classes, --no-labels drops the label maps: give one of them")
    label_files: dict[str, Path | None] = {}
    for source in sources:
        found = (listed[str(source)] if datalist is not None else find_labels(source)) if labels else None
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


def _datalist(src):
    """The :class:`medvol.data.layouts.Layout` of a datalist JSON source (a ``dataset.json``, or a
    folder holding one), else None."""
    from medvol.data.layouts import read_datalist

    if isinstance(src, (list, tuple)):
        return None
    path = Path(src)
    if path.is_dir() and (path / "dataset.json").is_file():
        path = path / "dataset.json"
    if path.is_file() and path.suffix.lower() == ".json":
        return read_datalist(path, volumes=True)
    return None


def _build_locked(src, sources: list[Path], dst: Path, params: PreprocessParams, *, workers: int, strict: bool,
                  split_given: dict[str, Any], reader: str, progress: bool, overwrite: bool,
                  marks: dict[str, dict[str, Any]], label_files: dict[str, Path | None],
                  mask_labels: Sequence[str] | None) -> CacheSummary:
    volume_dir = dst / VOLUME_DIR
    old, damaged = _old_cache(dst, overwrite)
    if old is not None and old.get("dims") == 2 and old["volumes"] and not overwrite:
        raise MedvolError(f"cache {dst} is a 2D image cache ({len(old['volumes'])} image(s)); volumes cannot grow it: "
                          "use another --dst, or --overwrite to replace it")
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
                                                     initializer=worker_init))
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
