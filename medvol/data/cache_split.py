"""What a new cache manifest says: volume names, the train/validation split, label class names.

Pure functions of the old manifest and this run's entries (:mod:`medvol.data.cache` calls them
under the lock); the split rule is the one described in :mod:`medvol.data.cache`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import medvol
from medvol.data.cache_store import LABELS_SUFFIX, MANIFEST_FORMAT, VOLUME_DIR
from medvol.data.io import volume_stem
from medvol.errors import MedvolError
from medvol.outputs import plain_name

#: Class names of LiTS label maps (``segmentation-N``: 1 liver, 2 tumour).
LITS_LABELS = ("liver", "tumour")
SPLIT_DEFAULTS = {"seed": 0, "val_fraction": 0.1, "val_fold": 0}
SPLIT_OPTIONS = {"seed": "--seed", "val_fraction": "--val-fraction", "val_fold": "--val-fold"}


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


def _assign_names(sources: Sequence[Path], known: dict[str, str], occupied: set[str] = frozenset(),
                  volume_dir: Path = Path(VOLUME_DIR), stem: Callable[[Path], str] = volume_stem) -> list[str]:
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
    stems = [stem(s) for s in sources]
    new_stems = [base for src, base in zip(sources, stems) if str(src) not in known]
    names = []
    for src, base in zip(sources, stems):
        if str(src) in known:
            names.append(known[str(src)])
            continue
        plain_name(volume_dir, base, f"{src}: its cache name")
        name = base
        if new_stems.count(base) != 1 or base in taken or not free(base):
            name = f"{base}-{hashlib.sha1(str(src).encode()).hexdigest()[:8]}"
            if not free(name):
                raise MedvolError(f"{src}: its cache names {base!r} and {name!r} are both taken by files in "
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
