"""``medvol study downstream``: does synthetic data help train a segmentation network?

Set-ups, each trained with ``seeds`` seeds by the same recipe (:mod:`.segment`) and scored by Dice
on the held-out real volumes (the cache's ``val`` split):

- ``real``: the cache's ``train`` split;
- ``real+aug``: the same with classical augmentation (MONAI ``Rand…`` transforms);
- ``synthetic`` (per source): the generated images and masks alone;
- ``real+synthetic`` (per source): the union of both.

A 2D image cache with masks as the real data makes the study 2D: its images train a 2D U-Net and
each held-out image is scored (:func:`.data.open_real`).

Training on generated data is refused everywhere else in medvol (model collapse); here it is the
point of the study, so it is allowed, and checked instead: every synthetic input must be marked
synthetic with voxels matching its sidecar, and the real cache may hold no synthetic entry in the
splits used (:mod:`.data`).

The output folder ``DIR``:

- ``study.json``: the configuration, the sources with their fingerprints, and their FID;
- ``runs/<set-up>[__<source>]__seed<k>.json``: one per trained network (written as it finishes,
  so an interrupted study resumes where it stopped);
- ``results.json``, ``results.md`` (rows = set-ups, columns = Dice per class mean ± std, FID) and
  ``dice_vs_fid.png``, remade from every source ``DIR`` holds after each run.

A source is added to ``DIR`` by running again with another ``--synthetic`` (``--synthetic`` is also
repeatable); a ``DIR`` made with another configuration (cache, classes, sizes, seeds, dimensions)
is refused, as is a NAME already used there for other data.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from medvol.errors import MedvolError
from medvol.study.downstream import data as D
from medvol.study.downstream import report
from medvol.study.downstream.runs import (LOCK_NAME, REAL_SETUPS, RUN_DIR, STUDY_FILE, SYNTHETIC_SETUPS,  # noqa: F401
                                          _check_config, _source_record, read_json, run_name, write_json)
from medvol.study.downstream.segment import DEFAULT_CHANNELS, run_setup

NOTE = ("Synthetic data are used as training data on purpose: that is what this study measures. Every "
        "synthetic input was checked to be marked synthetic (medvol.data.provenance) with voxels matching "
        "its sidecar; the real cache's train and val splits hold no synthetic entry.")


def run_downstream(real: str, synthetic: Sequence[str], out: str | os.PathLike, **options) -> dict:
    """Run (or resume, or extend) a downstream study in ``out``, locked against a second run there.

    Arguments as :func:`_run_downstream`; a ``MedvolError`` also when another run holds ``out``.
    """
    return run_locked(_run_downstream, real, synthetic, out, **options)


# ------------------------------------------------- set-up shared by both tasks (and .classify_study)


def run_locked(run: Callable[..., dict], real: str, synthetic: Sequence[str], out: str | os.PathLike,
               **options) -> dict:
    """``run(real, synthetic, out, **options)`` holding the study lock of ``out``.

    Raises:
        MedvolError: ``out`` is a file, or another run holds it.
    """
    from medvol.train.runfolder import RunFolderLock

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedvolError(f"--out {out}: exists and is not a folder")
    lock = RunFolderLock(out, lock_name=LOCK_NAME, holder="medvol study downstream")
    try:
        return run(real, synthetic, out, **options)
    finally:
        # A refused first run leaves no empty folder behind, and no lock file in a folder that existed.
        lock.release(remove_empty=True, remove_lock=not (out / STUDY_FILE).is_file())


def check_counts(*, seeds: int, iterations: int, batch: int, n_synthetic: int | None, min_synthetic: int,
                 feature_iters: int, lr: float) -> None:
    """Refuse a count that is not a whole number at least its minimum, and a learning rate that is not positive.

    Raises:
        MedvolError: one line naming the first bad option.
    """
    for flag, value, low in (("--seeds", seeds, 1), ("--iterations", iterations, 1), ("--batch", batch, 1),
                             ("--n-synthetic", 2 if n_synthetic is None else n_synthetic, min_synthetic),
                             ("--feature-iters", feature_iters, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MedvolError(f"{flag} {value!r}: expected an integer >= {low}")
    if not lr > 0:
        raise MedvolError(f"--lr {lr}: expected a positive number")


def parse_sources(synthetic: Sequence[str], form: str) -> list[tuple[str, str]]:
    """``(name, spec)`` of each ``--synthetic`` (:func:`.data.parse_synthetic`), names unique.

    Raises:
        MedvolError: none given (``form`` says what to give), or a name given twice.
    """
    if not synthetic:
        raise MedvolError(f"--synthetic: give at least one synthetic source ({form})")
    specs = [D.parse_synthetic(s) for s in synthetic]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise MedvolError(f"--synthetic: the name {next(n for n in names if names.count(n) > 1)!r} is given twice")
    return specs


def one_shape(sources: Sequence[D.LabelledSet], unit: str, network: str) -> tuple[int, int]:
    """The dimensions and side shared by every synthetic source (one study trains one kind of ``network``).

    Raises:
        MedvolError: the sources mix 2D and 3D or sizes.
    """
    dims = {data.dims for data in sources}
    sides = {data.load(0)[0].shape[-1] for data in sources}
    if len(dims) > 1 or len(sides) > 1:
        raise MedvolError(f"--synthetic: the sources mix 2D {unit}s and 3D volumes (or {unit} sizes); one study "
                          f"trains one kind of {network}: run them into separate --out folders")
    return dims.pop(), sides.pop()


def train_plan(out: Path, real_train: D.LabelledSet, sources: dict[str, D.LabelledSet], seeds: int,
               train: Callable[[str, str | None, int, list, bool], dict], summary: Callable[[dict], str],
               log: Callable[[str], None]) -> None:
    """Train every set-up with every seed that ``out`` has no run file of yet, one run file each.

    Args:
        out: the study folder.
        real_train: the real training items.
        sources: the synthetic items by source name.
        seeds: networks per set-up.
        train: ``(setup, source, seed, sets, augment)`` -> the run record (trains one network).
        summary: the scores of a run record, for the progress line.
        log: one-line progress messages.
    """
    plan = [(setup, None, [real_train], setup == "real+aug") for setup in REAL_SETUPS]
    for name, data in sources.items():
        plan += [("synthetic", name, [data], False), ("real+synthetic", name, [real_train, data], False)]
    for setup, source, sets, augment in plan:
        for seed in range(seeds):
            path = out / RUN_DIR / f"{run_name(setup, source, seed)}.json"
            if read_json(path) is not None:
                continue
            record = train(setup, source, seed, sets, augment)
            write_json(path, record)
            log(f"{setup}{' ' + source if source else ''} seed {seed}: {summary(record)} ({record['seconds']:.0f} s)")


def score_fid(real: str, out: Path, study: dict, val: D.LabelledSet, sources: dict[str, D.LabelledSet], *,
              dims: int, side: int, features: str | None, feature_iters: int, device,
              log: Callable[[str], None]) -> None:
    """The FID of each source against ``val`` into ``study`` (saved after each), unless known for its data.

    The extractor (for volumes, the domain feature network: ``features``, or trained into ``out``
    with ``feature_iters`` iterations) is made only when a source needs it.
    """
    from medvol.study.downstream import fid as F

    memo: dict = {}
    ext = None
    for name, data in sources.items():
        known = study["fid"].get(name)
        if known is not None and known.get("fingerprint") == data.info["fingerprint"]:
            continue
        if ext is None:
            weights = F.domain_weights(real, out, features, feature_iters, log) if dims == 3 else None
            ext = F.extractor(dims, weights, str(device))
        start = time.monotonic()
        study["fid"][name] = dict(F.fid(val, data, ext, side=side, memo=memo), fingerprint=data.info["fingerprint"])
        log(f"FID {name}: {study['fid'][name]['fid']:.4g} ({time.monotonic() - start:.0f} s)")
        write_json(out / STUDY_FILE, study)


def _run_downstream(real: str, synthetic: Sequence[str], out: str | os.PathLike, *, n_synthetic: int | None = None,
                   seeds: int = 3, labels: Sequence[str] | None = None, iterations: int = 150, batch: int = 2,
                   lr: float = 1e-3, channels: Sequence[int] = DEFAULT_CHANNELS, features: str | None = None,
                   feature_iters: int = 100, generate_seed: int = 0, device: str = "cpu",
                   log: Callable[[str], None] = print, command: str | None = None) -> dict:
    """Run (or resume, or extend) a downstream study; write ``out`` (module docstring).

    Args:
        real: a medvol cache with label maps, or a 2D image cache with masks (then the study is 2D:
            its images, pooled to the synthetic side, train and are scored one by one): ``train``
            trains, ``val`` is scored.
        synthetic: ``[NAME=]DIR_OR_CKPT`` sources: a folder of images with ``_mask`` files written
            by ``medvol generate``, or a checkpoint (``n_synthetic`` images generated into
            ``out/synthetic/NAME/`` with ``generate_seed``).
        out: the study folder.
        n_synthetic: images per source (a folder: its first N; a checkpoint: N generated, 32 if None).
        seeds: networks per set-up (seeds 0 .. seeds-1).
        labels: class names to segment (default: every class of the cache).
        iterations, batch, lr, channels: the U-Net recipe (:mod:`.segment`).
        features: a domain feature file for FID of volumes (default: trained on ``real``'s train
            split into ``out/domain_features.pt`` with ``feature_iters`` iterations).
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        log: one-line progress messages.
        command: the command line, recorded.

    Returns:
        The results (as ``results.json``).

    Raises:
        MedvolError: bad options or inputs (see :mod:`.data`), or ``out`` from another configuration.
    """
    from medvol.study.downstream import fid as F
    from medvol.train.distributed import pick_device

    dev = pick_device(device)
    check_counts(seeds=seeds, iterations=iterations, batch=batch, n_synthetic=n_synthetic, min_synthetic=2,
                 feature_iters=feature_iters, lr=lr)
    specs = parse_sources(synthetic, "[NAME=]DIR_OR_CKPT")
    out = Path(out)
    train, classes = D.open_real(real, "train", labels)
    val, _ = D.open_real(real, "val", classes)
    size, window = train.info["size"], D.volume_window(real)
    config = {"real": train.info["cache"], "manifest_sha256": train.info["manifest_sha256"],
              "classes": list(classes), "seeds": seeds, "iterations": iterations, "batch": batch, "lr": lr,
              "unet_channels": list(channels), "n_synthetic": n_synthetic,
              "features": str(Path(features).resolve()) if features else None,
              "feature_iters": feature_iters, "generate_seed": generate_seed}
    _check_config(out, config, keys=list(config))

    from medvol.study.reader.sources import is_checkpoint

    sources: dict[str, tuple[D.LabelledSet, str, str]] = {}
    for name, spec in specs:
        path = Path(spec)
        if not path.exists():
            raise MedvolError(f"--synthetic {name}={spec}: no such file or folder")
        if is_checkpoint(path):
            folder = D.generate_source(name, path, out / "synthetic" / name, n_synthetic or 32, generate_seed, device)
            kind = "checkpoint"
        else:
            folder, kind = path, "folder"
        data = D.open_synthetic(name, folder, size=size, window=window, classes=classes, n=n_synthetic)
        sources[name] = (data, spec, kind)
    dims, side = one_shape([data for data, _, _ in sources.values()], "slice", "U-Net")
    if train.dims == 2 and dims == 3:
        raise MedvolError(f"--real {real}: a 2D image cache; the synthetic sources are volumes (give 2D images "
                          "with masks, or a volume cache): one study is one dimension")
    config.update(dims=dims, side=side)
    study = _check_config(out, config)
    if train.dims == 2:  # a 2D image cache: its images, pooled to the synthetic side, train and are scored
        real_train, val = D.pooled_images(train, side), D.pooled_images(val, side)
    else:
        real_train = D.real_slices(train, side) if dims == 2 else train
    for name, (data, spec, kind) in sources.items():
        study["sources"][name] = _source_record(name, spec, kind, data, study, out)
        known = study["fid"].get(name)
        if known is None or known.get("fingerprint") != data.info["fingerprint"]:
            F.check_sizes(name, val, data, dims=dims, side=side)  # before training: FID comes last
    (out / RUN_DIR).mkdir(parents=True, exist_ok=True)
    write_json(out / STUDY_FILE, study)
    unit = "images" if val.dims == 2 else "volumes"
    log(f"downstream study in {out}: {len(train)} real training and {len(val)} held-out {unit}, "
        f"{dims}D U-Net, classes {', '.join(classes)}; training on synthetic data deliberately (the study's purpose)")

    def train_one(setup: str, source: str | None, seed: int, sets: list, augment: bool) -> dict:
        result = run_setup(sets, val, len(classes), dims=dims, side=side if dims == 2 else None,
                           iterations=iterations, batch=batch, lr=lr, seed=seed, augment=augment,
                           channels=channels, device=dev)
        return {"setup": setup, "source": source, "seed": seed, "classes": list(classes),
                "train_items": sum(len(s) for s in sets), "val_volumes": val.items,
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **result}

    def summary(record: dict) -> str:
        return "Dice " + ", ".join(f"{c} {report.fmt(v)}" for c, v in zip(classes, report.seed_dice(record)))

    synthetic_sets = {name: data for name, (data, _, _) in sources.items()}
    train_plan(out, real_train, synthetic_sets, seeds, train_one, summary, log)
    score_fid(real, out, study, val, synthetic_sets, dims=dims, side=side, features=features,
              feature_iters=feature_iters, device=dev, log=log)
    return report.write_results(out, study, val, command=command, note=NOTE)
