"""``medvol study recursive``: train a model on its predecessor's output, generation after generation.

Generation 0 trains on the real training volumes; generation k >= 1 trains on the N volumes that
generation k-1's final checkpoint generated, plus, with ``real_fraction`` f > 0, the same
``round(f * n_train)`` real training volumes every generation (n_train: the real train split;
f = 0.5 keeps half of it, f = 1 all of it, added to the N generated ones). Every generation
trains with the same config and iterations; its seeds follow one rule from ``(seed, k)``
(:func:`.generation.generation_seeds`), so generations differ in their data and in nothing
else that the study chooses. Each is scored against the real validation split (:mod:`.scoring`).

The study folder ``DIR``::

    study.json        the study's identity (resolved config and arguments): a folder made with
                      others is refused
    real/             the real data, domain features and the real-vs-real floor (:mod:`.real`)
    gen_000/ ...      one folder per generation (:mod:`.generation`)
    summary.json, summary.md, scores.png   rewritten after every generation

Running the same command again continues: finished generations are read back, an interrupted one
resumes. ``generations`` is not part of the identity, so a larger K extends a finished study.
A lock (``.medvol-study.lock``) keeps a second run out of ``DIR`` while one runs.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import medvol
from medvol.errors import MedvolError
from medvol.study.recursive.generation import Plan, finished, run_generation
from medvol.study.recursive.real import prepare_real, read_json, write_json
from medvol.utils import torch_threads

log = logging.getLogger("medvol.study")

STUDY_FILE = "study.json"
LOCK_NAME = ".medvol-study.lock"
MODELS_3D = ("crfgan", "hagan")


def check_arguments(generations: Any, real_fraction: Any, n_synthetic: Any, seed: Any, val_fraction: Any,
                    feature_iters: Any, bootstrap: Any) -> None:
    """One-line errors for impossible arguments, before anything is read or written."""
    def integer(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not integer(generations) or generations < 1:
        raise MedvolError(f"--generations {generations!r}: expected an integer >= 1")
    if isinstance(real_fraction, bool) or not isinstance(real_fraction, (int, float)) \
            or not 0.0 <= float(real_fraction) <= 1.0:
        raise MedvolError(f"--real-fraction {real_fraction!r}: expected a number in [0, 1]")
    if n_synthetic is not None and (not integer(n_synthetic) or n_synthetic < 2):
        raise MedvolError(f"--n-synthetic {n_synthetic!r}: expected an integer >= 2 (scores need two volumes)")
    if not integer(seed) or seed < 0:
        raise MedvolError(f"--seed {seed!r}: expected an integer >= 0")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise MedvolError(f"--val-fraction {val_fraction!r}: expected a number in (0, 1)")
    if not integer(feature_iters) or feature_iters < 1:
        raise MedvolError(f"--feature-iters {feature_iters!r}: expected an integer >= 1")
    if not integer(bootstrap) or bootstrap < 0 or bootstrap == 1:
        raise MedvolError(f"--bootstrap {bootstrap!r}: expected 0 (none) or an integer >= 2")


def _identity(config_dict: dict, arguments: dict) -> dict:
    return {"config": config_dict, **arguments}


def _check_identity(root: Path, identity: dict) -> dict | None:
    """The existing study.json, after checking it describes the same study (None: a new study)."""
    path = root / STUDY_FILE
    if not path.exists():
        others = [p.name for p in root.iterdir() if p.name != LOCK_NAME] if root.is_dir() else []
        if others:
            raise MedvolError(f"--out {root}: holds {', '.join(sorted(others)[:3])} but no {STUDY_FILE}; "
                              "choose an empty or new folder")
        return None
    old = read_json(path)
    if old is None or not isinstance(old.get("identity"), dict):
        raise MedvolError(f"{path}: unreadable; this folder cannot be continued (choose another --out)")
    if old["identity"] != identity:
        differ = sorted(k for k in set(old["identity"]) | set(identity)
                        if old["identity"].get(k) != identity.get(k))
        detail = differ
        if "config" in differ:
            c_old, c_new = old["identity"].get("config", {}), identity["config"]
            keys = [f"{s}.{k}" for s in c_new for k in c_new[s] if c_old.get(s, {}).get(k) != c_new[s][k]]
            detail = [d for d in differ if d != "config"] + keys
        raise MedvolError(f"--out {root}: holds a study made with other settings ({', '.join(detail[:4])}); "
                          "run it with its own, or choose another --out")
    return old


def run_recursive_study(config: str | os.PathLike, out: str | os.PathLike, *, generations: int,
                        real_fraction: float = 0.0, n_synthetic: int | None = None, seed: int = 0,
                        val_fraction: float = 0.25, feature_iters: int = 200, bootstrap: int = 20,
                        device: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run (or continue) a recursive-training study (module docstring).

    Args:
        config: a training config (YAML) of a 3D model; its ``data`` section names the real data
            (``phantom``, or a preprocessing cache with train and val splits).
        out: the study folder DIR.
        generations: K, the number of generations (generation 0 included).
        real_fraction: f in [0, 1]; generations k >= 1 also train on ``round(f * n_train)`` real
            training volumes (the same ones every generation).
        n_synthetic: N, volumes each generation generates; default: n_train, so every
            generation learns from as many generated volumes as generation 0 had real ones.
        seed: S, from which every generation's seeds follow.
        val_fraction: the validation share of a phantom source's cache (a given cache keeps its split).
        feature_iters: training iterations of the domain feature network.
        bootstrap: bootstrap rounds of the score intervals (0: none).
        device: generation and evaluation device (default: the config's ``train.device``).
        overrides: config overrides ``--section.key VALUE`` (part of the study's identity).

    Returns:
        The summary (also ``DIR/summary.json``).

    Raises:
        MedvolError: bad arguments, a missing or bad config, a 2D model, a folder holding another
            study or other files, a study running in ``DIR``, or any failure of the steps (named).
    """
    from medvol.config import config_to_dict, load_config
    from medvol.train.distributed import pick_device
    from medvol.train.runfolder import RunFolderLock

    check_arguments(generations, real_fraction, n_synthetic, seed, val_fraction, feature_iters, bootstrap)
    cfg = load_config(config, overrides)
    if cfg.model.name not in MODELS_3D:
        raise MedvolError(f"config {config}: model.name {cfg.model.name} is a 2D model; the recursive study "
                          f"trains 3D models ({', '.join(MODELS_3D)})")
    device = str(pick_device(device or cfg.train.device))
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise MedvolError(f"--out {root}: exists and is not a folder")
    arguments = {"real_fraction": float(real_fraction), "n_synthetic": n_synthetic, "seed": int(seed),
                 "val_fraction": float(val_fraction), "feature_iters": int(feature_iters),
                 "bootstrap": int(bootstrap)}
    identity = _identity(config_to_dict(cfg), arguments)
    lock = RunFolderLock(root, lock_name=LOCK_NAME, holder="medvol study recursive")
    try:
        return _run_locked(root, cfg, identity, config=str(config), generations=generations, device=device)
    finally:
        lock.release()


def _run_locked(root: Path, cfg, identity: dict, *, config: str, generations: int, device: str) -> dict[str, Any]:
    from medvol.study.recursive.report import scores_plot, summary_markdown
    from medvol.study.recursive.scoring import floor_scores

    old = _check_identity(root, identity)
    state = old or {"identity": identity, "created": _now(), "medvol_version": medvol.__version__,
                    "config_path": config}
    state["generations_asked"] = max(int(state.get("generations_asked", 0)), generations)
    write_json(root / STUDY_FILE, state, "study identity")  # first: a folder being filled is this study's
    real = prepare_real(cfg, root / "real", val_fraction=identity["val_fraction"], seed=identity["seed"],
                        feature_iters=identity["feature_iters"],
                        expected_sha256=state.get("real_cache_manifest_sha256"))
    state["real_cache_manifest_sha256"] = real.manifest_sha256
    write_json(root / STUDY_FILE, state, "study identity")

    n_train = len(real.train_files)
    n_synthetic = identity["n_synthetic"] or n_train
    n_kept = int(round(identity["real_fraction"] * n_train))
    # Which real volumes are kept: drawn once from the study seed, the same in every generation.
    order = np.random.default_rng(identity["seed"]).permutation(n_train)
    real_kept = [real.train_files[i] for i in sorted(order[:n_kept])]
    plan = Plan(root=root, cfg=cfg, real=real, n_synthetic=n_synthetic, real_kept=real_kept,
                seed=identity["seed"], bootstrap=identity["bootstrap"], device=device)

    floor_path = root / "real" / "floor.json"
    floor = read_json(floor_path)
    if floor is None:
        log.info("real-vs-real floor: %d train volumes against %d val volumes", min(n_synthetic, n_train),
                 len(real.val_files))
        floor = floor_scores(real, root / "real" / "floor", n=n_synthetic, seed=identity["seed"],
                             bootstrap=identity["bootstrap"], device=device)
        write_json(floor_path, floor, "floor scores")

    study = {
        "config_path": state["config_path"], "model": f"{cfg.model.name}@{cfg.model.size}",
        "iterations": cfg.train.iterations, "real_cache": str(real.cache), "n_real_train": n_train,
        "n_real_val": len(real.val_files), "n_synthetic": n_synthetic, "n_real_kept": n_kept,
        "real_kept": [p.name for p in real_kept], "real_fraction": identity["real_fraction"],
        "seed": identity["seed"], "bootstrap": identity["bootstrap"], "domain_features": str(real.domain),
        "allow_synthetic": "passed by the study itself: False for generation 0, True for k >= 1",
    }
    rows = []
    for k in range(state["generations_asked"]):
        if k >= generations and finished(root, k) is None:
            break  # a shorter command still reports every generation already done
        if finished(root, k) is not None:
            log.info("generation %d: finished earlier (%s), not redone", k, root / f"gen_{k:03d}" / "scores.json")
        rows.append(run_generation(plan, k))
        summary = {"study": study, "floor": floor, "generations": rows,
                   "wall_seconds": sum(r["seconds"]["total"] for r in rows), "updated": _now(),
                   "threads": torch_threads()}
        write_json(root / "summary.json", summary, "study summary")
        from medvol.utils import checked_write

        with checked_write(root / "summary.md", "study summary") as tmp:
            tmp.write_text(summary_markdown(summary), encoding="utf-8")
        scores_plot(root / "scores.png", summary)
    return summary


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
