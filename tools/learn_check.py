"""Does a configuration learn the phantom population? Train it, sample it, score it, show it.

    python tools/learn_check.py --config configs/learn/crfgan_32.yaml --out /tmp/lc/crf
    python tools/learn_check.py --config configs/learn/dcgan_64.yaml --out /tmp/lc/dc --train.iterations 500
    python tools/learn_check.py --config ... --out DIR --no-train      # score DIR/run as it is
    python tools/learn_check.py --config configs/learn/crfgan_32.yaml --out DIR --cache /tmp/cache32_256

Steps (docs/learning.md):

1. ``medvol train --config CONFIG --train.out OUT/run`` (resumes OUT/run if it exists) with one
   thread (``OMP_NUM_THREADS=1``), its log in ``OUT/train.log``; CPU and wall time and the
   1-minute load average before and after go to ``OUT/numbers.json``.
2. ``--n`` samples from the final checkpoint (latents from a CPU generator seeded ``--seed``).
3. Real sets: ``--n`` held-out items of the same data settings with ``phantom_seed`` =
   ``--eval-seed`` (never trained on; phantoms even when the run trained on a cache of phantoms),
   and ``--n`` items spread over the training set itself.
4. Scores (``OUT/numbers.json``): mean pairwise SSIM within the samples beside the same within the
   held-out real set (skimage ``structural_similarity``, data range 2; 3D for volumes): samples
   that resemble each other more than real ones do are collapsing; precision / recall / density /
   coverage (``medvol.eval.prdc``, k = 5) of the samples against the held-out set on pooled
   pixels (volumes average-pooled to 8^3, images to 16^2: phantoms are aligned, so pooled pixels
   are a crude but weight-free feature), beside the same for ``--n`` training items (the
   ceiling a generator of the population would reach); and memorisation: the mean distance of each sample to
   its nearest training item beside that of each held-out item.
5. ``OUT/montage.png``: central axial / coronal / sagittal slices of real volumes (left) beside
   samples (right), or a grid of real and generated images; ``OUT/losses.png``: the logged losses.

2D runs on axial phantom slices also get the slice factor metric (``numbers.json``
``slice_factors``; ``medvol.eval.factors.score_slices``): ``--factor-n`` samples (default 256,
latent seed ``--seed``) against as many held-out slices of 64 phantoms of
``--eval-seed``, per factor W1 / real std beside ``real_vs_real``, the same for slices of 64
phantoms of ``--eval-seed + 1`` (what a generator of the population scores at this N), and the
coverage of the slice modes (habitus x lungs) beside its real-vs-real value.

``--evaluate DOMAIN.pt`` (3D) adds ``medvol evaluate`` with domain features (docs/evaluation.md)
in ``OUT/evaluate``. Any further ``--section.key value`` is a config override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^it (\d+)/\d+ (.*?) [\d.]+ it/s")


def load1() -> float:
    return os.getloadavg()[0]


def medvol_command() -> list[str]:
    exe = Path(sys.executable).parent / "medvol"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from medvol.cli import main; sys.exit(main())"]


def train(config: str, run: Path, overrides: list[str], log_path: Path) -> dict:
    """Train (or resume) into ``run``; the log lines go to ``log_path``; returns timings."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # --train.threads 1 as well: medvol's default thread count reads the machine's load, not
    # OMP_NUM_THREADS, and a config without train.threads started on an idle 2-core machine takes
    # two threads, which stall each other once other work arrives (a FastGAN run slowed from 0.18
    # to about 1.5 CPU s per iteration; docs/performance.md, "Threads on a shared CPU").
    threads = [] if any(o.startswith("--train.threads") for o in overrides) else ["--train.threads", "1"]
    cmd = [*medvol_command(), "train", "--config", config, "--train.out", str(run), "--resume", "auto",
           "--train.progress", "false", *threads, *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, t0 = load1(), time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        sys.exit(f"learn_check: training failed (exit {code}); see {log_path}")
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "load1_before": load_before, "load1_after": load1(), "command": " ".join(cmd)}


def phantom_cache(config: str, overrides: list[str], folder: Path) -> list[str]:
    """Build (or reuse) a preprocessing cache of the config's phantoms at the model size in
    ``folder``; returns the override that trains on it. On-the-fly 3D phantoms cost more CPU than
    a narrow model's step (docs/learning.md), a cache only its first build."""
    from medvol.config import load_config
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    cfg = load_config(config, overrides)
    if cfg.data.source != "phantom":
        sys.exit(f"learn_check: --cache needs data.source phantom, the config has {cfg.data.source}")
    if not (folder / "manifest.json").exists():
        files = folder.with_name(folder.name + "_phantoms")
        write_phantoms(cfg.data.phantom_n, cfg.model.size, files, seed=cfg.data.phantom_seed,
                       nodules=cfg.data.phantom_nodules)
        build_cache(files, folder, PreprocessParams(size=cfg.model.size))
    return ["--data.source", str(folder)]


def losses_from_log(log_path: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        match = LOG_LINE.match(line.strip())
        if not match:
            continue
        it = int(match.group(1))
        for item in match.group(2).split():
            key, _, value = item.partition("=")
            try:
                curves.setdefault(key, []).append((it, float(value)))
            except ValueError:
                pass
    return curves


def generate(run: Path, n: int, seed: int):
    """``(samples [n, C, ...] as numpy in [-1, 1], cfg, iteration)`` from the run's latest checkpoint."""
    import torch

    from medvol.train.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    system, cfg, state = load_checkpoint(run)
    system.set_mode("reference")
    z = system.sample_latent(n, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"))
    out = [system.generate(z[i:i + 8]).float() for i in range(0, n, 8)]
    return torch.cat(out).numpy(), cfg, int(state["iteration"])


def real_items(cfg, n: int, seed: int | None, volumes: int = 16, geometry: bool = False):
    """``n`` items of the config's data (held-out phantoms of ``seed``, or the training set when
    ``seed`` is None), spread evenly over the dataset (slice datasets are ordered by volume).
    2D: the slices of ``volumes`` held-out phantoms; with ``geometry`` also the slices'
    ``(spacing, window)``."""
    from medvol.models.registry import spec
    from medvol.train.data import build_dataset

    data = cfg.data
    dims = spec(cfg.model.name).dims  # the registry's: ldm is 3D too
    if seed is not None:
        # Phantoms rendered on the fly equal the preprocessed files of `medvol data phantom` at the
        # model size, so a run trained on such a cache is scored against on-the-fly phantoms too.
        data = dataclasses.replace(data, source="phantom", phantom_seed=seed,
                                   phantom_n=max(n, 16) if dims == 3 else volumes)
    channels = cfg.model.options.get("channels", 1) + (cfg.model.mask_channels if dims == 2 else 0)
    dataset = build_dataset(data, cfg.model.size, dims=dims, channels=channels,
                            mask_channels=cfg.model.mask_channels)
    index = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)
    items = np.stack([np.asarray(dataset[int(i)]["image"], dtype=np.float32) for i in index])
    return (items, tuple(dataset.spacing), tuple(dataset.window)) if geometry else items


def slice_factors(cfg, fake: np.ndarray, n: int, seed: int) -> dict:
    """2D phantom runs: the slice factor metric (medvol.eval.factors.score_slices) of ``fake``
    against ``n`` held-out slices of 64 phantoms of ``seed``, beside the same of ``n`` slices of 64
    phantoms of ``seed + 1`` (the real-vs-real value at this N: a generator of the population
    scores about that)."""
    from medvol.eval.factors import score_slices

    real, spacing, window = real_items(cfg, n, seed, volumes=64, geometry=True)
    other = real_items(cfg, n, seed + 1, volumes=64)
    fake_scores, floor = score_slices(real, fake, spacing, window), score_slices(real, other, spacing, window)
    out = {"n": [len(real), len(fake)], "spacing_mm": list(spacing), "continuous": {}}
    for key, value in fake_scores["continuous"].items():
        out["continuous"][key] = {"w1_norm": round(value["w1_norm"], 4),
                                  "real_vs_real": round(floor["continuous"][key]["w1_norm"], 4),
                                  "real_mean": round(value["real_mean"], 4), "fake_mean": round(value["fake_mean"], 4)}
    out["modes"] = {"coverage": round(fake_scores["modes"]["coverage"], 4),
                    "coverage_real_vs_real": round(floor["modes"]["coverage"], 4),
                    "real": fake_scores["modes"]["real"], "fake": fake_scores["modes"]["fake"],
                    "missing": fake_scores["modes"]["missing"]}
    return out


def _ssim(pair: tuple[np.ndarray, np.ndarray]) -> float:
    from skimage.metrics import structural_similarity

    return structural_similarity(pair[0], pair[1], data_range=2.0)


def pairwise_ssim(items: np.ndarray, workers: int = 1) -> float:
    """Mean SSIM over all pairs of ``items[:, 0]``; ``workers`` > 1 spreads the pairs over processes
    (3D SSIM at 128^3 costs about a second a pair)."""
    x = items[:, 0]
    pairs = [(x[i], x[j]) for i in range(len(x)) for j in range(i + 1, len(x))]
    if workers > 1 and len(pairs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(pairs))) as pool:
            values = list(pool.map(_ssim, pairs))
    else:
        values = [_ssim(pair) for pair in pairs]
    return float(np.mean(values))


def pooled(items: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(items[:, :1])
    target = 8 if x.dim() == 5 else 16
    pool = F.adaptive_avg_pool3d if x.dim() == 5 else F.adaptive_avg_pool2d
    return pool(x, target).flatten(1).numpy().astype(np.float64)


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of ``a`` the Euclidean distance to its nearest row of ``b``."""
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d, 0)).min(1)


def scores(fake: np.ndarray, real: np.ndarray, train_set: np.ndarray, workers: int = 1) -> dict:
    from medvol.eval import prdc

    f, r, t = pooled(fake), pooled(real), pooled(train_set)
    quality = prdc(r, f, k=5)
    return {
        "ssim_pairwise_fake": round(pairwise_ssim(fake, workers), 4),
        "ssim_pairwise_real": round(pairwise_ssim(real, workers), 4),
        "prdc_pooled": {k: round(float(v), 4) for k, v in quality.items() if k != "k"},
        # The ceiling: training items scored against the held-out ones the same way.
        "prdc_pooled_train_items": {k: round(float(v), 4) for k, v in prdc(r, t, k=5).items() if k != "k"},
        "nn_train_fake": round(float(nearest(f, t).mean()), 4),
        "nn_train_heldout": round(float(nearest(r, t).mean()), 4),
        "fake_mean": round(float(fake[:, 0].mean()), 4), "real_mean": round(float(real[:, 0].mean()), 4),
        "fake_std_over_samples": round(float(fake[:, 0].std(0).mean()), 4),
        "real_std_over_samples": round(float(real[:, 0].std(0).mean()), 4),
    }


def factor_numbers(fake: np.ndarray, real: np.ndarray) -> dict:
    """Volumes only: the factor metric (``medvol evaluate --metrics factors``,
    :func:`medvol.eval.factors.factor_scores`) of the samples against the held-out phantoms, both
    measured on the phantoms' grid and window at the model size."""
    from types import SimpleNamespace

    from medvol.data.phantom_factors import measure_factors
    from medvol.eval.factors import factor_scores, source_geometry

    spacing, window = source_geometry(SimpleNamespace(kind="phantom", size=real.shape[-1]))
    measured = [[measure_factors(v[0], spacing, window=window) for v in items] for items in (real, fake)]
    return factor_scores(*measured)


#: The anatomical factors of the factor metric (the others: nodules, noise, slice blur).
ANATOMY = ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio")


def factor_summary(factors: dict) -> dict:
    """The factor metric in a few numbers: mean W1/std over the scored factors beside its floor
    (two real halves), the same over the anatomical factors only, the mode coverage and the
    generated volumes' modes."""
    def mean(key: str, names) -> float | None:
        values = [factors["continuous"][k][key] for k in names if k in factors["continuous"]]
        values = [v for v in values if np.isfinite(v)]
        return round(float(np.mean(values)), 3) if values else None

    return {"w1_norm_mean": mean("w1_norm", factors["continuous"]),
            "floor_norm_mean": mean("floor_norm", factors["continuous"]),
            # The anatomy apart from the acquisition (noise, slice blur), which a smooth generator
            # misses by far more than the real spread and would otherwise dominate the mean.
            "w1_norm_anatomy_mean": mean("w1_norm", ANATOMY),
            "floor_norm_anatomy_mean": mean("floor_norm", ANATOMY),
            "w1_norm": {k: round(v["w1_norm"], 3) for k, v in factors["continuous"].items()},
            "coverage": round(factors["modes"]["coverage"], 3), "fake_modes": factors["modes"]["fake"]}


def montage(real: np.ndarray, fake: np.ndarray, path: Path, title: str, rows: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if real.ndim == 5:  # volumes: each row a real volume's 3 central slices, then a sample's
        k = min(rows, len(real), len(fake))
        fig, axes = plt.subplots(k, 6, figsize=(9, 1.6 * k), squeeze=False)
        for i in range(k):
            for block, vol in ((0, real[i, 0]), (3, fake[i, 0])):
                s = vol.shape[0] // 2
                for j, im in enumerate((vol[s], vol[:, s], vol[:, :, s])):
                    ax = axes[i, block + j]
                    ax.imshow(im, cmap="gray", vmin=-1, vmax=1, origin="lower" if j else "upper")
                    ax.set_xticks([]), ax.set_yticks([])
                    if i == 0:
                        ax.set_title(("real " if block == 0 else "sample ") + ("axial", "coronal", "sagittal")[j],
                                     fontsize=7)
    else:  # images: two grids of 4 x (k/4)
        k = min(16, len(real), len(fake))
        cols = 4
        fig, axes = plt.subplots(k // cols, 2 * cols + 1, figsize=(9, 1.1 * (k // cols)), squeeze=False)
        for i in range(k):
            r, c = divmod(i, cols)
            axes[r, c].imshow(real[i, 0], cmap="gray", vmin=-1, vmax=1)
            axes[r, cols + 1 + c].imshow(fake[i, 0], cmap="gray", vmin=-1, vmax=1)
        for ax in axes.flat:
            ax.set_xticks([]), ax.set_yticks([]), ax.axis("off")
        axes[0, 0].set_title("real", fontsize=7, loc="left")
        axes[0, cols + 1].set_title("samples", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for key, points in curves.items():
        if key in ("crf_weight",) or not points:
            continue
        it, value = zip(*points)
        ax.plot(it, value, label=key, lw=1)
    ax.set_xlabel("iteration"), ax.set_ylabel("loss (log-window mean)"), ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=32, help="samples and real items scored (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed of the samples")
    parser.add_argument("--eval-seed", type=int, default=1000, help="phantom seed of the held-out real set")
    parser.add_argument("--factor-n", type=int, default=256, help="2D phantom runs: samples and held-out slices "
                        "of the slice factor metric (default 256; 0: none)")
    parser.add_argument("--no-train", action="store_true", help="score OUT/run as it is")
    parser.add_argument("--cache", metavar="DIR", help="train on a preprocessing cache of the config's phantoms "
                        "in DIR (built on first use; reused after)")
    parser.add_argument("--evaluate", metavar="DOMAIN_PT", help="3D: also run medvol evaluate with these domain features")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run, log_path = out / "run", out / "train.log"
    numbers_path = out / "numbers.json"
    numbers = json.loads(numbers_path.read_text()) if numbers_path.exists() else {}
    numbers.update(cpu=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M"))
    if not args.no_train:
        if args.cache:
            overrides = [*overrides, *phantom_cache(args.config, overrides, Path(args.cache).resolve())]
        numbers.update(config=args.config, overrides=overrides)
        numbers.setdefault("training", []).append(train(args.config, run, overrides, log_path))
    t0 = time.perf_counter()
    fake, cfg, iteration = generate(run, args.n, args.seed)
    real = real_items(cfg, args.n, args.eval_seed)
    train_set = real_items(cfg, args.n, None)
    numbers.update(iteration=iteration, model=f"{cfg.model.name}@{cfg.model.size}", n=args.n,
                   eval_seed=args.eval_seed, sample_seed=args.seed, **scores(fake, real, train_set))
    if fake.ndim == 4 and args.factor_n and cfg.data.plane == "axial":
        # Drawn with the same latent seed as the n samples above.
        many = generate(run, args.factor_n, args.seed)[0] if args.factor_n > args.n else fake[:args.factor_n]
        numbers["slice_factors"] = slice_factors(cfg, many, args.factor_n, args.eval_seed)
    if fake.ndim == 5:
        numbers["factors"] = factor_numbers(fake, real)
        numbers["factors_summary"] = factor_summary(numbers["factors"])
        # The ceiling, as prdc_pooled_train_items: training phantoms scored the same way.
        numbers["factors_summary_train_items"] = factor_summary(factor_numbers(train_set, real))
    title = f"{cfg.model.name} {cfg.model.size}, iteration {iteration}: {Path(args.config).name} {' '.join(overrides)}"
    montage(real, fake, out / "montage.png", title)
    if log_path.exists():
        curves = losses_from_log(log_path)
        if curves:
            loss_plot(curves, out / "losses.png", title)
    numbers["scoring_wall_s"] = round(time.perf_counter() - t0, 1)
    if args.evaluate:
        ev = out / "evaluate"
        cmd = [*medvol_command(), "evaluate", "--real", f"phantom:{args.eval_seed}", "--size", str(cfg.model.size),
               "--fake", str(run), "--features", f"domain:{args.evaluate}", "--metrics", "fid,prdc,msssim",
               "--n", str(args.n), "--out", str(ev), "--overwrite", "--seed", str(args.seed)]
        subprocess.check_call(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
        numbers["evaluate"] = str(ev / "scores.json")
    numbers_path.write_text(json.dumps(numbers, indent=1))
    keys = ("iteration", "ssim_pairwise_fake", "ssim_pairwise_real", "prdc_pooled", "prdc_pooled_train_items",
            "nn_train_fake", "nn_train_heldout", "factors_summary")
    print(json.dumps({k: numbers[k] for k in keys if k in numbers}))
    if "slice_factors" in numbers:
        f = numbers["slice_factors"]
        modes = f["modes"]
        print(json.dumps({"w1_norm (real-vs-real)": {k: f"{v['w1_norm']} ({v['real_vs_real']})"
                                                     for k, v in f["continuous"].items()},
                          "mode coverage (real-vs-real)": f"{modes['coverage']} ({modes['coverage_real_vs_real']})"}))
    if numbers.get("training"):
        print(json.dumps(numbers["training"][-1]))
    print(f"montage: {out / 'montage.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
