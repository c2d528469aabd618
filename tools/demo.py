"""The README demo: phantom CTs -> preprocessing cache -> a short CPU training -> NIfTI samples.

    python tools/demo.py --out demo_out            # what `make demo` runs (minutes, 2 cores)
    python tools/demo.py --out /tmp/d --train.iterations 3    # any config override is accepted

Steps: write procedural phantom CTs as NIfTI (``medvol.data.phantom.write_phantoms``, 256 at the
model size), preprocess them into a cache (``medvol.data.cache.build_cache``: window [-1024, 600]
HU, 32^3 as shipped), train the CRF-GAN of ``configs/learn/crfgan_32.yaml`` on that cache, then
generate volumes from the final checkpoint, written as NIfTI in HU with the training spacing, and
draw ``chests.png``: central axial / coronal / sagittal slices of held-out phantoms beside samples.
Every output path is printed.

The cache and the run folder are named by the model size (``cache32/``, ``run32/``): a cache only
accepts volumes preprocessed with its own parameters and a run only resumes with its own model, so
a demo at another size (an override, or the 64^3 demo of earlier versions in the same ``--out``)
gets folders of its own instead of failing on the old ones. Running the demo again reuses the cache
and resumes the run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


#: The config `make demo` trains: the 32^3 CRF-GAN that learns the phantom population on a CPU
#: (docs/learning.md). Reference mode in fp32, so it never runs bf16 on a CPU that only emulates it.
DEFAULT_CONFIG = "learn/crfgan_32"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"a shipped config name or a YAML file (default {DEFAULT_CONFIG})")
    parser.add_argument("--phantoms", type=int, default=256, help="phantom CTs to write (default 256)")
    parser.add_argument("--phantom-size", type=int, default=None,
                        help="voxels per side of the written phantoms, resized to the model size by the cache "
                             "(default: the model size)")
    parser.add_argument("--samples", type=int, default=2, help="volumes to generate (default 2)")
    parser.add_argument("--picture", type=int, default=6, metavar="N",
                        help="chests in the closing picture: N held-out phantoms beside N samples (default 6; 0: none)")
    args, overrides = parser.parse_known_args(argv)

    from medvol.config import load_config
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams
    from medvol.errors import MedvolError
    from medvol.sample.generate import generate_volumes
    from medvol.train.trainer import train

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out).resolve()
    started = time.perf_counter()
    try:
        # Resolve the config first so a bad override fails before any work.
        cfg = load_config(args.config, overrides)
        cache_dir, run_out = out / f"cache{cfg.model.size}", out / f"run{cfg.model.size}"
        cfg = load_config(args.config, ["--data.source", str(cache_dir), "--train.out", str(run_out), *overrides])
        if args.phantom_size is None:
            args.phantom_size = cfg.model.size
        t0 = time.perf_counter()
        phantoms = write_phantoms(args.phantoms, args.phantom_size, out / "phantoms", seed=0)
        print(f"[1/5] {len(phantoms)} phantom CTs ({args.phantom_size}^3, HU) in {out / 'phantoms'} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

        t0 = time.perf_counter()
        summary = build_cache(out / "phantoms", cache_dir, PreprocessParams(size=cfg.model.size),
                              workers=max(1, min(2, cfg.data.workers)))
        print(f"[2/5] preprocessing cache ({cfg.model.size}^3, [-1024, 600] HU -> [-1, 1]) in {cache_dir} "
              f"({time.perf_counter() - t0:.0f} s) {summary_line(summary)}", flush=True)

        t0 = time.perf_counter()
        print(f"[3/5] training {cfg.model.name} {cfg.model.size}^3 (base width {cfg.model.base_width}, "
              f"{cfg.train.iterations} iterations, {cfg.train.mode} mode) ...", flush=True)
        run_dir = train(cfg, resume="auto")
        from medvol.train.checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(run_dir)
        print(f"      run folder {run_dir} ({time.perf_counter() - t0:.0f} s)\n"
              f"      checkpoint {checkpoint}\n"
              f"      TensorBoard: tensorboard --logdir {run_dir / 'tb'}", flush=True)

        t0 = time.perf_counter()
        samples = generate_volumes(checkpoint, args.samples, out / "samples", seed=0)
        print(f"[4/5] {len(samples)} generated volumes (NIfTI, HU) ({time.perf_counter() - t0:.0f} s):")
        for path in samples:
            print(f"      {path}")
        if args.picture > 0:
            t0 = time.perf_counter()
            picture = chest_picture(run_dir, args.picture, out / "chests.png")
            print(f"[5/5] {picture}: central axial / coronal / sagittal slices of {args.picture} held-out "
                  f"phantoms (left) beside {args.picture} samples (right) ({time.perf_counter() - t0:.0f} s)")
    except MedvolError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    print(f"demo finished in {time.perf_counter() - started:.0f} s; view a sample with: "
          f"medvol view {samples[0]}")
    return 0


def chest_picture(run_dir: Path, n: int, path: Path) -> Path:
    """Three planes of ``n`` held-out phantoms (seed 1000, never trained on) beside ``n`` samples of
    the run's last checkpoint (latent seed 0), drawn by ``tools/learn_check.py``'s montage."""
    tools = str(Path(__file__).resolve().parent)
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import learn_check

    fake, cfg, iteration = learn_check.generate(run_dir, n, seed=0)
    real = learn_check.real_items(cfg, n, seed=1000)
    learn_check.montage(real, fake, path, f"{cfg.model.name} {cfg.model.size}^3 after {iteration} iterations: "
                        "held-out phantoms (left), samples (right)", rows=n)
    return path


def summary_line(summary) -> str:
    return f"{len(summary.processed)} processed, {len(summary.reused)} reused, {len(summary.failed)} failed"


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())
