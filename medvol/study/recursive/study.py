"""``medvol study recursive``: train a model on its predecessor's output, generation after generation.

Generation 0 trains on the real training data; generation k >= 1 trains on the N samples that
generation k-1's final checkpoint generated, plus, with a real fraction f > 0, the same
``round(f * n_train)`` real training volumes every generation (n_train: the real train split's
volumes; a 2D model trains on their slices; f = 0.25 keeps a quarter of them, added to the N
generated samples). Every generation trains with the same config and iterations; its seeds follow
one rule from ``(seed, k)`` (:func:`.generation.generation_seeds`), so generations differ in their
data and in nothing else that the study chooses.

A study runs every seed S of ``seed`` and every fraction f of ``real_fraction``: generation 0 of a
seed is shared by its fractions (it trains on real data only). 3D models are scored with
``medvol evaluate`` against the real val volumes (:mod:`.scoring`); 2D models (unconditional, one
channel) against real val slices on slice factors, modes, pooled-pixel precision / recall and,
when asked, FID (:mod:`.slices`). The summary gives each score's mean over the seeds with a 95 %
Student t interval (:mod:`.aggregate`).

The study folder ``DIR`` (claimed with :func:`medvol.outputs.owned_output`)::

    study.json        the study's identity (resolved config and arguments)
    real/             the real data, (3D) domain features and the real-vs-real floor (:mod:`.real`)
    seed_S/gen_000/, seed_S/real_P/gen_00k/   one folder per generation (:mod:`.generation`)
    summary.json, summary.md, scores.png      rewritten after every generation

Running the same command again continues: finished generations are read back, an interrupted one
resumes. ``generations`` is not part of the identity, so a larger K extends a finished study. A
folder holding another study (or anything else) is refused unless ``overwrite``, which removes
what medvol wrote there and nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import medvol
from medvol.errors import MedvolError
from medvol.study.recursive.generation import Plan, run_generation
from medvol.study.recursive.real import prepare_real, read_json, write_json
from medvol.utils import torch_threads

log = logging.getLogger("medvol.study")

STUDY_FILE = "study.json"
JOB = "study recursive"
#: The shipped default: the learned 32^3 CRF-GAN on phantom volumes (docs/studies.md).
DEFAULT_CONFIG = "studies/recursive_crfgan32"
TOP_FILES = (STUDY_FILE, "summary.json", "summary.md", "scores.png")


def _integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_arguments(generations: Any, real_fraction: Any, n_synthetic: Any, seed: Any, val_fraction: Any,
                    feature_iters: Any, bootstrap: Any, n_score: Any = 512, fid_n: Any = 0) -> tuple[list, list]:
    """One-line errors for impossible arguments, before anything is read or written.

    Returns:
        ``(seeds, fractions)`` as lists (a single value is a list of one).
    """
    if not _integer(generations) or generations < 1:
        raise MedvolError(f"--generations {generations!r}: expected an integer >= 1")
    fractions = _as_list(real_fraction)
    if not fractions:
        raise MedvolError("--real-fraction: expected at least one number in [0, 1]")
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= float(f) <= 1.0:
            raise MedvolError(f"--real-fraction {f!r}: expected numbers in [0, 1]")
    from medvol.study.recursive.generation import fraction_name

    names = [fraction_name(f) for f in fractions]
    if len(set(names)) != len(names):
        raise MedvolError(f"--real-fraction {','.join(f'{f:g}' for f in fractions)}: two fractions share a "
                          "percentage (each is stored as real_P, P = 100 f rounded); give distinct ones")
    seeds = _as_list(seed)
    if not seeds or not all(_integer(s) and s >= 0 for s in seeds):
        raise MedvolError(f"--seed {seed!r}: expected integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise MedvolError(f"--seed {seed!r}: a seed is given twice")
    if n_synthetic is not None and (not _integer(n_synthetic) or n_synthetic < 2):
        raise MedvolError(f"--n-synthetic {n_synthetic!r}: expected an integer >= 2 (scores need two samples)")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise MedvolError(f"--val-fraction {val_fraction!r}: expected a number in (0, 1)")
    if not _integer(feature_iters) or feature_iters < 1:
        raise MedvolError(f"--feature-iters {feature_iters!r}: expected an integer >= 1")
    if not _integer(bootstrap) or bootstrap < 0 or bootstrap == 1:
        raise MedvolError(f"--bootstrap {bootstrap!r}: expected 0 (none) or an integer >= 2")
    if not _integer(n_score) or n_score < 6:
        raise MedvolError(f"--n-score {n_score!r}: expected an integer >= 6")
    if not _integer(fid_n) or fid_n < 0 or fid_n == 1 or fid_n > n_score:
        raise MedvolError(f"--fid-n {fid_n!r}: expected 0 (no FID) or an integer in [2, --n-score {n_score}]")
    return [int(s) for s in seeds], [float(f) for f in fractions]


def _check_identity(root: Path, identity: dict, overwrite: bool) -> dict | None:
    """The existing study.json when it describes the same study; None for a new study.

    A folder of another study is refused here with the settings that differ (without
    ``overwrite``); anything else in the folder is :func:`medvol.outputs.owned_output`'s to judge.
    """
    old = read_json(root / STUDY_FILE) if root.is_dir() else None
    if old is None or not isinstance(old.get("identity"), dict):
        return None
    if old["identity"] == identity:
        return old
    if overwrite:
        return None
    differ = sorted(k for k in set(old["identity"]) | set(identity) if old["identity"].get(k) != identity.get(k))
    detail = differ
    if "config" in differ:
        c_old, c_new = old["identity"].get("config", {}), identity["config"]
        keys = [f"{s}.{k}" for s in c_new for k in c_new[s] if c_old.get(s, {}).get(k) != c_new[s][k]]
        detail = [d for d in differ if d != "config"] + keys
    raise MedvolError(f"--out {root}: holds a study made with other settings ({', '.join(detail[:4])}); "
                      "run it with its own, choose another --out, or --overwrite to replace it")


def run_recursive_study(config: str | os.PathLike = DEFAULT_CONFIG, out: str | os.PathLike = "recursive_study", *,
                        generations: int = 3, real_fraction: float | Sequence[float] = (0.0, 0.25),
                        n_synthetic: int | None = None, seed: int | Sequence[int] = (0, 1, 2),
                        val_fraction: float = 0.25, feature_iters: int = 200, bootstrap: int = 20,
                        n_score: int = 512, fid_n: int = 0, device: str | None = None,
                        overrides: list[str] | None = None, overwrite: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Run (or continue) a recursive-training study (module docstring).

    Args:
        config: a training config (YAML or shipped name) of a 3D model or an unconditional 2D
            model; its ``data`` section names the real data (``phantom``, or a preprocessing
            cache with train and val splits; for a 2D model also a 2D image cache, ``medvol
            preprocess --images``, whose generations then write and train on one image per file).
            Default: the learned 32^3 CRF-GAN.
        out: the study folder DIR.
        generations: K, the number of generations (generation 0 included).
        real_fraction: f in [0, 1], or several; generations k >= 1 also train on
            ``round(f * n_train)`` real training volumes (the same ones every generation).
        n_synthetic: N, samples each generation generates (2D: slices, written S to a volume,
            so rounded up to a multiple of S); default: as many as generation 0 trained on
            (volumes, or non-blank slices).
        seed: S, or several; each seed runs every fraction, its seeds following from (S, k).
            The first seed also splits a phantom source into train / val.
        val_fraction: the validation share of a phantom source's cache (a given cache keeps its split).
        feature_iters: 3D: training iterations of the domain feature network.
        bootstrap: 3D: bootstrap rounds of the per-generation score intervals (0: none).
        n_score: 2D: real val slices and generated slices each score compares.
        fid_n: 2D: slices per set for FID with the offline Inception weights (0: no FID).
        device: generation and evaluation device (default: the config's ``train.device``).
        overrides: config overrides ``section.key=VALUE`` (part of the study's identity).
        overwrite: accept a folder holding another study: what medvol wrote there is removed.
        jobs: generations trained at the same time, each in its own process (independent ones:
            other seeds, other fractions; one torch thread each unless the config sets
            ``train.threads``). Not part of the identity: a study may continue with another.

    Returns:
        The summary (also ``DIR/summary.json``).

    Raises:
        MedvolError: bad arguments, a missing or bad config, a mask-conditional model, a folder
            holding another study or other files (without ``overwrite``), a study running in
            ``DIR``, or any failure of the steps (named).
    """
    from medvol.config import config_to_dict, load_config
    from medvol.models.registry import MODELS, REGISTRY
    from medvol.outputs import owned_output
    from medvol.train.distributed import pick_device

    seeds, fractions = check_arguments(generations, real_fraction, n_synthetic, seed, val_fraction, feature_iters,
                                       bootstrap, n_score, fid_n)
    if not _integer(jobs) or jobs < 1:
        raise MedvolError(f"--jobs {jobs!r}: expected an integer >= 1")
    cfg = load_config(config, overrides)
    dims = MODELS[cfg.model.name].dims
    if dims == 2 and (getattr(MODELS[cfg.model.name], "conditional", False) or cfg.data.masks
                      or cfg.model.mask_channels):
        raise MedvolError(f"config {config}: {cfg.model.name} with masks draws images from masks; the recursive "
                          "study trains unconditional models ("
                          + ", ".join(n for n, s in REGISTRY.items() if not s.system.conditional) + ")")
    if dims == 3 and fid_n:
        raise MedvolError("--fid-n: 3D studies score FID with the domain features already; it is for 2D models")
    if fid_n:
        from medvol.eval.features import default_inception_file

        default_inception_file()  # no weights: refused now, not after the first training
    device = str(pick_device(device or cfg.train.device))
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise MedvolError(f"--out {root}: exists and is not a folder")
    arguments = {"real_fractions": fractions, "seeds": seeds, "n_synthetic": n_synthetic,
                 "val_fraction": float(val_fraction), "feature_iters": int(feature_iters),
                 "bootstrap": int(bootstrap), "n_score": int(n_score), "fid_n": int(fid_n)}
    identity = {"config": config_to_dict(cfg), **arguments}
    old = _check_identity(root, identity, overwrite)
    with owned_output(root, JOB, identity, overwrite=overwrite, outputs=TOP_FILES) as claimed:
        return _run_claimed(claimed, cfg, identity, old, dims=dims, config=str(config), generations=generations,
                            device=device, jobs=int(jobs))


def _folder(claimed, rel: str) -> Path:
    """``DIR/rel`` as a folder entry of the study (:mod:`medvol.outputs`), made once."""
    return claimed.path(rel if rel.endswith("/") else rel + "/")


def _run_claimed(claimed, cfg, identity: dict, old: dict | None, *, dims: int, config: str, generations: int,
                 device: str, jobs: int = 1) -> dict[str, Any]:
    root = claimed.folder
    state = old or {"identity": identity, "created": _now(), "medvol_version": medvol.__version__,
                    "config_path": config}
    state["generations_asked"] = max(int(state.get("generations_asked", 0)), generations)
    write_json(claimed.path(STUDY_FILE), state, "study identity")  # first: a folder being filled is this study's
    seeds, fractions = identity["seeds"], identity["real_fractions"]
    real = prepare_real(cfg, _folder(claimed, "real"), val_fraction=identity["val_fraction"], seed=seeds[0],
                        feature_iters=identity["feature_iters"] if dims == 3 else None,
                        expected_sha256=state.get("real_cache_manifest_sha256"))
    state["real_cache_manifest_sha256"] = real.manifest_sha256
    write_json(claimed.path(STUDY_FILE), state, "study identity")

    n_train = len(real.train_files)
    scoring = None
    if dims == 2:
        scoring = _scoring_2d(cfg, real, identity, seeds[0])
        n_default = scoring.pop("n_train_slices")
    else:
        n_default = n_train
    n_synthetic = identity["n_synthetic"] or n_default
    if dims == 2 and n_synthetic < identity["n_score"]:
        raise MedvolError(f"--n-synthetic {n_synthetic}: fewer generated slices than --n-score "
                          f"{identity['n_score']} scores")
    floor = _floor(claimed, cfg, real, identity, scoring, n_synthetic, device, dims)
    claimed.record_tree("real/")  # what the real side's steps wrote: medvol's to remove on --overwrite
    study = {
        "config_path": state["config_path"], "model": f"{cfg.model.name}@{cfg.model.size}", "dims": dims,
        "iterations": cfg.train.iterations, "real_cache": str(real.cache), "n_real_train": n_train,
        "n_real_val": len(real.val_files), "real_images": real.images, "n_synthetic": n_synthetic, "seeds": seeds,
        "real_fractions": fractions, "n_real_kept": {f"{f:g}": int(round(f * n_train)) for f in fractions},
        "bootstrap": identity["bootstrap"], "domain_features": str(real.domain) if real.domain else None,
        "n_score": identity["n_score"] if dims == 2 else None, "fid_n": identity["fid_n"],
        "allow_synthetic": "passed by the study itself: False for generation 0, True for k >= 1",
        "interval": "95 % Student t interval of the mean over the seeds",
    }
    runs = {(s, f): [] for s in seeds for f in fractions}
    summary: dict[str, Any] = {}
    plans = {(s, f): _plan(root, cfg, real, identity, s, f, n_synthetic, device, dims, scoring)
             for s in seeds for f in fractions}
    for done in _generations(claimed, plans, state["generations_asked"], generations, jobs):
        for (s, f, k), record in done:
            runs[(s, f)].append(record)
        summary = _write_summary(claimed, study, floor, runs, dims)
    return summary


def _schedule(plans: dict, asked: int, generations: int, done: set) -> list[tuple[int, int, float]]:
    """The generations to run, ``(k, seed, fraction)`` in order: generation 0 of every seed (once,
    under the seed's first fraction: it is shared), then the first real fraction's generations
    (k ascending, seeds ascending), then the next fraction's. A study stopped early thus holds
    whole recursions of its first fractions, every seed alike, rather than a little of each.
    Every k < ``generations`` is listed, and beyond that only those finished earlier (``done``),
    so that a shorter command still reports them."""
    seeds = list(dict.fromkeys(s for s, _ in plans))
    fractions = list(dict.fromkeys(f for _, f in plans))
    order = [(0, s, fractions[0]) for s in seeds]
    for f in fractions:
        for k in range(1, asked):
            order += [(k, s, f) for s in seeds if k < generations or (s, f, k) in done]
    return order


def _generations(claimed, plans: dict, asked: int, generations: int, jobs: int):
    """Run the generations, ``jobs`` at a time; yield ``[((seed, fraction, k), record), ...]`` as each
    finishes, in an order where a run's generations arrive k = 0, 1, ... (generation 0 for every
    fraction of its seed).

    A generation waits for its predecessor; with ``jobs`` > 1 independent ones (other seeds, other
    fractions) train in worker processes at the same time, lowest k first. Everything the study
    folder records (summary, marker) is written here, by this process, only.
    """
    from medvol.study.recursive.generation import finished

    fractions_of = {}
    for s, f in plans:
        fractions_of.setdefault(s, []).append(f)
    done = {(s, f, k) for (s, f), plan in plans.items() for k in range(asked) if finished(plan, k) is not None}
    order = _schedule(plans, asked, generations, done)

    def emit(k, s, f, record):
        return [((s, g, k), record) for g in (fractions_of[s] if k == 0 else [f])]

    results: dict[tuple[int, float, int], dict] = {}  # (seed, fraction, k) -> record; k = 0 under the first fraction
    if jobs <= 1:
        for k, s, f in order:
            if k > 0 and not _has_previous(results, fractions_of, s, f, k):
                continue  # its previous generation was not run by this command
            plan = plans[(s, f)]
            _start_log(claimed, plan, k, (s, f, k) in done or (k == 0 and (s, f, 0) in done))
            results[(s, f, k)] = run_generation(plan, k)
            claimed.record_tree(f"seed_{s:03d}/")
            yield emit(k, s, f, results[(s, f, k)])
        return
    import concurrent.futures
    import multiprocessing

    waiting = list(order)
    running: dict = {}
    held: list = []  # finished generations whose earlier ones (in yield order) have not finished yet
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs,
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            for item in list(waiting):
                if len(running) >= jobs:
                    break
                k, s, f = item
                if k > 0 and not _has_previous(results, fractions_of, s, f, k):
                    if not any(_is_before(other, item) for other in list(waiting) + list(running.values())
                               if other != item):
                        waiting.remove(item)  # its predecessor will never come in this command
                    continue
                waiting.remove(item)
                plan = plans[(s, f)]
                _start_log(claimed, plan, k, (s, f, k) in done)
                running[pool.submit(_run_in_worker, _portable(plan), k, _log_level(), os.getpid())] = item
            if not running:
                break
            try:
                finished_now, _ = concurrent.futures.wait(list(running),
                                                          return_when=concurrent.futures.FIRST_COMPLETED)
            except KeyboardInterrupt:
                # Ctrl-C reached the workers too: each stops at its next step with a checkpoint.
                concurrent.futures.wait(list(running))
                finished_now = set(running)
            stops = []
            for future in finished_now:
                k, s, f = running.pop(future)
                record = future.result()  # a failed generation stops the study (its error)
                if "interrupted" in record:
                    stops.append(record["interrupted"])
                    continue
                results[(s, f, k)] = record
                claimed.record_tree(f"seed_{s:03d}/")
                yield emit(k, s, f, results[(s, f, k)])
            if stops:
                from medvol.train.interrupt import TrainingInterrupted

                for future in running:  # the other generations stop as well (same signal)
                    future.cancel()
                signum, iteration, checkpoint, advice = stops[0]
                raise TrainingInterrupted(signum, iteration, None if checkpoint is None else Path(checkpoint),
                                          advice=advice)


def _is_before(other, item) -> bool:
    """Whether ``other`` (k, seed, fraction) is a predecessor of ``item`` in its chain."""
    k, s, f = item
    ko, so, fo = other
    return so == s and ko < k and (ko == 0 or fo == f)


def _has_previous(results: dict, fractions_of: dict, s: int, f: float, k: int) -> bool:
    return (s, fractions_of[s][0], 0) in results if k == 1 else (s, f, k - 1) in results


def _start_log(claimed, plan, k: int, was_done: bool) -> None:
    if was_done:
        log.info("generation %d (seed %d, real fraction %g): finished earlier, not redone", k, plan.seed,
                 plan.real_fraction)
    else:
        _folder(claimed, f"seed_{plan.seed:03d}")  # everything a seed's generations write is the study's


def _log_level() -> int:
    return logging.getLogger().getEffectiveLevel()


def _portable(plan: Plan) -> Plan:
    """``plan`` as a worker process can receive it: a 2D study's FID extractor (a TorchScript
    network, which does not pickle) travels as its name and is loaded again there."""
    fid = (plan.scoring or {}).get("fid")
    if fid is None or isinstance(fid[0], str):
        return plan
    return dataclasses.replace(plan, scoring={**plan.scoring, "fid": ("inception", fid[1])})


_EXTRACTORS: dict[str, Any] = {}


def _restored(plan: Plan) -> Plan:
    """:func:`_portable` undone in the worker (each extractor loaded once per worker)."""
    fid = (plan.scoring or {}).get("fid")
    if fid is None or not isinstance(fid[0], str):
        return plan
    if fid[0] not in _EXTRACTORS:
        from medvol.eval.features import get_extractor

        _EXTRACTORS[fid[0]] = get_extractor(fid[0])
    return dataclasses.replace(plan, scoring={**plan.scoring, "fid": (_EXTRACTORS[fid[0]], fid[1])})


def _run_in_worker(plan: Plan, k: int, level: int, parent: int) -> dict[str, Any]:
    """One generation in a worker process (``jobs`` > 1): one torch thread unless the config says.

    A stop by signal comes back as ``{"interrupted": (signum, iteration, checkpoint, advice)}``
    (the exception itself does not cross processes); a worker whose study process died stops its
    training with a checkpoint, as on SIGTERM, and exits (:func:`_exit_with_parent`).
    """
    import torch

    from medvol.train.interrupt import TrainingInterrupted

    _exit_with_parent(parent)
    tag = f"seed {plan.seed} gen {k}" + ("" if k == 0 else f" real {plan.real_fraction:g}")
    logging.basicConfig(level=level, format=f"[{tag}] %(message)s", force=True)  # a worker runs several
    if not plan.cfg.train.threads:
        torch.set_num_threads(1)
    try:
        return run_generation(_restored(plan), k)
    except TrainingInterrupted as stop:
        if os.getppid() != parent:
            os._exit(143)  # nobody to tell: the study process is gone, the checkpoint is written
        advice = str(stop).split("; ", 2)[-1]
        return {"interrupted": (stop.signum, stop.iteration, None if stop.checkpoint is None else str(stop.checkpoint),
                                advice)}


_WATCHING: list[int] = []


def _exit_with_parent(parent: int, every: float = 2.0) -> None:
    """Watch (once per worker) that the study process ``parent`` lives; when it is gone, stop the
    training here as SIGTERM does (checkpoint, then stop) and leave the process.

    Without it a worker whose study was killed would wait for work forever.
    """
    if _WATCHING:
        return
    _WATCHING.append(parent)
    import signal
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer checkpoints and stops; idle: the default ends it
        time.sleep(120.0)
        os._exit(143)

    threading.Thread(target=watch, name="medvol-study-parent", daemon=True).start()


def _plan(root, cfg, real, identity, seed, fraction, n_synthetic, device, dims, scoring) -> Plan:
    n_train = len(real.train_files)
    n_kept = int(round(fraction * n_train))
    # Which real volumes are kept: drawn once from the seed, the same in every generation.
    order = np.random.default_rng(seed).permutation(n_train)
    real_kept = [real.train_files[i] for i in sorted(order[:n_kept])]
    return Plan(root=root, cfg=cfg, real=real, n_synthetic=n_synthetic, real_kept=real_kept, seed=seed,
                bootstrap=identity["bootstrap"], device=device, real_fraction=fraction, dims=dims, scoring=scoring)


def _scoring_2d(cfg, real, identity: dict, seed: int) -> dict[str, Any]:
    """What every 2D generation is scored against (:mod:`.slices`), drawn once."""
    from medvol.data.datasets import CachedVolumeDataset, SliceDataset
    from medvol.study.recursive.slices import real_slices

    fid = None
    if identity["fid_n"]:
        from medvol.eval.features import get_extractor

        fid = (get_extractor("inception"), identity["fid_n"])
    if real.images:  # a 2D image cache: its images, no phantom slice factors
        from medvol.study.recursive.real import image_dataset
        from medvol.study.recursive.slices import image_real_slices

        train = image_dataset(cfg, real.cache, "train")
        return {"real": image_real_slices(cfg, real.cache, "val", n=identity["n_score"], seed=seed),
                "spacing": train.spacing, "window": real.window, "fid": fid, "factors": False,
                "n_train_slices": len(train)}
    plane, size = cfg.data.plane, cfg.model.size
    val = real_slices(real.cache, "val", plane=plane, size=size, n=identity["n_score"], seed=seed)
    train_slices = SliceDataset(CachedVolumeDataset(real.cache, split="train"), content_only=True, plane=plane,
                                size=size)
    if identity["fid_n"]:
        from medvol.eval.features import get_extractor

        fid = (get_extractor("inception"), identity["fid_n"])
    # Every slice is cut from a cube of side S, so its pixels have the volumes' in-plane spacing.
    return {"real": val, "spacing": train_slices.spacing, "window": real.window, "fid": fid,
            "n_train_slices": -(-len(train_slices) // size) * size}


def _floor(claimed, cfg, real, identity, scoring, n_synthetic, device, dims) -> dict[str, Any]:
    """The real-vs-real floor, computed once (``real/floor.json``)."""
    from medvol.study.recursive.scoring import floor_scores

    floor_path = claimed.folder / "real" / "floor.json"
    floor = read_json(floor_path)
    if floor is not None:
        return floor
    seed = identity["seeds"][0]
    if dims == 2:
        from medvol.study.recursive.slices import real_slices, score_slices

        if real.images:
            from medvol.study.recursive.slices import image_real_slices

            train = image_real_slices(cfg, real.cache, "train", n=len(scoring["real"]), seed=seed)
        else:
            train = real_slices(real.cache, "train", plane=cfg.data.plane, size=cfg.model.size,
                                n=len(scoring["real"]), seed=seed)
        log.info("real-vs-real floor: %d train slices against %d val slices", len(train), len(scoring["real"]))
        floor = score_slices(scoring["real"], train, spacing=scoring["spacing"], window=scoring["window"], seed=seed,
                             fid=scoring["fid"], factors=scoring.get("factors", True))
    else:
        n_train = len(real.train_files)
        log.info("real-vs-real floor: %d train volumes against %d val volumes", min(n_synthetic, n_train),
                 len(real.val_files))
        floor = floor_scores(real, claimed.folder / "real" / "floor", n=n_synthetic, seed=seed,
                             bootstrap=identity["bootstrap"], device=device)
    write_json(floor_path, floor, "floor scores")
    return floor


def _write_summary(claimed, study: dict, floor: dict, runs: dict, dims: int) -> dict[str, Any]:
    from medvol.study.recursive.aggregate import aggregate, paired_changes
    from medvol.study.recursive.report import score_keys, scores_plot, summary_markdown
    from medvol.utils import checked_write

    listed = [{"seed": s, "real_fraction": f, "generations": rows} for (s, f), rows in runs.items() if rows]
    # generation 0 is listed under every fraction of its seed: counted once
    records = list({(r["seed"], r["generation"], r["real_fraction"]): r
                    for run in listed for r in run["generations"]}.values())
    summary = {"study": study, "floor": floor, "runs": listed,
               "aggregate": aggregate(listed, score_keys(dims, floor)),
               "changes": paired_changes(listed, score_keys(dims, floor)),
               "wall_seconds": sum(r["seconds"]["total"] for r in records),
               # each generation's own process CPU (records of an older medvol have none)
               "cpu_seconds": sum(r.get("cpu_seconds", {}).get("total", 0.0) for r in records),
               "updated": _now(), "threads": torch_threads()}
    write_json(claimed.path("summary.json"), summary, "study summary")
    with checked_write(claimed.path("summary.md"), "study summary") as tmp:
        tmp.write_text(summary_markdown(summary), encoding="utf-8")
    scores_plot(claimed.path("scores.png"), summary)
    return summary


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
