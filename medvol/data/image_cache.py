"""The 2D image cache: one ``.npy`` per image (or per kept slice of a volume) plus ``manifest.json``.

The same folder, manifest, lock, commit and refusals as the 3D cache (:mod:`medvol.data.cache`),
built from per-file workers (:mod:`medvol.data.image_prep`, with :class:`ImageParams`),
with 2D arrays: ``volumes/<name>.npy`` float32 ``(C, S, S)`` in [-1, 1] (C = 1 grey, 3 RGB) and
``volumes/<name>_labels.npy`` uint8 ``(S, S)`` where the image has a mask. The manifest says
``"dims": 2`` (and ``"format": 4``, which a medvol that reads only 3D caches refuses).

Sources (:class:`ImageParams` ``source``):

- ``"images"``: 2D files (:mod:`medvol.data.images`), each resized to S x S;
- ``"slices"``: the native axial slices of volumes (LiTS-style NIfTI), each resized to S x S
  bilinearly, as the liver-tumour thesis did (512 -> 64), instead of resampling the volume into a
  padded cube. The volume is reoriented to LPS first (axial slices inferior -> superior, rows
  anterior -> posterior); CT is windowed (``window``), MR scaled by the volume's percentiles.

Layouts, masks, dataset splits and classes: :mod:`medvol.data.layouts`.

Selection, recorded in the parameters (a cache has one rule): with ``select_class`` C every image
gets the class label 1 if its mask (at native resolution) has a pixel labelled C, else 0 (the
thesis: a tumour slice has a pixel labelled 2); ``keep`` ``"with"`` / ``"without"`` keeps only one
class, so that one cache per class is one run per class. ``fraction`` keeps each image with that
probability, decided by a hash of ``(fraction_seed, name)``: the same images whichever run adds
them, so a grown cache equals one built at once.

Splits: the dataset's (split folders, a datalist; ``split="dataset"``) or seeded
(``split="seeded"``): sources are dealt into folds as in the 3D cache, and the slices of one volume
always share its fold (slices of one patient never straddle train and validation). ``"auto"``:
the dataset's where the layout defines one. The manifest's ``split`` records the mode.

Each entry records its source (checksum, size, mtime), the slice index (``slice``), the original
shape and spacing, ``spacing`` (row, column mm of the cached pixels; pixel units where the file
has none: ``"spacing_unit": "pixel"``), ``scaled_from`` (the interval mapped to [-1, 1]), its
class ``label`` (:func:`read_image_labels`), ``label_values`` (mask ids present), the split, and
whether it is synthetic.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import medvol
from medvol.data.cache_store import (LABELS_SUFFIX, MANIFEST, PENDING, VOLUME_DIR, CacheLock, _listed_files,
                                     _manifest_identity, _old_cache, _reason, clean_temporaries, entry_file,
                                     load_manifest, worker_init)
from medvol.data.cache_split import (LITS_LABELS, SPLIT_DEFAULTS, _assign_names, _assign_split, _changes,
                                     _split_settings)
from medvol.data.image_prep import ImageParams, _pending, _process_source, _source_stat
from medvol.data.images import image_stem
from medvol.errors import MedvolError
from medvol.outputs import is_temp_name, safe_name

log = logging.getLogger(__name__)

#: The manifest format of 2D caches (``"dims": 2``); 3D caches stay at format 3.
IMAGE_MANIFEST_FORMAT = 4
SPLIT_MODES = ("auto", "dataset", "seeded")


@dataclasses.dataclass
class ImageCacheSummary:
    """What :func:`build_image_cache` did (as :class:`medvol.data.cache.CacheSummary`; names are
    entry names, ``sources_*`` count source files)."""

    path: Path
    manifest: dict[str, Any]
    processed: list[str]
    reused: list[str]
    failed: list[tuple[str, str]]
    dropped: int = 0
    replaced: str | None = None
    cleaned: list[Path] = dataclasses.field(default_factory=list)


def is_image_cache(manifest: dict[str, Any]) -> bool:
    """Whether a loaded manifest is a 2D image cache's."""
    return manifest.get("dims") == 2


def _image_marks(item_source: Path, params: ImageParams) -> dict[str, Any]:
    """``{"synthetic": bool[, "provenance"]}`` of a source: what medvol marks generated files with
    (a sidecar ``X.json`` or ``X.png.json``, a ``generated.json`` listing; volumes' headers too)."""
    from medvol.data.images import image_stem
    from medvol.data.provenance import LISTING, listed_record, source_marks

    from medvol.data.images import VOLUME_IMAGE_SUFFIXES
    from medvol.data.io import volume_suffix

    if params.source == "slices" or volume_suffix(item_source) in VOLUME_IMAGE_SUFFIXES:
        return source_marks([item_source])[str(item_source)]  # headers, sidecar, listing
    evidence, record = [], None
    sides = (item_source.with_name(f"{image_stem(item_source)}.json"),
             item_source.with_name(f"{item_source.name}.json"))
    for side in sides:
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("synthetic") is True:
            evidence.append(f"sidecar {side.name}")
            record = data
    listed = listed_record(item_source)
    if listed is not None:
        evidence.append(f"listed in {item_source.parent / LISTING}")
        record = record or listed
    if not evidence:
        return {"synthetic": False}
    return {"synthetic": True, "provenance": dict(record or {}, evidence=evidence)}


def _unchanged(entries: list[dict[str, Any]], source: Path, labels: Path | None, dst: Path, size: int) -> bool:
    """Whether the cached entries of ``source`` are still its (and its mask's) images."""
    from medvol.data.io import checksum

    first = entries[0]
    if (labels is None) != ("labels_source" not in first) or (labels is not None and
                                                               first.get("labels_source") != str(labels)):
        return False
    for entry in entries:
        for key in ("file", "labels"):
            if isinstance(entry.get(key), str) and not _array_ok(entry_file(dst, entry, key), size, key):
                return False
    pairs = [(source, "source_size", "source_mtime_ns", "checksum")]
    if labels is not None:
        pairs.append((labels, "labels_size", "labels_mtime_ns", "labels_checksum"))
    for path, size_key, mtime_key, sum_key in pairs:
        if _source_stat(path) != (first.get(size_key), first.get(mtime_key)) and checksum(path) != first.get(sum_key):
            return False
    return True


def _array_ok(path: Path, size: int, key: str) -> bool:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    if key == "labels":
        return array.shape == (size, size) and array.dtype == np.uint8
    return array.ndim == 3 and array.shape[1:] == (size, size) and array.dtype == np.float32


def build_image_cache(src: str | os.PathLike, dst: str | os.PathLike, params: ImageParams, *, workers: int = 1,
                      strict: bool = False, split: str = "auto", seed: int | None = None,
                      val_fraction: float | None = None, progress: bool = False, overwrite: bool = False,
                      wait: float | None = None, on_wait: Callable[[str], None] | None = None,
                      allow_synthetic: bool = False, labels: bool = True,
                      mask_labels: Sequence[str] | None = None) -> ImageCacheSummary:
    """Cache the 2D images of ``src`` (or the axial slices of its volumes) in ``dst`` (module docstring).

    Args:
        src: a folder, an image or volume file, or a datalist JSON (:func:`medvol.data.layouts.find_items`).
        dst: the cache folder (created; an existing 2D cache with the same parameters grows).
        params: :class:`ImageParams`.
        workers: worker processes (1 runs here).
        strict: fail on the first bad file (default: report and skip it).
        split: ``"auto"``, ``"dataset"`` (the layout's split; refused where it has none) or ``"seeded"``.
        seed, val_fraction: the seeded split (None: the cache's, 0 and 0.1 for a new one).
        progress: a progress bar on stderr.
        overwrite: replace a cache made with other parameters or split settings (or a damaged one).
        wait, on_wait: waiting for another run holding the cache (:class:`medvol.data.cache.CacheLock`).
        allow_synthetic: accept images marked synthetic (their entries say so, always in train).
        labels: read the masks paired with the images; False ignores them.
        mask_labels: names of mask ids 1..K (default: the datalist's ``labels``, else ``label_<i>``).

    Returns:
        An :class:`ImageCacheSummary`.

    Raises:
        MedvolError: a bad option, no images, every file failed, a 3D cache or one with other
            parameters at ``dst`` (without ``overwrite``), a name escaping its folder, a synthetic
            image (without ``allow_synthetic``), a failed write. A failed run leaves the cache as it was.
    """
    from medvol.data.layouts import find_items
    from medvol.data.provenance import refuse_synthetic_sources

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MedvolError(f"invalid worker count {workers!r} (--workers): expected an integer >= 1")
    if split not in SPLIT_MODES:
        raise MedvolError(f"--split {split!r}: choose one of {', '.join(SPLIT_MODES)}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise MedvolError(f"invalid validation fraction {val_fraction!r} (--val-fraction): expected 0 < f < 1")
    if mask_labels is not None and not labels:
        raise MedvolError("--mask-labels names label classes, --no-labels drops the masks: give one of them")
    if params.select_class is not None and not labels:
        raise MedvolError("--select-class reads the masks, --no-labels drops them: give one of them")
    layout = find_items(src, volumes=params.source == "slices", classes=params.classes)
    items = layout.items
    for item in items:
        item.source = item.source.resolve()
        item.labels = item.labels.resolve() if labels and item.labels is not None else None
    seen: dict[str, int] = {}
    for item in items:
        seen[str(item.source)] = seen.get(str(item.source), 0) + 1
    twice = [s for s, n in seen.items() if n > 1]
    if twice:
        raise MedvolError(f"{twice[0]}: listed {seen[twice[0]]} times in {src}; each image once")
    dataset_split = any(item.split is not None for item in items)
    mode = ("dataset" if dataset_split else "seeded") if split == "auto" else split
    if mode == "dataset" and not dataset_split:
        raise MedvolError(f"--split dataset: {src} defines no split (no train/test folders, no datalist)")
    if mode == "dataset" and (seed is not None or val_fraction is not None):
        raise MedvolError("--seed / --val-fraction deal a seeded split; the dataset's own split is used "
                          "(give --split seeded to deal one)")
    marks = {}
    for item in items:
        marks[str(item.source)] = _image_marks(item.source, params)
    if not allow_synthetic:
        refuse_synthetic_sources(marks)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise MedvolError(f"{dst}: exists and is not a folder (--dst)")
    try:
        (dst / VOLUME_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"{dst}: cannot create the cache folder ({_reason(error)})") from None
    given_names = list(mask_labels) if mask_labels is not None else (layout.mask_labels if labels else None)
    with CacheLock(dst, wait=wait, on_wait=on_wait):
        cleaned = clean_temporaries(dst)
        before = _manifest_identity(dst)
        try:
            summary = _build_locked(src, items, layout, dst, params, workers=workers, strict=strict, mode=mode,
                                    split_given={"seed": seed, "val_fraction": val_fraction, "val_fold": None},
                                    progress=progress, overwrite=overwrite, marks=marks, mask_labels=given_names)
        except KeyboardInterrupt:
            state = "is unchanged (this run's images were not kept)" if _manifest_identity(dst) == before else \
                "holds this run's images (run it again to see them reused)"
            raise KeyboardInterrupt(f"interrupted (Ctrl-C); the cache {dst} {state}") from None
    summary.cleaned = cleaned
    return summary


def _build_locked(src, items, layout, dst: Path, params: ImageParams, *, workers: int, strict: bool, mode: str,
                  split_given: dict[str, Any], progress: bool, overwrite: bool, marks: dict[str, dict],
                  mask_labels: Sequence[str] | None) -> ImageCacheSummary:
    from medvol.data.cache import _commit

    volume_dir = dst / VOLUME_DIR
    old, damaged = _old_cache(dst, overwrite)
    params_dict = params.to_dict()
    replaced = f"replaced {damaged}" if damaged is not None else None
    if old is not None and old["volumes"] and not is_image_cache(old):
        if not overwrite:
            raise MedvolError(f"cache {dst} is a 3D volume cache ({len(old['volumes'])} volume(s)); a 2D image cache "
                              "cannot grow it: use another --dst, or --overwrite to replace it")
        replaced, old = f"replaced a 3D cache of {len(old['volumes'])} volume(s)", dict(old, volumes=[])
    old_entries = list(old["volumes"]) if old is not None else []
    if old is not None and old_entries and old["params"] != params_dict:
        changes = _changes(old["params"], params_dict)
        if not overwrite:
            raise MedvolError(f"cache {dst} holds {len(old_entries)} image(s) made with other parameters ({changes}); "
                              "refusing to mix them: give the cache's parameters, another --dst, or --overwrite")
        replaced, old_entries = f"replaced the cache's {len(old_entries)} image(s) made with other parameters " \
                                f"({changes})", []
    old_mode = (old or {}).get("split", {}).get("mode") if old_entries else None
    if old_mode is not None and old_mode != mode:
        if not overwrite:
            raise MedvolError(f"cache {dst} is split by {old_mode}, this run by {mode}: give --split {old_mode}, "
                              "or --overwrite to deal the cache anew")
        replaced = replaced or f"dealt the cache's {len(old_entries)} image(s) anew ({mode} split)"
    if old_entries and layout.classes is not None and old.get("classes") not in (None, layout.classes):
        raise MedvolError(f"cache {dst} has the classes {','.join(old['classes'])}, {src} "
                          f"{','.join(layout.classes)}: use another --dst, or --overwrite")
    settings, redeal = _split_settings(old if old_entries else None, split_given, bool(old_entries),
                                       overwrite, dst) if mode == "seeded" else (dict(SPLIT_DEFAULTS), False)
    redeal = redeal or (replaced is not None and old_mode != mode)

    by_source: dict[str, list[dict]] = {}
    for entry in old_entries:
        by_source.setdefault(entry["source"], []).append(entry)
    listed_before = _listed_files(old) if old is not None else set()
    occupied = set() if damaged is not None else {p.name for p in volume_dir.iterdir() if not is_temp_name(p.name)
                                                   and f"{VOLUME_DIR}/{p.name}" not in listed_before}
    known = {}
    for entry in old_entries:
        known.setdefault(entry["source"], entry.get("group", entry["name"]))
    names = _assign_names([i.source for i in items], known, occupied, volume_dir, stem=image_stem)
    kept: dict[str, dict] = {e["name"]: e for e in old_entries}
    todo, reused = [], []
    for name, item in zip(names, items):
        previous = by_source.get(str(item.source))
        if previous and not overwrite and _unchanged(previous, item.source, item.labels, dst, params.size):
            for entry in previous:
                kept[entry["name"]] = dict({k: v for k, v in entry.items() if k != "provenance"},
                                           **marks[str(item.source)])
                if item.split is not None:
                    kept[entry["name"]].update(dataset_split=item.dataset_split, dataset_split_as=item.split)
            reused += [e["name"] for e in previous]
            continue
        for entry in previous or []:
            kept.pop(entry["name"], None)
        todo.append((name, item))
    for name, _ in todo:  # the final names of this run's sources: none may be a link out of volumes/
        safe_name(volume_dir, f"{name}.npy", f"{dst}: cache array")
    processed, failed, pending, dropped = [], [], [], 0
    pools: list[futures.ProcessPoolExecutor] = []
    jobs = [(name, str(item.source), None if item.labels is None else str(item.labels), params_dict,
             str(volume_dir), item.label) for name, item in todo]
    by_name = {name: item for name, item in todo}

    def run_jobs():
        if workers > 1 and len(jobs) > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            if method == "fork":
                # Imported once here and shared by the forked workers instead of imported by each.
                import torch  # noqa: F401 - resizing

                from medvol.data import images  # noqa: F401
                if params.source == "slices":
                    import SimpleITK  # noqa: F401
            pools.append(futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                                     mp_context=multiprocessing.get_context(method),
                                                     initializer=worker_init))
            running = {pools[0].submit(_process_source, *job): job for job in jobs}
            for done in futures.as_completed(running):
                yield running[done], done.result()
        else:
            for job in jobs:
                yield job, _process_source(*job)

    try:
        results = run_jobs()
        if progress and jobs:
            from medvol.progress import track

            results = track(results, len(jobs), "preprocess", "file")
        for job, result in results:
            name, source = job[0], job[1]
            if "error" in result:
                if strict or result.get("fatal"):
                    raise MedvolError(result["error"])
                failed.append((source, result["error"]))
                continue
            dropped += result["dropped"]
            item = by_name[name]
            for entry in result["entries"]:
                if entry["name"] in kept:
                    raise MedvolError(f"{source}: its image name {entry['name']!r} is taken by another image of the "
                                      "cache; rename one of the files")
                if entry["name"].endswith(LABELS_SUFFIX):
                    raise MedvolError(f"{source}: its image name {entry['name']!r} ends like a label map's; rename it")
                entry.update(group=name, **marks[source])
                if item.split is not None:
                    entry.update(dataset_split=item.dataset_split, dataset_split_as=item.split)
                for key in ("file", "labels"):
                    final = entry.get(key)
                    if isinstance(final, str):  # a link out of volumes/ is refused before anything is renamed
                        safe_name(volume_dir, final.rpartition("/")[2], f"{dst}: cache array")
                    if isinstance(final, str) and final.rpartition("/")[2] in occupied:
                        raise MedvolError(f"{volume_dir / final.rpartition('/')[2]}: exists and the cache does not "
                                          "list it; refusing to replace a file medvol did not write (move it away)")
                kept[entry["name"]] = entry
                processed.append(entry["name"])
                pending.append((str(_pending(volume_dir, entry["name"])), volume_dir / f"{entry['name']}.npy"))
                if "labels" in entry:
                    pending.append((str(_pending(volume_dir, entry["name"], True)),
                                    volume_dir / f"{entry['name']}{LABELS_SUFFIX}.npy"))
        if not kept:
            if failed:
                reasons = "; ".join(reason for _, reason in failed[:3])
                raise MedvolError(f"no image of {src} could be cached ({len(failed)} failed: {reasons})")
            raise MedvolError(f"no image of {src} was kept ({dropped} left out by --keep / --fraction)")
        shapes = {e["channels"] for e in kept.values()}
        if len(shapes) > 1:
            raise MedvolError(f"{dst}: images of {sorted(shapes)} channels; use --colour grey or rgb for all")
        manifest = _new_manifest(old if old_entries else None, kept, src, params_dict, settings, redeal, mode,
                                 failed, layout, mask_labels, dst)
        _commit(dst, manifest, pending)
    except BaseException:
        if pools:
            pools.pop().shutdown(wait=True, cancel_futures=True)
        for path, _ in pending:
            Path(path).unlink(missing_ok=True)
        for name in by_name:
            for path in volume_dir.glob(f".{name}*{PENDING}"):
                path.unlink(missing_ok=True)
        raise
    finally:
        if pools:
            pools.pop().shutdown(wait=True)
    # Arrays the old manifest listed and the new one does not (a redone source's slices no longer
    # kept, a replaced cache): medvol's own files, removed only now that the new manifest is in place.
    listed = _listed_files(manifest)
    before = sorted(volume_dir.glob("[!.]*.npy")) if damaged is not None else \
        [volume_dir / f.rpartition("/")[2] for f in sorted(listed_before)]
    for path in before:
        if f"{VOLUME_DIR}/{path.name}" not in listed and (path.is_file() or path.is_symlink()):
            path.unlink()
    return ImageCacheSummary(path=dst, manifest=manifest, processed=processed, reused=reused, failed=failed,
                             dropped=dropped, replaced=replaced)


def _new_manifest(old, kept, src, params_dict, settings, redeal, mode, failed, layout, mask_labels, dst) -> dict:
    names = sorted(kept)
    groups = sorted({kept[n].get("group", n) for n in names})
    if mode == "dataset":
        for name in names:
            entry = kept[name]
            which = entry.get("dataset_split_as", "train")
            entry.update(split=which if entry.get("synthetic") is not True else "train", fold=int(which == "val"))
        split = {"mode": "dataset"}
    else:
        folds = max(2, int(round(1.0 / settings["val_fraction"])))
        fold_of = {} if redeal or old is None else {kept[n].get("group", n): kept[n]["fold"] for n in names
                                                     if isinstance(kept[n].get("fold"), int) and "fold" in kept[n]}
        new = [g for g in groups if g not in fold_of]
        dealt = _assign_split(new, settings["seed"], settings["val_fraction"], settings["val_fold"],
                              start=len(fold_of))
        fold_of.update({g: fold for g, (fold, _) in dealt.items()})
        for name in names:
            entry = kept[name]
            fold = fold_of[entry.get("group", name)]
            real = entry.get("synthetic") is not True
            entry.update(fold=fold, split="val" if fold == settings["val_fold"] and len(groups) > 1 and real
                         else "train")
        split = {"mode": "seeded", **settings, "folds": folds}
    volumes = [kept[n] for n in names]
    split.update(train=sum(v["split"] == "train" for v in volumes), val=sum(v["split"] == "val" for v in volumes))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    earlier = old.get("sources", []) if old is not None else []
    done = {v["source"] for v in volumes}
    earlier_failed = [f for f in (old.get("failed", []) if old is not None else [])
                      if isinstance(f, dict) and f.get("source") not in done]
    manifest = {
        "format": IMAGE_MANIFEST_FORMAT,
        "dims": 2,
        "medvol_version": medvol.__version__,
        "created": old.get("created", now) if old is not None else now,
        "updated": now,
        "sources": list(dict.fromkeys([*earlier, str(src)])),
        "layout": layout.kind,
        "params": params_dict,
        "split": split,
        "volumes": volumes,
        "failed": earlier_failed + [{"source": s, "error": e} for s, e in failed],
        "mask_labels": _mask_names(mask_labels, old, volumes, dst),
    }
    if layout.classes is not None or (old is not None and old.get("classes")):
        manifest["classes"] = layout.classes or old.get("classes")
    elif params_dict.get("select_class") is not None:
        c = params_dict["select_class"]
        manifest["classes"] = [f"without label {c}", f"with label {c}"]
    return manifest


def _mask_names(given, old, volumes, dst) -> list[str] | None:
    highest = max((max(v.get("label_values") or [0]) for v in volumes), default=0)
    if not any("labels" in v for v in volumes):
        return None
    before = (old or {}).get("mask_labels")
    names = list(given) if given else list(before or [])
    labelled = [v for v in volumes if "labels" in v]
    if not names and highest <= len(LITS_LABELS) and all(
            Path(v["labels_source"]).name.lower().startswith("segmentation") for v in labelled):
        names = list(LITS_LABELS)[:max(highest, 1)]  # LiTS segmentation-N: 1 liver, 2 tumour
    if given and before and list(before) != names[: len(before)]:
        raise MedvolError(f"cache {dst} names its labels {','.join(before)}; --mask-labels {','.join(names)} "
                          "differs: give the same names (or more, after them), or --overwrite")
    if given and highest > len(names):
        raise MedvolError(f"a mask holds label {highest}, but --mask-labels names only {len(names)} class(es)")
    return names + [f"label_{i}" for i in range(len(names) + 1, highest + 1)]


def read_image_labels(cache_dir: str | os.PathLike, split: str = "all") -> dict[str, Any]:
    """The class label of every image of a 2D cache: what a classifier trains on.

    Args:
        cache_dir: a cache built by :func:`build_image_cache`.
        split: ``"train"``, ``"val"`` or ``"all"``.

    Returns:
        ``{"names": [...], "files": [Path, ...], "labels": [int, ...], "classes": [...] or None,
        "splits": [...]}`` in manifest order: ``labels[i]`` indexes ``classes`` (class folders, or
        ``["without label C", "with label C"]`` of ``--select-class C``); ``files[i]`` is the float32
        ``(C, S, S)`` array in [-1, 1].

    Raises:
        MedvolError: not a 2D image cache, an unknown split, a malformed manifest.

    Example:
        >>> found = read_image_labels("tumour_cache", split="train")   # doctest: +SKIP
        >>> found["classes"], sum(found["labels"])                        # doctest: +SKIP
        (['without label 2', 'with label 2'], 412)
    """
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    if not is_image_cache(manifest):
        raise MedvolError(f"{cache_dir}: a 3D volume cache, not a 2D image cache (medvol preprocess --images)")
    if split not in ("train", "val", "all"):
        raise MedvolError(f"unknown split {split!r}: choose one of train, val, all")
    entries = [e for e in manifest["volumes"] if split == "all" or e.get("split") == split]
    return {"names": [e["name"] for e in entries], "files": [entry_file(cache_dir, e) for e in entries],
            "labels": [int(e.get("label", 0)) for e in entries], "classes": manifest.get("classes"),
            "splits": [e.get("split") for e in entries], "manifest": cache_dir / MANIFEST}


__all__ = ["ImageParams", "ImageCacheSummary", "build_image_cache", "is_image_cache", "read_image_labels"]
