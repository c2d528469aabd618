"""``medvol study downstream``: U-Nets trained on real, augmented, synthetic and mixed data."""

from __future__ import annotations

import argparse
import shlex
import sys

from medvol.utils import add_threads_option, set_threads


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths such as 8,16,32, got {text!r}") from None
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive widths, got {text!r}")
    return values


def register(actions) -> None:
    parser = actions.add_parser(
        "downstream", help="does synthetic data help train a segmentation U-Net? (Dice vs FID)",
        description="Train a MONAI U-Net (3D on volumes, 2D when the synthetic data are slices) on: the real "
                    "cache's train split; the same with classical augmentation; each synthetic source alone; "
                    "real + each synthetic source; each with --seeds seeds. Score Dice per class on the cache's "
                    "val split (held-out real volumes), with each source's FID beside it. Synthetic data are "
                    "used for training on purpose here, and checked to be marked synthetic. Writes results.json, "
                    "results.md and dice_vs_fid.png into --out; an interrupted study resumes, and a later run with "
                    "another --synthetic adds the source (docs/studies.md).")
    parser.add_argument("--real", required=True, metavar="CACHE",
                        help="a medvol cache with label maps (`medvol preprocess` of scans with <name>_mask files)")
    parser.add_argument("--synthetic", action="append", default=[], metavar="[NAME=]DIR_OR_CKPT", required=True,
                        help="generated images with X_mask files beside them (`medvol generate --out DIR` of a "
                        "model with mask channels), or a checkpoint / run folder to generate them from; repeat")
    parser.add_argument("--n-synthetic", type=int, metavar="N",
                        help="synthetic images per source (a folder: its first N; a checkpoint: N generated, default 32)")
    parser.add_argument("--seeds", type=int, default=3, help="networks per set-up (default 3)")
    parser.add_argument("--labels", metavar="NAME,NAME", help="classes to segment (default: every class of the cache)")
    parser.add_argument("--iterations", type=int, default=150, help="U-Net training iterations (default 150)")
    parser.add_argument("--batch", type=int, default=2, help="U-Net batch size (default 2)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--unet-channels", type=_channels, default=(8, 16, 32), metavar="W,W,...",
                        help="U-Net widths, stride 2 between them (default 8,16,32)")
    parser.add_argument("--features", metavar="FILE",
                        help="domain feature file for FID of volumes (default: trained on the real train split "
                        "into OUT/domain_features.pt)")
    parser.add_argument("--feature-iters", type=int, default=100,
                        help="iterations of that training (default 100)")
    parser.add_argument("--generate-seed", type=int, default=0, help="latent seed of checkpoint sources (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")
    add_threads_option(parser)
    parser.add_argument("--out", required=True, help="the study folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.study.downstream.study import run_downstream

    def log(message: str) -> None:
        print(f"medvol study downstream: {message}", file=sys.stderr, flush=True)

    set_threads(args.threads)  # results.json records the count ("threads")
    labels = [n.strip() for n in args.labels.split(",")] if args.labels else None
    results = run_downstream(args.real, args.synthetic, args.out, n_synthetic=args.n_synthetic, seeds=args.seeds,
                             labels=labels, iterations=args.iterations, batch=args.batch, lr=args.lr,
                             channels=args.unet_channels, features=args.features,
                             feature_iters=args.feature_iters, generate_seed=args.generate_seed,
                             device=args.device, log=log, command=shlex.join(["medvol", *sys.argv[1:]]))
    for row in results["setups"]:
        mean = row["mean_dice"]
        spread = f" ± {mean['std']:.3f}" if mean["std"] is not None else ""
        value = f"{mean['mean']:.3f}{spread}" if mean["mean"] is not None else "n/a"
        fid = f", FID {row['fid']:.4g}" if row["fid"] is not None else ""
        print(f"{row['title']}{' (' + row['source'] + ')' if row['source'] else ''}: mean Dice {value}{fid}")
    print(f"wrote results.json, results.md and dice_vs_fid.png to {args.out}")
    return 0
