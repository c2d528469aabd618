"""``medvol train --config NAME|FILE [--mode M] [--resume PATH|auto [--fork NEWDIR | --allow-changes]] [--threads N]
[--section.key VALUE ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from medvol.utils import add_threads_option, set_threads

_EPILOG = """config overrides: any config key as --section.key VALUE (or --section.key=VALUE), e.g.
  --train.iterations 10 --data.batch 4 --train.amp auto|bf16|fp16|none --train.lr.G 2e-4 --data.source CACHE_DIR
multi-GPU / multi-process: torchrun --nproc_per_node N -m medvol.cli train --config ...
a NaN/inf loss stops the run (exit 2) and keeps the last good checkpoint.
one run per folder: a folder that already holds a run is refused (exit 2) unless --resume auto
  continues it; --out starts a new run elsewhere. --resume auto skips damaged newer checkpoints.
resuming from an older checkpoint of the run, or with a setting other than the run's config
  (iterations, out, device, workers and the log/sample/checkpoint cadence may change), is refused
  unless --fork NEWDIR (a new run folder from that checkpoint; the run is only read) or
  --allow-changes (continue in place; the changes go to history.jsonl, newer checkpoints to
  superseded/N/). A config is never rewritten: a start with another config writes config.N.yaml.
  With --resume and no --config, the run's own config is the base of the overrides.
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
        description="Train a 3D or 2D generative model from a config (3D: crfgan, hagan, ldm; 2D: ldm2d, dcgan, "
                    "mlpgan, stylegan2, fastgan, spade, pix2pix, cyclegan; `medvol configs` lists the shipped ones); writes a run "
                    "folder with config.yaml, checkpoints/, samples/ and tb/ (TensorBoard).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The subparser is created by argparse; switching its class only changes parse_known_args.
    parser.__class__ = _OverrideParser
    parser.add_argument("--config", help="a shipped config by name (crfgan_256, demo, ...) or a YAML file "
                                         "(with --resume, default: the run's newest config.yaml / config.N.yaml)")
    parser.add_argument("--mode", choices=["reference", "optimized"],
                        help="reference: fp32 plain ops (published); optimized (default): autocast "
                             "(train.amp auto: bf16 where the device has it natively, else fp32), "
                             "activation checkpointing, fused ops")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a checkpoint file or run folder, or 'auto' (latest in train.out)")
    parser.add_argument("--out", help="run folder (same as --train.out)")
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--fork", metavar="NEWDIR",
                     help="start a new run folder from the --resume checkpoint (history.jsonl records it); "
                          "settings may differ")
    way.add_argument("--allow-changes", action="store_true",
                     help="resume in place from an older checkpoint or with changed settings, recording "
                          "each change in history.jsonl")
    add_threads_option(parser)
    parser.set_defaults(func=run, overrides=[])


def _run_config_path(args) -> Path:
    """Without ``--config``: the newest config file of the run being resumed."""
    from medvol.errors import MedvolError
    from medvol.train.history import config_versions

    if args.resume is None:
        raise MedvolError("--config is required (without --resume there is no run to take the config from)")
    if args.resume == "auto":
        if not args.out:
            raise MedvolError("--resume auto without --config needs --out RUN_DIR (the run to continue)")
        run_dir = Path(args.out)
    else:
        given = Path(args.resume)
        if not given.exists():
            raise MedvolError(f"checkpoint {given} does not exist")
        run_dir = given if given.is_dir() else given.parent
        if run_dir.name == "checkpoints":
            run_dir = run_dir.parent
    versions = config_versions(run_dir)
    if not versions:
        raise MedvolError(f"no config.yaml in {run_dir} to resume with; name one with --config")
    return versions[-1][1]


def run(args) -> int:
    from medvol.config import load_config
    from medvol.train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(args.overrides)
    if args.mode:
        overrides += ["--train.mode", args.mode]
    if args.out:
        overrides += ["--train.out", args.out]
    if args.config:
        cfg = load_config(args.config, overrides)
    else:
        path = _run_config_path(args)
        # The run's config names the folder as it was typed then; the run is where it is now.
        cfg = load_config(path, ([] if args.out else ["--train.out", str(path.parent)]) + overrides)
    # --threads, else the config's train.threads, else medvol's default; config.yaml records it.
    threads = set_threads(args.threads if args.threads is not None else (cfg.train.threads or None))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    run_dir = train(cfg, resume=args.resume, fork=args.fork, allow_changes=args.allow_changes)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
        print(f"run folder: {run_dir}")
    return 0
