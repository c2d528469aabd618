"""``medvol evaluate``: scores of a generated set against a real one, with their provenance.

Samples come from sources (:mod:`medvol.eval.sources`: a cache, a folder of volumes or images, a
checkpoint, phantoms, precomputed features), one protocol for all; ``--fake`` decides whether
volumes or 2D images are scored (:func:`medvol.eval.sources.probe`; 2D: :mod:`medvol.eval.images2d`).
Samples are streamed through the extractors (:mod:`medvol.eval.features`) one at a time; only
features are kept, and the registered metrics (:mod:`medvol.eval.scores`) score them. What to
compute is one :class:`EvaluateOptions`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

import medvol
from medvol.errors import MedvolError
from medvol.eval import metrics as M
from medvol.eval.features import get_extractor
from medvol.eval.figures import _plot_curve, _plot_montage, _plot_scatter, _plot_umap, pca_2d, umap_2d  # noqa: F401
from medvol.eval.images2d import image_pairs
from medvol.eval.scores import (DISTANCES, FEATURE_METRICS, FIGURE_METRICS, METRICS, better,  # noqa: F401
                                check_counts, check_logits, get_metric, interval_for, metric_names, score_is,
                                score_views, small_sample_warnings, volume_vectors)
from medvol.eval.sources import (Checksums, Keep, VolumeSource, cache_params, is_cache, marked_synthetic,  # noqa: F401
                                 precomputed, probe, set_checksum, synthetic_real)
from medvol.utils import torch_threads

log = logging.getLogger("medvol.evaluate")


def planned_outputs(metrics: Sequence[str]) -> list[str]:
    """Every file ``medvol evaluate`` may write into its output folder (checked before the work)."""
    names = ["scores.json", "scores.md", "features_pca.png"]
    if "memorization" in metrics:
        names += ["memorization.json", "memorization_montage.png"]
    if "umap" in metrics:
        names.append("features_umap.png")
    return names


def needed_volumes(metrics: Sequence[str], k: int, n: int | None) -> tuple[int, str]:
    """The fewest real volumes the requested scores need without shrinking anything, and why.

    prdc counts ``k`` neighbours besides a volume itself; ``--n`` asks for that many; every
    distribution score needs two."""
    need, why = 2, "a distribution score"
    if "prdc" in metrics and k + 1 > need:
        need, why = k + 1, f"prdc with k = {k}"
    if n is not None and n > need:
        need, why = n, f"--n {n}"
    return need, why


def choose_split(cache: str, metrics: Sequence[str], *, k: int, n: int | None,
                 allow_synthetic_real: bool) -> tuple[str, str]:
    """The split of the real cache when ``--split`` is not given, and the reason, in words.

    The val split (never trained on) when it holds what :func:`needed_volumes` asks, else the
    whole cache: a small cache's default 90/10 split leaves too few val volumes to score against.
    The whole cache holds the training volumes, so its scores flatter a model that copies them;
    memorisation (the check for that) still takes the val split as its held-out reference. A
    cache whose train split holds volumes marked synthetic stays on val (unless
    ``allow_synthetic_real``): scoring against generated volumes would hide what is measured."""
    from medvol.data.cache import load_manifest

    entries = load_manifest(Path(cache))["volumes"]
    n_val = sum(entry.get("split") == "val" for entry in entries)
    need, why = needed_volumes([m for m in metrics if m in metric_names(*DISTANCES)], k, n)
    if n_val >= need:
        return "val", f"its val split holds {n_val} volumes, enough for {why}"
    marked = sum(bool(entry.get("synthetic")) for entry in entries)
    if n_val and marked and not allow_synthetic_real:
        return "val", (f"its val split holds {n_val} volume(s), fewer than {why} needs, but the whole cache "
                       f"holds {marked} marked synthetic (see --allow-synthetic-real)")
    return "all", (f"its val split holds {n_val} volume(s), fewer than the {need} that {why} needs, so the "
                   "whole cache is scored (training volumes included; --split val insists on val)")


def enough_volumes(metrics: Sequence[str], real: VolumeSource, fake: VolumeSource) -> None:
    """Refuse, before any feature is computed, a set too small for every distribution score.

    Raises:
        MedvolError: one line naming the set, its count and what to add.
    """
    scores = [m for m in metrics if m in metric_names(*DISTANCES)]
    for src in (real, fake):
        if scores and len(src) < 2:
            hint = (" or pass --split all" if src.kind == "cache" and src.split != "all"
                    else f" or leave {', '.join(scores)} out of --metrics")
            raise MedvolError(f"--{src.role} {src.spec}: holds {len(src)} volume, but {scores[0]} needs at least "
                              f"2 per set: add volumes{hint}")


def memorization_sets(real: str, train: str | None, src_real: VolumeSource,
                      opts: dict) -> tuple[VolumeSource, dict, str]:
    """The training reference and the held-out real volumes of the memorisation check.

    The training reference is ``--train`` (a cache gives its train split, what ``medvol train``
    learns from), else the real cache's train split. The held-out reference must be volumes the
    model never saw: the real volumes of the cache's val split when the training reference is
    that cache (whatever split the scores use), else the whole real set.

    Returns:
        ``(training source, held-out record with its "indices" into the real set, one line saying both)``.

    Raises:
        MedvolError: no training set is known, or no real volume is held out (one line: what to give).
    """
    if train is None:
        if src_real.kind != "cache":
            raise MedvolError("memorization needs the training set the model learnt from: give --train "
                              "(its cache, volume folder or glob)")
        train = real
    train_split = "train" if is_cache(train) else "all"
    src_train = VolumeSource(train, "train", **dict(opts, split=train_split, n=None))
    names = src_real.names
    if src_real.kind == "cache" and train_split == "train" and Path(train).resolve() == Path(real).resolve():
        indices = [i for i, split in enumerate(src_real.splits) if split == "val"]
        record = {"source": real, "split": "val",
                  "chosen": "the real volumes in the cache's val split (the training reference is its train split)"}
        what = f"{real}'s val split"
    else:
        indices = list(range(len(names)))
        record = {"source": real, "split": getattr(src_real, "split", None) if src_real.kind == "cache" else None,
                  "chosen": "the whole real set (the training reference is another set)"}
        what = f"the real set {real}"
    if not indices:
        if src_real.split == "train":
            raise MedvolError(f"memorization: with --split train no real volume is held out from the training "
                              f"reference ({real}'s train split): drop --split, or give --train")
        raise MedvolError(f"memorization: {real} has no val volumes to hold out from its train split: give "
                          "--train (the training volumes) and, as --real, volumes the model never saw")
    if len(src_train) < 2:
        raise MedvolError(f"memorization: the training reference {train} holds {len(src_train)} volume; "
                          "need at least 2")
    record.update(n_volumes=len(indices), names=[names[i] for i in indices], indices=indices)
    kind = f"{train_split} split of the cache" if train_split == "train" else "all of it"
    line = (f"memorisation: training reference {train} ({kind}, {len(src_train)} volumes); held-out "
            f"reference {what} ({len(indices)} volumes)")
    return src_train, record, line


# ----------------------------------------------------------------------------------- command


def set_count(side: dict) -> str:
    """``"6 volumes"`` or ``"128 images"``: the size of one side of a report."""
    if "n_images" in side:
        return f"{side['n_images']} images"
    return f"{side['n_volumes']} volumes"


def _markdown(report: dict) -> str:
    lines = [f"# medvol evaluate — {report['date']}", "",
             f"- real: `{report['real']['source']}` ({set_count(report['real'])}"
             + (f"; split {report['real']['split']}: {report['real']['split_chosen']}"
                if "split_chosen" in report["real"] else "") + ")",
             f"- fake: `{report['fake']['source']}` ({set_count(report['fake'])})",
             f"- seed {report['seed']}, bootstrap {report['bootstrap']} rounds over "
             f"{'images' if report.get('dims') == 2 else 'volumes'}, "
             f"medvol {report['medvol_version']}", ""]
    if "synthetic" in report["real"]:
        marked = report["real"]["synthetic"]
        lines += [f"The real set holds {marked['count']} item(s) marked synthetic, scored as real "
                  f"({marked['allowed_by']}).", ""]
    lines += [f"warning: {w}" for w in report.get("warnings", [])] + ([""] if report.get("warnings") else [])
    lines += [f"note: {w}" for w in report.get("notes", [])] + ([""] if report.get("notes") else [])
    for ext in report["extractors"]:
        info = ext["info"]
        lines += [f"## {info['extractor']}", "",
                  f"weights: `{info['weights']}` (sha256 `{info['weights_sha256']}`)  ",
                  f"preprocessing: {info['preprocessing']}", "",
                  "| score | value | 95% interval | interval |", "|---|---|---|---|"]
        if "prdc_k" in ext:
            lines[-2:-2] = [f"prdc: k = {ext['prdc_k']} nearest neighbours", ""]
        for name, s in ext["scores"].items():
            ci = (f"{s['ci_low']:.4g} .. {s['ci_high']:.4g}" if "ci_low" in s
                  else (f"± {s['std']:.3g} (std over {s.get('spread', 'subsets')})" if "std" in s else ""))
            if "real" in s:
                ci += f"; real set {s['real']['value']:.6g}"
            kind = s.get("interval", "")
            if kind == "basic":
                kind = f"basic; bias-corrected value {s['bias_corrected']:.4g}"
            lines.append(f"| {name} | {s['value']:.6g} | {ci} | {kind} |")
        if any(s.get("interval") == "basic" for s in ext["scores"].values()):
            lines.append("\nbasic: a bootstrap interval for the population score, centred on the "
                         "bias-corrected value (2 value - mean of the resamples); the plug-in value "
                         "lies above it when its bias is larger than its spread. percentile: the "
                         "spread of the resampled score.")
        for w in ext["warnings"]:
            lines.append(f"\nwarning: {w}")
        lines.append("")
    if "diversity" in report:
        d = report["diversity"]
        lines += ["## diversity (mean pairwise 3D MS-SSIM; higher = less diverse)", "",
                  f"real {d['real']['mean']:.4f} ± {d['real']['std']:.4f} ({d['real']['pairs']} pairs), "
                  f"fake {d['fake']['mean']:.4f} ± {d['fake']['std']:.4f} ({d['fake']['pairs']} pairs); "
                  f"kernel {d['real']['kernel_size']}, {d['real']['scales']} scales", ""]
    if "memorization" in report:
        m = report["memorization"]
        lines += ["## memorisation", "",
                  f"authenticity {m['authenticity']:.3f}; likely copies {m['copy_fraction']:.3f} "
                  f"(closer to a training volume than {m['copy_threshold']:.4g}, half the 1% quantile "
                  f"of held-out distances); median distance to the nearest training volume: fake "
                  f"{m['median_distance_fake']:.4g}, held-out real {m['median_distance_heldout']:.4g}. "
                  f"Training reference `{m['train']['source']}` ({m['train']['n_volumes']} volumes"
                  + (f", {m['train']['split']} split" if m["train"].get("split") else "") + "); held-out: "
                  f"{m['heldout']['chosen']} ({m['heldout']['n_volumes']} volumes). "
                  "Per sample: memorization.json.", ""]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    from medvol.utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """What ``medvol evaluate`` computes, and from what (the command line's options).

    Attributes:
        features: extractor specs (``NAME[:WEIGHTS]``); None: ``inception2.5d`` for volumes,
            ``inception`` for 2D images.
        metrics: registered metric names (:mod:`medvol.eval.scores`).
        n: samples per set (None: all of a set; 16 volumes / 256 images of a checkpoint).
        size, modality, window: how raw volumes are prepared (else from a cache on either side).
        split: the real cache's split (None: :func:`choose_split`).
        seed: latents, phantoms, bootstrap and subsets.
        k: prdc's neighbours.
        n_boot: bootstrap rounds.
        slices_per_volume, batch: extraction (2.5D slices per volume, samples per forward pass).
        device: where extractors and generators run.
        train: the training set of the memorisation check (None: the real cache's train split).
        diversity_n: volumes per set of the MS-SSIM diversity.
        montage_pairs: closest pairs in memorization_montage.png.
        plane: the slices of an image folder's real set (2D).
        allow_synthetic_real: score against a real set holding items marked synthetic.
        strict: refuse ``n`` larger than a set (else a warning).
        is_splits: splits of the Inception Score.
    """

    features: Sequence[str] | None = None
    metrics: Sequence[str] = METRICS
    n: int | None = None
    size: int | None = None
    modality: str | None = None
    window: tuple[float, float] | None = None
    split: str | None = None
    seed: int = 0
    k: int = 5
    n_boot: int = 50
    slices_per_volume: int = 16
    batch: int = 16
    device: str = "cpu"
    train: str | None = None
    diversity_n: int = 16
    montage_pairs: int = 8
    plane: str = "axial"
    allow_synthetic_real: bool = False
    strict: bool = False
    is_splits: int = 10


def evaluate(real: str, fake: str, out: str | os.PathLike, options: EvaluateOptions | None = None, *,
             overwrite: bool = False, progress=None, command: str | None = None, memo: dict | None = None,
             _claim: dict | None = None, **fields) -> dict:
    """Score ``fake`` against ``real``; write ``scores.json`` and ``scores.md`` into ``out``.

    ``features`` defaults to ``inception2.5d`` for volumes and ``inception`` for 2D images (a 2D
    model's checkpoint or a folder of 2D images as ``fake``: :mod:`medvol.eval.images2d`, where
    ``plane`` picks the real slices of an image folder). ``memo`` (a dict kept by the caller)
    holds the real and training features between calls with the same real set, so that scoring
    many checkpoints extracts them once.

    ``out`` follows :mod:`medvol.outputs`: checked before any feature is computed (a file, a
    user's ``scores.md`` or figure, another job's outputs are refused; ``overwrite`` replaces an
    earlier evaluation and removes only what medvol wrote), written at the end all at once.
    A real set holding volumes marked synthetic is refused unless ``allow_synthetic_real`` (then
    recorded); ``--n`` larger than a set is a warning, an error with ``strict``. scores.json
    records ``real.set_sha256`` (the sorted per-volume checksums), which :func:`compare` matches.

    What is not given is inferred and said (a log line each, and in scores.json): ``size`` (and,
    for raw volumes, ``modality`` and ``window``) from a cache on either side;
    ``split`` of a real cache by :func:`choose_split` (``real.split_chosen``); the memorisation
    references by :func:`memorization_sets` (``memorization.train`` / ``.heldout``); prdc's ``k``
    shrinks to what the sets allow (``prdc_k`` per extractor, with a warning).

    ``options`` (:class:`EvaluateOptions`) says what to compute; ``fields`` given by name replace
    its fields (``evaluate(real, fake, out, n=8, seed=1)``). ``overwrite``, ``progress`` (a
    :func:`medvol.progress.track`-like callable), ``command`` (recorded) and ``memo`` are about
    this call, not the scores.
    """
    chosen = dataclasses.replace(options or EvaluateOptions(), **fields)
    (features, metrics, n, size, modality, window, split, seed, k, n_boot, slices_per_volume, batch, device,
     train, diversity_n, montage_pairs, plane, allow_synthetic_real, strict, is_splits) = (
        getattr(chosen, field.name) for field in dataclasses.fields(EvaluateOptions))
    memo = {} if memo is None else memo
    for name in metrics:
        get_metric(name)  # an unknown name is refused, with the names to choose from
    out = Path(out)
    if (out / "scores.json").exists() and not overwrite:
        raise MedvolError(f"{out}: already holds an evaluation (scores.json); choose another --out "
                          "or pass --overwrite")
    if n is not None and n < 2:
        raise MedvolError(f"--n {n}: need at least 2 volumes per set")
    if not isinstance(is_splits, int) or is_splits < 1:
        raise MedvolError(f"--is-splits {is_splits}: must be a positive integer")
    if "prdc" in metrics and k < 1:
        raise MedvolError(f"--k {k}: prdc needs at least 1 neighbour")
    from medvol.outputs import check_output
    from medvol.train.distributed import pick_device

    pick_device(device)  # a GPU this machine lacks is named before anything is read
    claim = _claim or {
        "folder": out, "prefix": "", "job": "evaluate", "overwrite": overwrite,
        "identity": {"real": real, "fake": fake, "train": train, "features": features, "metrics": list(metrics),
                     "n": n, "size": size, "split": split, "seed": seed, "plane": plane},
        "inputs": [p for p in (real, fake, train) if p is not None and Path(p).exists()]}
    check_output(claim["folder"], claim["job"], claim["identity"], overwrite=claim["overwrite"],
                 inputs=claim["inputs"], outputs=[claim["prefix"] + name for name in planned_outputs(metrics)])

    npy = [s.endswith(".npy") for s in (real, fake)]
    if any(npy) and not all(npy):
        raise MedvolError("--real and --fake must both be .npy feature files, or neither")
    report: dict = {
        "medvol_version": medvol.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "threads": torch_threads(),
        "seed": seed,
        "bootstrap": n_boot,
        "metrics": list(metrics),
        "k": k,
        "is_splits": is_splits,
        "allow_synthetic_real": bool(allow_synthetic_real),
        "extractors": [],
    }
    sampler = None
    if not any(npy):
        dims, sampler, files = probe(fake, device)  # a checkpoint is read once, here
        if dims == 2:
            report["dims"] = 2
            pairs = image_pairs(
                report, real, fake, sampler=sampler, files=files,
                features=features or ["inception"], metrics=metrics, n=n, size=size,
                modality=modality or "ct", window=window, plane=plane, split=split or "val", seed=seed, batch=batch,
                device=device, progress=progress, memo=memo, allow_synthetic_real=allow_synthetic_real,
                strict=strict)
            return _finish(report, pairs, metrics, claim, k=k, n_boot=n_boot, seed=seed, progress=progress,
                           is_splits=is_splits)
    features = list(features or ["inception2.5d"])
    if all(npy):
        other = [m for m in metrics if m not in metric_names(*DISTANCES)]
        if other:
            raise MedvolError(f"--metrics {other[0]}: needs volumes or images (is: their class logits), "
                              "not precomputed features")
        fr, ff = precomputed(real, "real"), precomputed(fake, "fake")
        if fr.features["features"].shape[1] != ff.features["features"].shape[1]:
            raise MedvolError("--real and --fake feature files have different dimensions")
        check_counts(report, n, fr.n_volumes, ff.n_volumes, "rows", strict)
        rows = fr.features["features"].astype(np.float32)
        report["real"] = {"source": real, "kind": "features", "n_volumes": fr.n_volumes,
                          "set_sha256": set_checksum([hashlib.sha256(r.tobytes()).hexdigest() for r in rows])}
        report["fake"] = {"source": fake, "kind": "features", "n_volumes": ff.n_volumes}
        pairs = [({"extractor": "precomputed", "weights": None, "weights_sha256": None,
                   "dim": fr.features["features"].shape[1], "views": ["features"],
                   "preprocessing": "given"}, fr, ff)]
    else:
        # What the command line leaves out is read from the data: a cache's manifest gives the
        # size and preparation of raw volumes; the real split is chosen.
        like = cache_params(real) or cache_params(fake)
        split_reason = f"--split {split}"
        if split is None:
            split, split_reason = ("val", "") if not is_cache(real) else choose_split(
                real, metrics, k=k, n=n, allow_synthetic_real=allow_synthetic_real)
        opts = dict(size=size, modality=modality, window=window, split=split, n=n, seed=seed,
                    device=device, like=like)
        src_real = VolumeSource(real, "real", **opts)
        src_fake = VolumeSource(fake, "fake", sampler=sampler, **opts)
        if src_real.size != src_fake.size:
            raise MedvolError(f"--real volumes are {src_real.size}^3 but --fake are {src_fake.size}^3; "
                              "give --size to prepare both alike")
        synthetic_real(src_real.info, src_real.synthetic, len(src_real), allow_synthetic_real, real)
        check_counts(report, n, len(src_real), len(src_fake), "volumes", strict)
        enough_volumes(metrics, src_real, src_fake)
        notes = []
        if src_real.kind == "cache":
            src_real.info["split_chosen"] = split_reason
            notes.append(f"real set: {real}, {'the whole cache' if split == 'all' else f'its {split} split'} "
                         f"({len(src_real)} volumes): {split_reason}")
        src_train, heldout = None, None
        if "memorization" in metrics:
            src_train, heldout, line = memorization_sets(real, train, src_real, opts)
            train = src_train.spec
            notes.append(line)
        if "factors" in metrics:  # phantom ground truth (medvol.eval.factors); no extractor needed
            from medvol.eval.factors import check_phantom_source, score_sources

            check_phantom_source(src_real)
            report["factors"] = score_sources(src_real, src_fake)
        extractors = [get_extractor(spec, device=device, seed=seed, slices_per_volume=slices_per_volume,
                                    batch=batch) for spec in features] if set(metrics) != {"factors"} else []
        if not extractors and set(metrics) != {"factors"}:
            raise MedvolError("--features: give at least one extractor")
        for spec, ext in zip(features, extractors):
            if ext.dims != 3:
                raise MedvolError(f"--features {spec}: scores 2D images, not volumes (use "
                                  "inception2.5d for the slices of volumes)")
        check_logits(features, extractors, metrics)
        said = memo.setdefault("_said", set())  # said once all refusals are past; once per run
        for line in notes:
            if line not in said:
                log.info("%s", line)
                said.add(line)
        sums_r = Checksums(src_real)
        keep_r, keep_f = Keep(sums_r, diversity_n), Keep(src_fake, diversity_n)
        pairs = []
        def run(ext, src):
            return ext.extract(src, progress=None if progress is None else
                               (lambda it: progress(it, len(src), f"features {ext.name} {src.role}")))

        for index, (spec, ext) in enumerate(zip(features, extractors)):
            first = index == 0 and "msssim" in metrics
            key = ("real", real, spec, split, n, size, seed)
            if key not in memo or (first and ("kept",) + key not in memo):
                memo[key] = run(ext, keep_r if first else sums_r)
                memo[("set_sha256",) + key] = sums_r.set_sha256()
                if first:
                    memo[("kept",) + key] = keep_r.kept
            if first:
                keep_r.kept = memo[("kept",) + key]
            ff = run(ext, keep_f if first else src_fake)
            pairs.append((ext.info(), memo[key], ff))
        real_key = ("real", real, features[0] if extractors else None, split, n, size, seed)
        if ("set_sha256",) + real_key not in memo:  # no extractor ran (factors alone): read the set once
            for _ in sums_r:
                pass
            memo[("set_sha256",) + real_key] = sums_r.set_sha256()
        report["real"] = dict(src_real.info, n_volumes=len(src_real), names=src_real.names,
                              set_sha256=memo[("set_sha256",) + real_key])
        report["fake"] = dict(src_fake.info, n_volumes=len(src_fake), names=src_fake.names)
        if "msssim" in metrics:
            from medvol.eval.diversity import pairwise_ms_ssim

            d_real = pairwise_ms_ssim(keep_r.kept, seed=seed, progress=progress, desc="diversity real")
            d_fake = pairwise_ms_ssim(keep_f.kept, seed=seed, progress=progress, desc="diversity fake")
            report["diversity"] = {"real": d_real, "fake": d_fake,
                                   "n": [len(keep_r.kept), len(keep_f.kept)],
                                   "note": "mean pairwise 3D MS-SSIM within each set; higher = "
                                           "less diverse"}
        if src_train is not None:
            ext = extractors[0]
            key = ("train", train, features[0], size, seed)
            if key not in memo:
                memo[key] = run(ext, src_train)
            ft = memo[key]
            mem = M.memorization(volume_vectors(ft), volume_vectors(pairs[0][2]),
                                 volume_vectors(pairs[0][1])[heldout["indices"]])
            records = [{"file": report["fake"]["names"][i],
                        "nearest_train": ft.names[int(mem["nearest_train"][i])],
                        "distance": float(mem["distance"][i]),
                        "train_nn_radius": float(mem["train_radius"][i]),
                        "authentic": bool(mem["authentic"][i]),
                        "likely_copy": bool(mem["likely_copy"][i])}
                       for i in range(len(mem["distance"]))]
            report["memorization"] = {
                "extractor": ext.info()["extractor"], "train": dict(src_train.info, n_volumes=len(ft.names)),
                "heldout": {key: value for key, value in heldout.items() if key != "indices"},
                "features": "per-volume mean of the extractor's rows, views concatenated",
                **{key: mem[key] for key in ("authenticity", "copy_fraction", "copy_threshold",
                                             "median_distance_fake", "median_distance_heldout")},
                "likely_copies": [r["file"] for r in records if r["likely_copy"]],
            }
            report["_memorization_records"] = records
            closest = np.argsort(mem["distance"], kind="stable")[:montage_pairs]
            train_idx = [int(mem["nearest_train"][i]) for i in closest]
            report["_montage"] = (
                [(report["fake"]["names"][i], ft.names[t], float(mem["distance"][i]))
                 for i, t in zip(closest, train_idx)],
                src_fake.pick(closest, progress), src_train.pick(train_idx, progress), list(closest),
                train_idx)
        if pairs:
            report["_scatter"] = (pairs[0][0]["extractor"], volume_vectors(pairs[0][1]),
                                  volume_vectors(pairs[0][2]))
    return _finish(report, pairs, metrics, claim, k=k, n_boot=n_boot, seed=seed, progress=progress,
                   is_splits=is_splits)


def _finish(report: dict, pairs: list, metrics: Sequence[str], claim: dict, *, k: int, n_boot: int,
            seed: int, progress=None, is_splits: int = 10) -> dict:
    """Score every ``(extractor info, real features, fake features)`` pair; write the outputs.

    ``claim``: the output folder, job, identity, overwrite and inputs (:mod:`medvol.outputs`) and
    the ``prefix`` of the names in it. Every output is written under a temporary name first and
    all are renamed together: a full disk leaves neither scores nor a figure without them."""
    feature_metrics = [m for m in metrics if m in metric_names(*DISTANCES)]
    for info, fr, ff in pairs:
        if info.get("output") == "logits":
            scored = score_is(fr, ff, splits=is_splits, seed=seed)
        else:
            scored = score_views(fr, ff, feature_metrics, k=k, n_boot=n_boot, seed=seed, progress=progress,
                                 desc=f"bootstrap {info['extractor']}")
        report["extractors"].append({"info": info, "rows": {v: [int(len(fr.features[v])),
                                                                 int(len(ff.features[v]))]
                                                             for v in fr.features},
                                     **scored})
    records = report.pop("_memorization_records", None)
    montage = report.pop("_montage", None)
    scatter = report.pop("_scatter", None)
    contents: dict[str, bytes | str] = {}
    if records is not None:
        contents["memorization.json"] = json.dumps(records, indent=2) + "\n"
    for name, plot, args in (("memorization_montage.png", _plot_montage, montage),
                             ("features_pca.png", _plot_scatter, scatter)):
        png = plot(*args) if args is not None else None
        if png is not None:
            contents[name] = png
    if "umap" in metrics and scatter is not None:
        png, note = _plot_umap(*scatter, seed=seed)
        if png is not None:
            contents["features_umap.png"] = png
        else:
            log.warning("note: %s", note)
            report.setdefault("notes", []).append(note)
    report["figures"] = [name for name in contents if name.endswith(".png")]
    text = _markdown(report)
    if "factors" in report:
        from medvol.eval.factors import markdown

        text = text.rstrip("\n") + "\n" + "\n".join(markdown(report["factors"])) + "\n"
    contents["scores.md"] = text
    contents["scores.json"] = json.dumps(report, indent=2) + "\n"
    from medvol.outputs import owned_output

    names = {claim["prefix"] + name: body for name, body in contents.items()}
    with owned_output(claim["folder"], claim["job"], claim["identity"], overwrite=claim["overwrite"],
                      inputs=claim["inputs"], outputs=list(names)) as owned:
        owned.write_all(names, "evaluation output")
    return report


# -------------------------------------------------------------------- runs and comparisons

def evaluate_run(run_dir: str | os.PathLike, real: str, out: str | os.PathLike, *, every: int = 1,
                 best: str | None = None, overwrite: bool = False, **options) -> dict:
    """Score every checkpoint of a run whose iteration is a multiple of ``every`` (and the last).

    Writes ``out/iter_<N>/scores.json`` per checkpoint, ``curve.csv`` (one row per checkpoint,
    one column per score of the first extractor) and ``curve.png``, and names the best
    checkpoint by ``best`` (default: the first extractor's mean FID, or its FID)."""
    from medvol.train.checkpoint import list_checkpoints

    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir / "checkpoints") or list_checkpoints(run_dir)
    if not found:
        raise MedvolError(f"--run {run_dir}: no verified checkpoint (ckpt_*.pt with .sha256)")
    if every < 1:
        raise MedvolError(f"--every {every}: must be at least 1")
    chosen = [(it, p) for it, p in found if it % every == 0]
    if not chosen or chosen[-1][0] != found[-1][0]:
        chosen.append(found[-1])
    out = Path(out)
    if (out / "curve.csv").exists() and not overwrite:
        raise MedvolError(f"{out}: already holds a run evaluation (curve.csv); choose another --out "
                          "or pass --overwrite")
    from medvol.outputs import check_output

    per_checkpoint = planned_outputs(options.get("metrics", METRICS))
    identity = {"run": str(run_dir), "real": real, "every": every, "best": best,
                **{key: options.get(key) for key in ("features", "metrics", "n", "size", "split", "seed", "train")}}
    claim = {"folder": out, "job": "evaluate --run", "identity": identity, "overwrite": overwrite,
             "inputs": [p for p in (run_dir, real, options.get("train")) if p is not None and Path(p).exists()]}
    # Every output of every checkpoint is checked before the first feature is computed.
    check_output(out, claim["job"], identity, overwrite=overwrite, inputs=claim["inputs"],
                 outputs=["curve.csv", "curve.png", "best.json"]
                 + [f"iter_{it:07d}/{name}" for it, _ in chosen for name in per_checkpoint])
    memo: dict = {}
    rows = []
    for it, path in chosen:
        rep = evaluate(real, str(path), out / f"iter_{it:07d}", overwrite=overwrite, memo=memo,
                       _claim=dict(claim, prefix=f"iter_{it:07d}/"), **options)
        scores = rep["extractors"][0]["scores"]
        rows.append((it, path, {k: v["value"] for k, v in scores.items()}))
    names = list(rows[0][2])
    if best is None:
        best = "mean/fid" if "mean/fid" in names else next((k for k in names if k.endswith("fid")), names[0])
    if best not in names:
        raise MedvolError(f"--best {best}: not a score of this evaluation; choose from {', '.join(names)}")
    pick = (min if better(best) == "lower" else max)(rows, key=lambda r: r[2][best])
    header = "iteration,checkpoint," + ",".join(names)
    lines = [header] + [f"{it},{p.name}," + ",".join(f"{r.get(k, float('nan')):.8g}" for k in names)
                        for it, p, r in rows]
    summary = {"run": str(run_dir), "best_score": best, "direction": better(best),
               "best_iteration": pick[0], "best_checkpoint": str(pick[1]),
               "best_value": pick[2][best], "iterations": [r[0] for r in rows]}
    contents: dict[str, bytes | str] = {"curve.csv": "\n".join(lines) + "\n"}
    png = _plot_curve(rows, best, pick[0])
    if png is not None:
        contents["curve.png"] = png
    contents["best.json"] = json.dumps(summary, indent=2) + "\n"
    from medvol.outputs import owned_output

    with owned_output(out, claim["job"], identity, overwrite=overwrite, inputs=claim["inputs"],
                      outputs=list(contents)) as owned:
        owned.write_all(contents, "run evaluation output")
    return summary


def compare(folders: Sequence[str | os.PathLike]) -> str:
    """One markdown table of several evaluations; refuses ones not computed alike (extractor,
    weights, N real / N fake, real source)."""
    reports = []
    for f in folders:
        path = Path(f) / "scores.json"
        if not path.is_file():
            raise MedvolError(f"{f}: no scores.json (not a `medvol evaluate` output folder)")
        try:
            reports.append(_checked_report(path, json.loads(path.read_text(encoding="utf-8"))))
        except ValueError as error:
            raise MedvolError(f"{path}: unreadable ({error})") from None
    if len(reports) < 2:
        raise MedvolError("compare needs at least two evaluation folders")

    def key(rep):
        return {"extractors": [(e["info"]["extractor"], e["info"]["weights_sha256"])
                               for e in rep["extractors"]],
                "n_real": set_count(rep["real"]), "n_fake": set_count(rep["fake"]),
                "real": rep["real"]["source"], "real_set_sha256": rep["real"]["set_sha256"]}

    ref = key(reports[0])
    for f, rep in zip(folders[1:], reports[1:]):
        other = key(rep)
        for field in ("extractors", "n_real", "n_fake", "real", "real_set_sha256"):
            if other[field] != ref[field]:
                raise MedvolError(f"{f} was computed with {field} = {other[field]} but {folders[0]} "
                                  f"with {ref[field]}; scores compare only when computed alike")
    lines = [TABLE_HEAD + " | ".join(str(f) for f in folders) + " | better |",
             "|---|---|" + "---|" * len(folders) + "---|"]
    for i, ext in enumerate(reports[0]["extractors"]):
        for name in ext["scores"]:
            vals = [rep["extractors"][i]["scores"].get(name, {}).get("value") for rep in reports]
            cells = ["" if v is None else f"{v:.5g}" for v in vals]
            lines.append(f"| {ext['info']['extractor']} | {name} | " + " | ".join(cells)
                         + f" | {better(name)} |")
    return "\n".join(lines) + "\n"


#: How every table :func:`compare` makes begins: what tells medvol's own table file from another file.
TABLE_HEAD = "| extractor | score | "


def check_table_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``medvol compare --out FILE`` under the one output rule, before anything is read.

    An earlier table of ``medvol compare`` is replaced only with ``overwrite``; any other file is
    never replaced.

    Raises:
        MedvolError: one line naming ``path`` and what is in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise MedvolError(f"--out {path}: is a folder; give the markdown file to write")
    if path.exists() or path.is_symlink():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(len(TABLE_HEAD))
        except OSError:
            head = ""
        if head != TABLE_HEAD:
            raise MedvolError(f"--out {path}: exists and is not a table medvol compare wrote; refusing to replace "
                              "it (with or without --overwrite): choose another --out")
        if not overwrite:
            raise MedvolError(f"--out {path}: holds a comparison table; choose another --out or pass --overwrite")
    return path


def write_table(path: str | os.PathLike, table: str, overwrite: bool = False) -> Path:
    """Write a :func:`compare` table to ``path`` (checked as :func:`check_table_output`), atomically."""
    from medvol.utils import checked_write

    path = check_table_output(path, overwrite)
    with checked_write(path, "comparison table") as tmp:
        tmp.write_text(table, encoding="utf-8")
    return path


def _checked_report(path: Path, rep) -> dict:
    """A ``scores.json`` with what :func:`compare` reads, or a one-line error naming what is missing."""
    def bad(what: str) -> MedvolError:
        return MedvolError(f"{path}: {what}; not a complete `medvol evaluate` output (re-run medvol evaluate)")

    if not isinstance(rep, dict):
        raise bad("not a JSON object")
    extractors = rep.get("extractors")
    if not isinstance(extractors, list) or not extractors:
        raise bad("no extractors")
    for ext in extractors:
        info, scores = (ext.get("info"), ext.get("scores")) if isinstance(ext, dict) else (None, None)
        if not isinstance(info, dict) or not {"extractor", "weights_sha256"} <= set(info):
            raise bad("an extractor without its info (extractor, weights_sha256)")
        if not isinstance(scores, dict) or not all(isinstance(v, dict) for v in scores.values()):
            raise bad(f"extractor {info['extractor']!r} without scores")
    for side in ("real", "fake"):
        got = rep.get(side)
        if not isinstance(got, dict) or "source" not in got or not ({"n_volumes", "n_images"} & set(got)):
            raise bad(f"no {side} set (source and size)")
    if not isinstance(rep["real"].get("set_sha256"), str):
        raise bad("no checksum of the real set (real.set_sha256, which older versions did not write), so "
                  "its real volumes cannot be matched")
    return rep
