"""The learning check of tools/gpu_check.sh: does a learned-style 3D config learn at 128^3 on a GPU?

    python tools/gpu_learn_check.py --data-only --size 128 --phantoms 48 --out DIR     # the cache
    python tools/gpu_learn_check.py --size 128 --train-seconds 75 --n 10 --out DIR      # the rest

``--data-only`` renders ``--phantoms`` phantoms (seed 0) at ``--size`` into ``DIR/phantoms`` and
preprocesses them into the cache ``DIR/cache`` (CPU only: gpu_check.sh runs it on the host CPU while
the GPU parts run). Without it the tool (building the cache first if it is missing):

1. trains ``--config`` (default ``configs/learn/crfgan_32.yaml``) at ``--size`` on the cache into
   ``DIR/run`` on ``--device``, in the config's mode and precision, for ``--iterations``
   or, with ``--train-seconds``, until that many wall seconds have passed: then SIGTERM, on which
   medvol saves the current iteration and exits;
2. draws ``--n`` samples (latent seed 0) and scores them as ``tools/learn_check.py`` does (pairwise
   SSIM beside the held-out phantoms', pooled-pixel precision / recall / coverage, std over
   samples, nearest training phantom; held-out: ``--n`` phantoms of seed 1000) and with the factor
   metric (W1 / real std per factor beside the real-vs-real floor, mode coverage;
   ``tools/compare_seeds.py``);
3. writes ``DIR/numbers.json``, ``DIR/learn.md`` (the numbers as a table), ``DIR/montage.png``
   (central axial / coronal / sagittal slices, real beside samples) and ``DIR/losses.png``.

Any further ``--section.key value`` is a config override.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import learn_check  # noqa: E402

from medvol.errors import MedvolError  # noqa: E402


def build_cache(out: Path, size: int, phantoms: int) -> Path:
    from medvol.data.cache import build_cache as build
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    cache = out / "cache"
    if not (cache / "manifest.json").exists():
        write_phantoms(phantoms, size, out / "phantoms", seed=0)
        build(out / "phantoms", cache, PreprocessParams(size=size))
    return cache


def train(config: str, overrides: list[str], out: Path, seconds: float | None) -> dict:
    """``medvol train`` into ``out/run``; stopped with SIGTERM after ``seconds`` wall seconds."""
    command = [*learn_check.medvol_command(), "train", "--config", config, "--train.out", str(out / "run"),
               "--train.progress", "false", *overrides]
    start = time.perf_counter()
    with open(out / "train.log", "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        stopped = False
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            stopped = True
            proc.send_signal(signal.SIGTERM)  # medvol checkpoints the iteration it is in, exits 143
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    code = proc.returncode
    if not (code == 0 or (stopped and code in (143, -15))):
        raise MedvolError(f"training exited {code}; see {out / 'train.log'}")
    return {"wall_s": round(time.perf_counter() - start, 1), "stopped_at_s": seconds if stopped else None,
            "command": " ".join(command)}


def markdown(numbers: dict) -> str:
    f = numbers["factors"]
    prdc, ceiling = numbers["prdc_pooled"], numbers["prdc_pooled_train_items"]
    rows = [("iterations", f"{numbers['iteration']}", ""),
            ("training wall s", f"{numbers['training']['wall_s']:.0f}", ""),
            ("SSIM pairs (lower: more varied)", f"{numbers['ssim_pairwise_fake']:.3f}", f"{numbers['ssim_pairwise_real']:.3f}"),
            ("std over samples", f"{numbers['fake_std_over_samples']:.3f}", f"{numbers['real_std_over_samples']:.3f}"),
            ("pooled precision / recall / coverage",
             f"{prdc['precision']:.2f} / {prdc['recall']:.2f} / {prdc['coverage']:.2f}",
             f"{ceiling['precision']:.2f} / {ceiling['recall']:.2f} / {ceiling['coverage']:.2f} (training phantoms)"),
            ("nearest training phantom", f"{numbers['nn_train_fake']:.2f}", f"{numbers['nn_train_heldout']:.2f} (held-out)"),
            ("factor W1 / real std, mean", f"{numbers['factor_w1_mean']:.2f}", f"{numbers['factor_floor_mean']:.2f} (floor)"),
            ("the same over body width, depth, lung volume, lung ratio", f"{numbers['factor_w1_anatomy']:.2f}",
             f"{numbers['factor_floor_anatomy']:.2f} (floor)"),
            ("mode coverage", f"{numbers['mode_coverage']:.2f}", "1.00")]
    lines = [f"{numbers['model']}, `{numbers['config']}` {' '.join(numbers['overrides'])}; {numbers['n']} samples "
             f"against {numbers['n']} held-out phantoms (seed {numbers['eval_seed']}); device {numbers['device']}", "",
             "| score | samples | real |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| factor | W1 / real std | floor |", "|---|---|---|"]
    for name, v in f["continuous"].items():
        if math.isfinite(v["w1_norm"]):
            lines.append(f"| {name} | {v['w1_norm']:.2f} | {v['floor_norm']:.2f} |")
    lines += ["", f"Modes missing among the samples: {', '.join(f['modes']['missing']) or 'none'}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(ROOT / "configs" / "learn" / "crfgan_32.yaml"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--phantoms", type=int, default=48, help="phantoms in the training cache")
    parser.add_argument("--data-only", action="store_true", help="build the cache and stop")
    parser.add_argument("--iterations", type=int, help="train this many iterations")
    parser.add_argument("--train-seconds", type=float, help="or train until this many wall seconds have passed")
    parser.add_argument("--n", type=int, default=10, help="samples and held-out phantoms scored (>= 6)")
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the SSIM pairs")
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.n < 6:
            raise MedvolError("--n must be >= 6 (precision / recall use k = 5)")
        if args.phantoms < 8:
            raise MedvolError("--phantoms must be >= 8")
        if not args.data_only and (args.iterations is None) == (args.train_seconds is None):
            raise MedvolError("give one of --iterations and --train-seconds")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cache = build_cache(out, args.size, args.phantoms)
        if args.data_only:
            print(f"cache: {cache}")
            return 0
        overrides = ["--model.size", str(args.size), "--data.source", str(cache), "--data.workers", "2",
                     "--train.device", args.device, "--train.iterations",
                     str(args.iterations or 10**7), "--train.ckpt_every", str(10**7), "--train.sample_every",
                     str(10**7), "--train.log_every", "10", *overrides]
        training = train(args.config, overrides, out, args.train_seconds)
        fake, cfg, iteration = learn_check.generate(out / "run", args.n, 0)
        real = learn_check.real_items(cfg, args.n, args.eval_seed)
        train_set = learn_check.real_items(cfg, args.n, None)
        import compare_seeds
        import torch

        numbers = {"model": f"{cfg.model.name}@{cfg.model.size}", "config": os.path.relpath(args.config, ROOT),
                   "overrides": overrides, "iteration": iteration, "training": training, "n": args.n,
                   "eval_seed": args.eval_seed,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
                   **learn_check.scores(fake, real, train_set, workers=args.workers),
                   **compare_seeds.factor_numbers(fake, real, args.size)}
        (out / "numbers.json").write_text(json.dumps(numbers, indent=1), encoding="utf-8")
        (out / "learn.md").write_text(markdown(numbers), encoding="utf-8")
        title = f"{numbers['model']}, iteration {iteration}, {training['wall_s']:.0f} s on {numbers['device']}"
        learn_check.montage(real, fake, out / "montage.png", title)
        curves = learn_check.losses_from_log(out / "train.log")
        if curves:
            learn_check.loss_plot(curves, out / "losses.png", title)
    except MedvolError as error:
        print(f"gpu_learn_check: error: {error}", file=sys.stderr)
        return 2
    print((out / "learn.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
