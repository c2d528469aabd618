"""``medvol study downstream --task classify``: does synthetic data help train a classifier?

The CT/X-ray thesis's protocol on your cache and generators. Set-ups, each trained with ``seeds``
seeds by one recipe (:mod:`.classify`) and scored on the held-out real volumes (the cache's
``val`` split) by accuracy, false positives, false negatives, sensitivity and specificity:

- ``real``: the cache's ``train`` split;
- ``real+aug``: the same with the thesis's augmentation (flip, ±36° rotation, ±10 % zoom);
- ``synthetic`` (per source): the generated images of both classes alone;
- ``real+synthetic`` (per source): the union of both.

Classes and sources are described in :mod:`.classdata`. The output folder holds what the
segmentation study's does (``study.json``, ``runs/``, ``results.json``, ``results.md``) with
``accuracy_vs_fid.png``; it resumes and grows by source the same way, under the same lock, and a
folder of the other task or another configuration is refused.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Callable, Sequence

from medvol.errors import MedvolError
from medvol.study.downstream import classdata as C
from medvol.study.downstream import data as D
from medvol.study.downstream.classify import DEFAULT_CHANNELS, NETS, read_weights, run_setup
from medvol.study.downstream.report import (SETUP_TITLES, _cell, _summary, fmt, plot_against_fid, setup_runs,
                                            sources_and_command, write_report)
from medvol.study.downstream.runs import RUN_DIR, STUDY_FILE, _check_config, _source_record, write_json
from medvol.study.downstream.study import (check_counts, one_shape, parse_sources, run_locked, score_fid,
                                           train_plan)

NOTE = ("Synthetic data are used as training data on purpose: that is what this study measures. Every "
        "synthetic input was checked to be marked synthetic (medvol.data.provenance) with voxels matching its "
        "sidecar; the real cache's train and val splits hold no synthetic entry.")
#: The scores of one trained classifier that the tables summarise over seeds.
SCORES = ("accuracy", "sensitivity", "specificity", "fp", "fn")


def run_classify(real: str, synthetic: Sequence[str], out: str | os.PathLike, **options) -> dict:
    """Run (or resume, or extend) a classification study in ``out``, locked against a second run there.

    Arguments as :func:`_run_classify`; a ``MedvolError`` also when another run holds ``out``.
    """
    return run_locked(_run_classify, real, synthetic, out, **options)


def _run_classify(real: str, synthetic: Sequence[str], out: Path, *, classify_by: str = "asymmetry",
                  positive: Sequence[str] | None = None, n_synthetic: int | None = None, seeds: int = 3,
                  iterations: int = 150, batch: int = 4, lr: float = 1e-3, net: str = "classifier",
                  channels: Sequence[int] = DEFAULT_CHANNELS, weights: str | None = None, features: str | None = None,
                  feature_iters: int = 100, device: str = "cpu", log: Callable[[str], None] = print,
                  command: str | None = None) -> dict:
    """Run (or resume, or extend) a downstream classification study; write ``out`` (module docstring).

    Args:
        real: a medvol cache whose volumes carry the class (:mod:`.classdata`).
        synthetic: ``[NAME=]DIR`` sources, each with ``negative/`` and ``positive/``.
        out: the study folder.
        classify_by, positive: the class rule (:func:`.classdata.class_rule`).
        n_synthetic: images per class and source (its first N; None: all).
        seeds: networks per set-up (seeds 0 .. seeds-1).
        iterations, batch, lr, net, channels: the recipe (:mod:`.classify`).
        weights: ``FILE[:SHA256]`` to start every network from (None: random initialisation).
        features: a domain feature file for FID of volumes (default: trained into ``out``).
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        log: one-line progress messages.
        command: the command line, recorded.

    Raises:
        MedvolError: bad options or inputs, or ``out`` of another task or configuration.
    """
    from medvol.train.distributed import pick_device

    dev = pick_device(device)
    check_counts(seeds=seeds, iterations=iterations, batch=batch, n_synthetic=n_synthetic, min_synthetic=1,
                 feature_iters=feature_iters, lr=lr)
    if net not in NETS:
        raise MedvolError(f"--net {net!r}: expected one of {', '.join(NETS)}")
    specs = parse_sources(synthetic, "[NAME=]DIR with negative/ and positive/")
    init = read_weights(weights) if weights else None
    rule = C.class_rule(real, classify_by, positive)
    train = C.open_real_classes(real, "train", rule)
    val = C.open_real_classes(real, "val", rule)
    size, window = train.info["size"], D.volume_window(real)
    config = {"task": "classify", "real": train.info["cache"], "manifest_sha256": train.info["manifest_sha256"],
              "classify_by": rule[0], "positive": rule[1], "negative": rule[2], "seeds": seeds,
              "iterations": iterations, "batch": batch, "lr": lr, "net": net,
              "channels": list(channels) if net == "classifier" else None,
              "weights": init[1] if init else None, "n_synthetic": n_synthetic,
              "features": str(Path(features).resolve()) if features else None, "feature_iters": feature_iters}
    _check_config(out, config, keys=list(config))
    sources: dict[str, tuple[D.LabelledSet, str]] = {}
    for name, spec in specs:
        sources[name] = (C.open_synthetic_classes(name, spec, size=size, window=window, n=n_synthetic), spec)
    dims, side = one_shape([data for data, _ in sources.values()], "image", "classifier")
    config.update(dims=dims, side=side)
    study = _check_config(out, config)
    if train.dims == 2 and dims == 3:
        raise MedvolError(f"--real {real}: a 2D image cache; the synthetic sources are volumes (give 2D images, "
                          "or a volume cache)")
    slices = D.pooled_images if train.dims == 2 else C.central_slices
    real_train = slices(train, side) if dims == 2 else train
    real_val = slices(val, side) if dims == 2 else val
    if len(real_val) < 2:
        raise MedvolError(f"--real {real}: its val split gives {len(real_val)} held-out volume(s); the FID of the "
                          "sources needs at least 2 (rebuild the cache with a larger --val-fraction)")
    for name, (data, spec) in sources.items():
        study["sources"][name] = _source_record(name, spec, "folder", data, study, out)
        if len(data) < 2:
            raise MedvolError(f"--synthetic {name}: {len(data)} image(s); its FID needs at least 2")
    (out / RUN_DIR).mkdir(parents=True, exist_ok=True)
    write_json(out / STUDY_FILE, study)
    log(f"downstream classification study in {out}: {len(train)} real training ({train.info['positive']} positive) "
        f"and {len(val)} held-out volumes ({val.info['positive']} positive), {dims}D {net}; positive: {rule[0]} in "
        f"{', '.join(rule[1])}; training on synthetic data deliberately (the study's purpose)")

    def train_one(setup: str, source: str | None, seed: int, sets: list, augment: bool) -> dict:
        result = run_setup(sets, real_val, net=net, dims=dims, side=side, iterations=iterations, batch=batch,
                           lr=lr, seed=seed, augment=augment, channels=channels, weights=init, device=dev)
        return {"setup": setup, "source": source, "seed": seed, "train_items": sum(len(s) for s in sets),
                "val_items": real_val.items, "truth": [real_val.load(i)[1] for i in range(len(real_val))],
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **result}

    def summary(record: dict) -> str:
        return f"accuracy {record['accuracy']:.3f}, FP {record['fp']}, FN {record['fn']}"

    synthetic_sets = {name: data for name, (data, _) in sources.items()}
    train_plan(out, real_train, synthetic_sets, seeds, train_one, summary, log)
    score_fid(real, out, study, real_val, synthetic_sets, dims=dims, side=side, features=features,
              feature_iters=feature_iters, device=dev, log=log)
    return write_results(out, study, real_val, command=command)


# ------------------------------------------------------------------------------------- report


def collect(out: Path, study: dict) -> list[dict]:
    """Every set-up with its runs and the mean ± std over seeds of :data:`SCORES`."""
    table = []
    for setup, source, runs in setup_runs(out, study):
        keys = ("n", "tp", "fp", "tn", "fn", "accuracy", "sensitivity", "specificity", "seconds", "train_items")
        table.append({"setup": setup, "title": SETUP_TITLES[setup], "source": source,
                      "seeds": {str(seed): {k: run[k] for k in keys} for seed, run in runs.items()},
                      **{score: _summary([run[score] for run in runs.values()]) for score in SCORES},
                      "fid": (study["fid"].get(source) or {}).get("fid") if source else None})
    return table


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(study: dict, table: list[dict], val_n: int, command: str | None) -> str:
    config = study["config"]
    seeds = config["seeds"]
    net = config["net"] + (f" (widths {config['channels']})" if config.get("channels") else "")
    lines = ["# Downstream classification study", "",
             f"{config['dims']}D {net}, {config['iterations']} iterations, batch {config['batch']}, "
             + (f"from weights `{config['weights']['file']}` (sha256 {config['weights']['sha256'][:12]}…)"
                if config.get("weights") else "random initialisation")
             + f", trained per set-up with {seeds} seed(s). Positive: `{config['classify_by']}` in "
             f"{', '.join(config['positive'])}; negative: {', '.join(config['negative'])}. Scored on the {val_n} "
             f"held-out real items (val split of `{config['real']}`): mean ± standard deviation over seeds of the "
             "accuracy, sensitivity, specificity and the counts of false positives (FP) and false negatives (FN). "
             "FID of each synthetic source against the same held-out items.", "",
             "| set-up | source | accuracy | sensitivity | specificity | FP | FN | FID |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table:
        fid = fmt(row["fid"], 4) if row["source"] else "—"
        lines.append(f"| {row['title']} | {row['source'] or '—'} | " + " | ".join(
            _cell(row[s], seeds, 2 if s in ("fp", "fn") else 3) for s in SCORES) + f" | {fid} |")
    lines += ["", "Per seed:", "",
              "| set-up | source | seed | accuracy | TP | FP | TN | FN | sensitivity | specificity |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        for seed, run in row["seeds"].items():
            lines.append(f"| {row['title']} | {row['source'] or '—'} | {seed} | {run['accuracy']:.3f} | "
                         f"{run['tp']} | "
                         f"{run['fp']} | {run['tn']} | {run['fn']} | {_rate(run['sensitivity'])} | "
                         f"{_rate(run['specificity'])} |")
    lines += sources_and_command(study, command, lambda source: (
        f"`{source['spec']}`, {source['negative']} negative and {source['positive']} positive "
        f"{config['dims']}D item(s)"))
    return "\n".join(lines) + "\n"


def write_results(out: Path, study: dict, val: D.LabelledSet, *, command: str | None) -> dict:
    """Write ``results.json``, ``results.md`` and ``accuracy_vs_fid.png`` from what ``out`` holds."""
    table = collect(out, study)
    held_out = {"split": "val", "items": val.items, "positive": int(sum(val.load(i)[1] for i in range(len(val))))}
    return write_report(out, study, table, command=command, note=NOTE, held_out=held_out, task="classify",
                        text=markdown(study, table, len(val), command), figure="accuracy_vs_fid.png",
                        draw=lambda path: plot_against_fid(path, table, "accuracy", "accuracy on held-out real items",
                                                           "Downstream classification: accuracy against FID"))
