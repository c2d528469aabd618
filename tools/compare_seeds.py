"""Two (or more) 3D models on the phantom population, several seeds each, at equal CPU time.

    python tools/compare_seeds.py --run CRF-GAN=configs/learn/crfgan_32.yaml \\
        --run "HA-GAN=configs/learn/crfgan_32.yaml model.name=hagan" --seeds 0,1,2 \\
        --cpu-budget 150 --cache /tmp/cache32_256 --out /tmp/cmp

``--run LABEL=CONFIG [key=value ...]`` (repeatable): a config and its own overrides (``section.key=
value``, as ``--section.key value`` on ``medvol train``). Every run of every label trains on one
preprocessing cache of the configs' phantoms (``--cache``, built on first use as
``tools/learn_check.py`` builds it; the configs must agree on the phantom set), with one thread,
``train.seed`` = the seed, stopped by ``tools/cpu_budget.py`` after ``--cpu-budget`` CPU seconds
of its process tree (medvol checkpoints the iteration it is in and exits), so every run gets the
same CPU time whatever the load (without ``--cpu-budget``: the config's iterations).

Each run is scored as ``tools/learn_check.py`` scores it (``--n`` samples of latent seed 0 against
``--n`` held-out phantoms of ``--eval-seed``: pairwise SSIM, pooled-pixel precision / recall /
coverage, std over samples, distance to the nearest training phantom) and with the factor metric
(:mod:`medvol.eval.factors`: each generated and real volume measured back with
:func:`medvol.data.phantom_factors.measure_factors`; W1 / real std per factor beside the floor of
two disjoint real halves, and the coverage of the habitus x asymmetry modes).

Writes into ``--out``: ``LABEL_sSEED/`` per run (``run/``, ``train.log``, ``cpu.json``,
``numbers.json``, ``montage.png``, ``losses.png``), then ``table.md`` / ``table.json`` (mean and 95%
t interval over seeds of every score, and each seed's value) and ``samples.png`` (central axial
and coronal slices of four samples of each run beside four held-out phantoms). A run whose
``numbers.json`` is complete is not trained or scored again: a stopped comparison continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import cpu_budget  # noqa: E402
import learn_check  # noqa: E402

from medvol.errors import MedvolError  # noqa: E402

#: The anatomical factors (the others: nodules, noise, slice blur, which a smooth generator misses by
#: far more than their real spread, so that they dominate the mean over all factors).
ANATOMY = ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The scores of the table, in its order: (key in a run's numbers, column title, digits).
COLUMNS = (
    ("iteration", "iterations", 0),
    ("cpu_s", "CPU s", 0),
    ("ssim_pairwise_fake", "SSIM pairs", 3),
    ("fake_std_over_samples", "std over samples", 3),
    ("precision", "precision", 2),
    ("recall", "recall", 2),
    ("coverage", "coverage", 2),
    ("nn_train_fake", "nearest training", 2),
    ("factor_w1_mean", "factor W1/std (mean)", 2),
    ("factor_w1_anatomy", "factor W1/std (anatomy)", 2),
    ("mode_coverage", "mode coverage", 2),
)


def parse_run(text: str) -> tuple[str, str, list[str]]:
    """``LABEL=CONFIG [key=value ...]`` -> (label, config, ``["--key", "value", ...]``)."""
    head, _, rest = text.strip().partition(" ")
    label, eq, config = head.partition("=")
    if not eq or not config or not _LABEL.match(label):
        raise MedvolError(f"--run {text!r}: expected LABEL=CONFIG [section.key=value ...] with a label of "
                          "letters, digits, '.', '_', '-'")
    overrides = []
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise MedvolError(f"--run {label}: override {item!r} is not section.key=value")
        overrides += [f"--{key}", value]
    return label, config, overrides


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student t interval of the mean (NaN bounds for one value)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def geometry(size: int):
    """(spacing, window) of the phantoms a model of ``size`` trains on (on the fly or cached alike)."""
    from medvol.eval.factors import source_geometry

    return source_geometry(SimpleNamespace(kind="phantom", size=size))


def factor_numbers(fake: np.ndarray, real: np.ndarray, size: int) -> dict:
    """The factor metric of ``fake`` against ``real`` (both ``[N, 1, S, S, S]`` in [-1, 1])."""
    from medvol.data.phantom_factors import measure_factors
    from medvol.eval.factors import factor_scores

    spacing, window = geometry(size)
    measured = [[measure_factors(v[0], spacing, window=window) for v in items] for items in (real, fake)]
    scores = factor_scores(*measured)
    continuous = scores["continuous"]
    w1 = [v["w1_norm"] for v in continuous.values() if math.isfinite(v["w1_norm"])]
    floor = [v["floor_norm"] for v in continuous.values() if math.isfinite(v["floor_norm"])]
    return {"factors": scores, "factor_w1_mean": float(np.mean(w1)) if w1 else math.nan,
            "factor_floor_mean": float(np.mean(floor)) if floor else math.nan,
            **anatomy_means(scores), "mode_coverage": scores["modes"]["coverage"]}


def anatomy_means(scores: dict) -> dict:
    """Mean W1 / real std and mean floor over the :data:`ANATOMY` factors of :func:`factor_scores`."""
    def mean(key):
        values = [scores["continuous"][k][key] for k in ANATOMY if k in scores["continuous"]]
        values = [v for v in values if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    return {"factor_w1_anatomy": mean("w1_norm"), "factor_floor_anatomy": mean("floor_norm")}


def train_run(config: str, overrides: list[str], folder: Path, budget: float | None) -> dict:
    run = folder / "run"
    command = [*learn_check.medvol_command(), "train", "--config", config, "--train.out", str(run),
               "--resume", "auto", "--train.progress", "false", *overrides]
    if budget is not None:  # the budget, not the iterations, ends the training
        command += ["--train.iterations", "1000000"]
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load_before = learn_check.load1()
    with open(folder / "train.log", "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        measured = cpu_budget.run(command, budget=budget, watch=run / "checkpoints", stdout=log)
    measured.update(load1_before=load_before, load1_after=learn_check.load1())
    ok = measured["returncode"] == 0 or (measured["stopped_by_budget"] and measured["returncode"] in (143, -15))
    if not ok:
        raise MedvolError(f"training {folder.name} failed (exit {measured['returncode']}); see {folder / 'train.log'}")
    (folder / "cpu.json").write_text(json.dumps(measured, indent=1), encoding="utf-8")
    return measured


def score_run(folder: Path, n: int, eval_seed: int, title: str) -> dict:
    fake, cfg, iteration = learn_check.generate(folder / "run", n, 0)
    real = learn_check.real_items(cfg, n, eval_seed)
    train_set = learn_check.real_items(cfg, n, None)
    numbers = {"iteration": iteration, "model": f"{cfg.model.name}@{cfg.model.size}",
               **learn_check.scores(fake, real, train_set), **factor_numbers(fake, real, cfg.model.size)}
    numbers.update(numbers["prdc_pooled"])
    learn_check.montage(real, fake, folder / "montage.png", f"{title}, iteration {iteration}")
    curves = learn_check.losses_from_log(folder / "train.log")
    if curves:
        learn_check.loss_plot(curves, folder / "losses.png", title)
    np.save(folder / "samples4.npy", fake[:4, 0].astype(np.float16))
    return numbers


def summarise(labels: list[str], seeds: list[int], numbers: dict) -> dict:
    table = {}
    for label in labels:
        rows = [numbers[(label, s)] for s in seeds]
        for r in rows:  # runs scored before the anatomy means existed
            if "factor_w1_anatomy" not in r:
                r.update(anatomy_means(r["factors"]))
        entry = {}
        for key, _, _ in COLUMNS:
            values = [r.get(key) for r in rows]
            mean, lo, hi = t_interval(values)
            entry[key] = {"mean": mean, "lo": lo, "hi": hi, "seeds": values}
        factors = {}
        for factor in rows[0]["factors"]["continuous"]:
            values = [r["factors"]["continuous"][factor]["w1_norm"] for r in rows]
            floors = [r["factors"]["continuous"][factor]["floor_norm"] for r in rows]
            factors[factor] = {"w1_norm": t_interval(values), "floor_norm": floors[0], "seeds": values}
        entry["per_factor"] = factors
        entry["factor_floor_mean"] = rows[0]["factor_floor_mean"]
        entry["factor_floor_anatomy"] = rows[0]["factor_floor_anatomy"]
        entry["real"] = {k: rows[0][k] for k in ("ssim_pairwise_real", "real_std_over_samples", "nn_train_heldout",
                                                  "prdc_pooled_train_items")}
        entry["missing_modes"] = [r["factors"]["modes"]["missing"] for r in rows]
        table[label] = entry
    return table


def _cell(v: dict, digits: int) -> str:
    def f(x):
        return "—" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"
    seeds = " / ".join(f(x) for x in v["seeds"])
    return f"{f(v['mean'])} ({f(v['lo'])}..{f(v['hi'])}; {seeds})"


def markdown(table: dict, meta: dict) -> str:
    labels = list(table)
    first = table[labels[0]]
    lines = [f"- {meta['command']}",
             f"- Seeds {', '.join(map(str, meta['seeds']))}; {meta['budget']}; {meta['n']} samples (latent seed 0) "
             f"against {meta['n']} held-out phantoms (seed {meta['eval_seed']}); {meta['machine']}; {meta['date']}",
             "- Each cell: mean over seeds (95% t interval; the seeds' values in order)", "",
             "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_cell(table[label][k], d) for k, _, d in COLUMNS) + " |")
    real = first["real"]
    train_items = real["prdc_pooled_train_items"]
    lines += ["", f"Real phantoms (held-out set): SSIM pairs {real['ssim_pairwise_real']:.3f}, std over samples "
              f"{real['real_std_over_samples']:.3f}, nearest training {real['nn_train_heldout']:.2f}; {meta['n']} "
              f"training phantoms scored as samples: precision {train_items['precision']:.2f}, recall "
              f"{train_items['recall']:.2f}, coverage {train_items['coverage']:.2f}; factor W1/std floor (two real "
              f"halves) {first['factor_floor_mean']:.2f}, anatomy {first['factor_floor_anatomy']:.2f}.", "",
              "Per factor, W1 / real std (mean over seeds, 95% t interval); floor: two disjoint halves of the real set", "",
              "| factor | floor | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for factor in first["per_factor"]:
        cells = []
        for label in labels:
            mean, lo, hi = table[label]["per_factor"][factor]["w1_norm"]
            cells.append("—" if not math.isfinite(mean) else
                         f"{mean:.2f} ({lo:.2f}..{hi:.2f})" if math.isfinite(lo) else f"{mean:.2f}")
        lines.append(f"| {factor} | {first['per_factor'][factor]['floor_norm']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Modes missing among the samples (per seed): " + "; ".join(
        f"{label}: " + " / ".join(",".join(m) or "none" for m in table[label]["missing_modes"]) for label in labels)]
    return "\n".join(lines) + "\n"


def samples_figure(out: Path, labels: list[str], seeds: list[int], real: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real (held-out)", real[:4])] + [
        (f"{label} seed {s}", np.load(out / f"{label}_s{s}" / "samples4.npy").astype(np.float32))
        for label in labels for s in seeds]
    fig, axes = plt.subplots(len(rows), 8, figsize=(9, 1.2 * len(rows)), squeeze=False)
    for r, (name, vols) in enumerate(rows):
        for i in range(4):
            vol = vols[i]
            m = vol.shape[0] // 2
            for j, im in enumerate((vol[m], vol[:, m])):
                ax = axes[r, 2 * i + j]
                ax.imshow(im, cmap="gray", vmin=-1, vmax=1, origin="upper" if j == 0 else "lower")
                ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("central axial | coronal slice of four volumes per row", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="'LABEL=CONFIG [key=value ...]'")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (default 0,1,2)")
    parser.add_argument("--cpu-budget", type=float, help="CPU seconds per training (default: the config's iterations)")
    parser.add_argument("--cache", required=True, help="preprocessing cache of the phantoms (built on first use)")
    parser.add_argument("--n", type=int, default=32, help="samples and held-out phantoms scored (default 32)")
    parser.add_argument("--eval-seed", type=int, default=1000, help="phantom seed of the held-out set")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        runs = [parse_run(text) for text in args.run]
        labels = [label for label, _, _ in runs]
        if len(set(labels)) != len(labels):
            raise MedvolError("--run: labels must differ")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not seeds or len(set(seeds)) != len(seeds):
            raise MedvolError(f"--seeds {args.seeds!r}: expected distinct integers")
        if args.cpu_budget is not None and args.cpu_budget <= 0:
            raise MedvolError("--cpu-budget must be positive")
        if args.n < 4:
            raise MedvolError("--n must be >= 4")
        from medvol.config import load_config

        data = {(c.data.phantom_n, c.data.phantom_seed, c.data.phantom_nodules, c.model.size)
                for c in (load_config(config, overrides) for _, config, overrides in runs)}
        if len(data) != 1:
            raise MedvolError(f"--run: the configs train on different phantom sets {sorted(data)}; the "
                              "comparison needs one")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cache = Path(args.cache).resolve()
        numbers = {}
        for label, config, overrides in runs:
            data_override = learn_check.phantom_cache(config, overrides, cache)
            for seed in seeds:
                folder = out / f"{label}_s{seed}"
                folder.mkdir(exist_ok=True)
                path = folder / "numbers.json"
                if path.exists():
                    numbers[(label, seed)] = json.loads(path.read_text(encoding="utf-8"))
                    print(f"{folder.name}: done before, kept")
                    continue
                measured = train_run(config, [*overrides, "--train.seed", str(seed), *data_override], folder,
                                     args.cpu_budget)
                result = score_run(folder, args.n, args.eval_seed, f"{label} seed {seed}")
                result.update(cpu_s=measured["cpu_s"], wall_s=measured["wall_s"], training=measured,
                              config=config, overrides=overrides, seed=seed)
                tmp = path.with_name(".numbers.json.tmp")
                tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
                os.replace(tmp, path)
                numbers[(label, seed)] = result
                print(f"{folder.name}: iteration {result['iteration']}, {measured['cpu_s']:.0f} CPU s, "
                      f"{measured['wall_s']:.0f} s wall, SSIM {result['ssim_pairwise_fake']:.3f}, recall "
                      f"{result['recall']:.2f}, factor W1 {result['factor_w1_mean']:.2f}, modes {result['mode_coverage']:.2f}",
                      flush=True)
        table = summarise(labels, seeds, numbers)
        import platform

        meta = {"command": "python tools/compare_seeds.py " + " ".join(
                    f"'{a}'" if " " in a else a for a in (sys.argv[1:] if argv is None else argv)),
                "seeds": seeds, "n": args.n, "eval_seed": args.eval_seed,
                "budget": (f"{args.cpu_budget:g} CPU s per training (one thread)" if args.cpu_budget
                           else "the configs' iterations"),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        (out / "table.md").write_text(markdown(table, meta), encoding="utf-8")
        (out / "table.json").write_text(json.dumps({"meta": meta, "table": table}, indent=1), encoding="utf-8")
        cfg = load_config(runs[0][1], runs[0][2])
        samples_figure(out, labels, seeds, learn_check.real_items(cfg, 4, args.eval_seed)[:, 0])
    except MedvolError as error:
        print(f"compare_seeds: error: {error}", file=sys.stderr)
        return 2
    print((out / "table.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
