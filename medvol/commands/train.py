"""``medvol train --config NAME|FILE [--mode M] [--resume PATH|auto] [--threads N] [--section.key VALUE ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from medvol.utils import add_threads_option, set_threads

_EPILOG = """config overrides: any config key as --section.key VALUE (or --section.key=VALUE), e.g.
  --train.iterations 10 --data.batch 4 --train.amp auto|bf16|fp16|none --train.lr.G 2e-4 --data.source CACHE_DIR
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
        "train", help="train a 3D or 2D generative model from a YAML config",
        description="Train a 3D or 2D generative model from a config (3D: crfgan, hagan; 2D: dcgan, "
                    "mlpgan, stylegan2, fastgan, spade, pix2pix; `medvol configs` lists the shipped ones); writes a run "
                    "folder with config.yaml, checkpoints/, samples/ and tb/ (TensorBoard).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The subparser is created by argparse; switching its class only changes parse_known_args.
    parser.__class__ = _OverrideParser
    parser.add_argument("--config", required=True,
                        help="a shipped config by name (crfgan_256, demo, ...) or a YAML file")
    parser.add_argument("--mode", choices=["reference", "optimized"],
                        help="reference: fp32 plain ops (published); optimized (default): autocast "
                             "(train.amp auto: bf16 where the device has it natively, else fp32), "
                             "activation checkpointing, fused ops")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a checkpoint file or run folder, or 'auto' (latest in train.out)")
    parser.add_argument("--out", help="run folder (same as --train.out)")
    add_threads_option(parser)
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
    # --threads, else the config's train.threads, else medvol's default; config.yaml records it.
    threads = set_threads(args.threads if args.threads is not None else (cfg.train.threads or None))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    run_dir = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
        print(f"run folder: {run_dir}")
    return 0
