"""The preprocessed-volume cache: one ``.npy`` per volume plus ``manifest.json``.

Layout of a cache folder::

    manifest.json          what every array is and where it came from (below)
    volumes/<name>.npy     float32 (S, S, S) in [-1, 1]

The manifest records, per volume: the source path, its SHA-256 (over all of its files), size and
mtime, the original shape/spacing/origin/direction, the output spacing, the split (``train`` or
``val``) and fold index; globally: every preprocessing parameter (with the pipeline version), the
medvol version and the split settings. Re-running with the same parameters skips every volume whose
source checksum and array are unchanged (an unchanged size and mtime reuse the recorded checksum).

The split is seeded: volumes (sorted by name) are shuffled with ``seed`` and dealt round-robin into
``round(1 / val_fraction)`` folds (10 for 90/10); fold ``val_fold`` is validation. A dataset of a
single volume is all training.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import medvol
from medvol.data.discover import discover
from medvol.data.io import checksum, read_volume, volume_stem
from medvol.data.preprocess import PreprocessParams, preprocess_with_info
from medvol.errors import MedvolError
from medvol.utils import atomic_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VOLUME_DIR = "volumes"
MANIFEST_FORMAT = 1


@dataclasses.dataclass
class CacheSummary:
    """What :func:`build_cache` did.

    Attributes:
        path: the cache folder.
        manifest: the manifest written (as loaded by :func:`load_manifest`).
        processed: names of volumes preprocessed in this run.
        reused: names of volumes skipped because they were already done with the same parameters.
        failed: ``(source, one-line reason)`` of volumes skipped as unreadable or invalid.
    """

    path: Path
    manifest: dict[str, Any]
    processed: list[str]
    reused: list[str]
    failed: list[tuple[str, str]]


def load_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``cache_dir/manifest.json``.

    Raises:
        MedvolError: the folder or manifest is missing or unreadable (names the path).
    """
    path = Path(cache_dir) / MANIFEST
    if not Path(cache_dir).is_dir():
        raise MedvolError(f"{cache_dir}: no such cache folder (build one with `medvol preprocess`)")
    if not path.is_file():
        raise MedvolError(f"{path}: missing; {cache_dir} is not a medvol cache (run `medvol preprocess`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or "volumes" not in manifest or "params" not in manifest:
        raise MedvolError(f"{path}: not a medvol cache manifest")
    return manifest


def _unique_names(sources: Sequence[Path]) -> list[str]:
    stems = [volume_stem(s) for s in sources]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    # Shared stems (e.g. DICOM folders all named "CT") get a short hash of the full path.
    return [stem if counts[stem] == 1 else f"{stem}-{hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]}"
            for stem, src in zip(stems, sources)]


def _source_stat(source: Path) -> tuple[int, int]:
    stat = source.stat()
    if source.is_dir():
        files = [f.stat() for f in sorted(source.iterdir()) if f.is_file()]
        return sum(f.st_size for f in files), max((f.st_mtime_ns for f in files), default=stat.st_mtime_ns)
    return stat.st_size, stat.st_mtime_ns


def _process_one(source: str, out_file: str, params_dict: dict, reader: str) -> dict[str, Any]:
    """Worker: read, preprocess and save one volume. Returns its manifest entry or an error."""
    try:
        params = PreprocessParams.from_dict(params_dict)
        path = Path(source)
        size, mtime = _source_stat(path)
        digest = checksum(path)
        volume = read_volume(path, reader=reader)
        array, info = preprocess_with_info(volume, params)
        with atomic_path(out_file) as tmp:
            # np.save appends .npy to names without it; the temp name keeps the suffix.
            np.save(tmp, array)
        return {
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
            "shape": list(array.shape),
            "medvol_version": medvol.__version__,
        }
    except MedvolError as error:
        return {"error": str(error)}
    except Exception as error:  # a worker must report, never die: the run names the bad volume
        return {"error": f"{source}: {type(error).__name__}: {error}".splitlines()[0]}


def _worker_init() -> None:
    # One thread per worker: the processes already use every core.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _assign_split(names: list[str], seed: int, val_fraction: float, val_fold: int) -> dict[str, tuple[int, str]]:
    folds = max(2, int(round(1.0 / val_fraction)))
    order = np.random.default_rng(seed).permutation(len(names))
    result = {}
    for position, index in enumerate(order):
        fold = position % folds
        result[names[index]] = (fold, "val" if fold == val_fold and len(names) > 1 else "train")
    return result


def build_cache(src: str | os.PathLike | Sequence[str | os.PathLike], dst: str | os.PathLike,
                params: PreprocessParams, *, workers: int = 1, strict: bool = False, seed: int = 0,
                val_fraction: float = 0.1, val_fold: int = 0, reader: str = "auto",
                progress: bool = False) -> CacheSummary:
    """Preprocess every volume of ``src`` into the cache folder ``dst``.

    Args:
        src: anything :func:`medvol.data.discover.discover` accepts, or a list of paths.
        dst: the cache folder (created; an existing cache is updated in place).
        params: the preprocessing parameters.
        workers: worker processes (1 runs in this process).
        strict: fail the run on the first bad volume (default: report it and skip it).
        seed, val_fraction, val_fold: the train/validation split (module docstring).
        reader: passed to :func:`medvol.data.io.read_volume`.
        progress: show a tqdm progress bar on stderr.

    Returns:
        A :class:`CacheSummary`.

    Raises:
        MedvolError: bad arguments, no volumes found, every volume failed, or under ``strict`` the
            first bad volume (named). Files written by a failed strict run are removed and the
            previous manifest is left untouched.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MedvolError(f"invalid worker count {workers!r} (--workers): expected an integer >= 1")
    if not 0.0 < val_fraction < 1.0:
        raise MedvolError(f"invalid validation fraction {val_fraction!r} (--val-fraction): expected 0 < f < 1")
    folds = max(2, int(round(1.0 / val_fraction)))
    if not 0 <= val_fold < folds:
        raise MedvolError(f"invalid validation fold {val_fold!r} (--val-fold): expected 0..{folds - 1}")
    sources = [s.resolve() for s in discover(list(src) if isinstance(src, (list, tuple)) else src)]
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise MedvolError(f"{dst}: exists and is not a folder (--dst)")
    volume_dir = dst / VOLUME_DIR
    volume_dir.mkdir(parents=True, exist_ok=True)

    old = load_manifest(dst) if (dst / MANIFEST).is_file() else None
    params_dict = params.to_dict()
    same_params = old is not None and old.get("params") == params_dict
    old_by_source = {v["source"]: v for v in old["volumes"]} if same_params else {}

    names = _unique_names(sources)
    entries: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, Path]] = []
    reused: list[str] = []
    for name, source in zip(names, sources):
        previous = old_by_source.get(str(source))
        out_file = volume_dir / f"{name}.npy"
        if previous is not None and previous.get("name") == name and out_file.is_file():
            size, mtime = _source_stat(source)
            unchanged = (size, mtime) == (previous.get("source_size"), previous.get("source_mtime_ns"))
            if unchanged or checksum(source) == previous["checksum"]:
                entries[name] = dict(previous, source_size=size, source_mtime_ns=mtime)
                reused.append(name)
                continue
        todo.append((name, source))

    processed: list[str] = []
    failed: list[tuple[str, str]] = []
    # Workers write hidden pending files; they replace the cache's arrays only once the run has
    # succeeded, so a failed (strict or interrupted) run leaves the previous cache intact.
    jobs = [(name, str(source), str(volume_dir / f".{name}.pending.npy")) for name, source in todo]
    pool = None
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="preprocess", unit="vol", disable=not progress or not jobs,
                   file=sys.stderr)
        if workers > 1 and len(jobs) > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            if method == "fork":
                # Imported once here, MONAI and SimpleITK are shared by the forked workers instead
                # of being imported by each (seconds apiece).
                import monai.transforms  # noqa: F401
                import SimpleITK  # noqa: F401
            pool = futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                               mp_context=multiprocessing.get_context(method),
                                               initializer=_worker_init)
            pending = {pool.submit(_process_one, source, out, params_dict, reader): (name, source, out)
                       for name, source, out in jobs}
            results = ((pending[f], f.result()) for f in futures.as_completed(pending))
        else:
            results = (((name, source, out), _process_one(source, out, params_dict, reader))
                       for name, source, out in jobs)
        for (name, source, out), result in results:
            bar.update(1)
            if "error" in result:
                if strict:
                    raise MedvolError(result["error"])
                log.warning("skipped %s", result["error"])
                failed.append((source, result["error"]))
                continue
            entries[name] = dict(result, name=name, file=f"{VOLUME_DIR}/{name}.npy")
            processed.append(name)
        bar.close()
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        for _, _, out in jobs:
            Path(out).unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)

    if not entries:
        for _, _, out in jobs:
            Path(out).unlink(missing_ok=True)
        reasons = "; ".join(reason for _, reason in failed[:3])
        raise MedvolError(f"no volume of {src} could be preprocessed ({len(failed)} failed: {reasons})")

    ordered = sorted(entries)
    split = _assign_split(ordered, seed, val_fraction, val_fold)
    volumes = []
    for name in ordered:
        fold, which = split[name]
        volumes.append(dict(entries[name], fold=fold, split=which, label=int(entries[name].get("label", 0))))
    manifest = {
        "format": MANIFEST_FORMAT,
        "medvol_version": medvol.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": [str(s) for s in src] if isinstance(src, (list, tuple)) else str(src),
        "params": params_dict,
        "split": {"seed": seed, "val_fraction": val_fraction, "folds": folds, "val_fold": val_fold,
                  "train": sum(v["split"] == "train" for v in volumes),
                  "val": sum(v["split"] == "val" for v in volumes)},
        "volumes": volumes,
        "failed": [{"source": s, "error": e} for s, e in failed],
    }
    for name, _, out in jobs:
        if name in entries:
            os.replace(out, volume_dir / f"{name}.npy")
    with atomic_path(dst / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    # Arrays of volumes no longer in the source set (or of another name) do not belong to the cache.
    listed = {f"{name}.npy" for name in ordered}
    for stale in volume_dir.glob("*.npy"):
        if stale.name not in listed and not stale.name.startswith("."):
            stale.unlink()
    return CacheSummary(path=dst, manifest=manifest, processed=processed, reused=reused, failed=failed)
