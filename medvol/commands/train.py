"""``medvol train --config configs/X.yaml [--mode M] [--resume PATH|auto] [--section.key VALUE ...]``."""

from __future__ import annotations

import argparse
import logging
import os

_EPILOG = """config overrides: any config key as --section.key VALUE (or --section.key=VALUE), e.g.
  --train.iterations 10 --data.batch 4 --train.amp fp16 --train.lr.G 2e-4 --data.source CACHE_DIR
multi-GPU / multi-process: torchrun --nproc_per_node N -m medvol.cli train --config ...
a NaN/inf loss stops the run (exit 2) and keeps the last good checkpoint.
one run per folder: a folder that already holds a run is refused (exit 2) unless --resume auto
  continues it; --out starts a new run elsewhere. --resume auto skips damaged newer checkpoints.
Ctrl-C (SIGINT) or SIGTERM: checkpoint at the end of the current iteration, then exit 130 / 143."""


class _OverrideParser(argparse.ArgumentParser):
    """Keeps unrecognised ``--section.key value`` arguments as config overrides, not errors."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + extras
        return namespace, []


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a 3D GAN from a YAML config",
        description="Train HA-GAN or CRF-GAN from a config in configs/; writes a run folder with "
                    "config.yaml, checkpoints/, samples/ and tb/ (TensorBoard).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The subparser is created by argparse; switching its class only changes parse_known_args.
    parser.__class__ = _OverrideParser
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/crfgan_256.yaml")
    parser.add_argument("--mode", choices=["reference", "optimized"],
                        help="reference: fp32 plain ops (published); optimized (default): autocast, "
                             "activation checkpointing, fused ops")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a checkpoint file or run folder, or 'auto' (latest in train.out)")
    parser.add_argument("--out", help="run folder (same as --train.out)")
    parser.set_defaults(func=run, overrides=[])


def run(args) -> int:
    from medvol.config import load_config
    from medvol.train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(args.overrides)
    if args.mode:
        overrides += ["--train.mode", args.mode]
    if args.out:
        overrides += ["--train.out", args.out]
    cfg = load_config(args.config, overrides)
    run_dir = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
        print(f"run folder: {run_dir}")
    return 0
