"""``medvol preprocess``: volumes -> a cache of (S, S, S) arrays in [-1, 1] with a manifest."""

from __future__ import annotations

import argparse
import os
import re
import sys


def _pair(text: str) -> tuple[float, float]:
    """``"0.5,99.5"`` -> ``(0.5, 99.5)``."""
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    return low, high


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="preprocess volumes into a training cache",
        description="Read every volume of SRC (a file, a folder searched recursively, a glob, or a "
        ".txt list; LUNA16 subset*/ .mhd and LiTS volume-*.nii layouts work as shipped), apply the "
        "published protocol (CT: HU window, blank axial slices inside the anatomy replaced by their "
        "nearest neighbour, "
        "isotropic resampling, resize to SIZE^3 keeping the aspect with padding, scale to [-1, 1]; "
        "MR: percentile normalisation) and write DST/volumes/<name>.npy plus DST/manifest.json "
        "(sources, checksums, parameters, a seeded 90/10 train/val split). Volumes already done with "
        "the same parameters are skipped. A bad volume is reported and skipped (--strict: fails).",
    )
    parser.add_argument("--src", required=True, help="file, folder, glob or .txt list of volumes")
    parser.add_argument("--dst", required=True, help="cache folder (created or updated)")
    parser.add_argument("--size", type=int, required=True, help="output cube edge: 32, 64, 128, 256 or 512")
    parser.add_argument("--modality", default="ct", choices=["ct", "mr"], help="ct (HU window) or mr (percentiles)")
    parser.add_argument("--window", type=str, default="-1024,600",
                        help="CT window MIN,MAX in HU (default -1024,600)")
    parser.add_argument("--percentiles", type=_pair, default=(0.5, 99.5),
                        help="MR percentiles LOW,HIGH mapped to -1,1 (default 0.5,99.5)")
    parser.add_argument("--blank-slices", default="replace", choices=["replace", "remove", "keep"],
                        help="blank axial slices: replace by the nearest non-blank one (default), remove, keep")
    parser.add_argument("--no-keep-aspect", dest="keep_aspect", action="store_false",
                        help="stretch every axis to SIZE instead of padding")
    parser.add_argument("--no-orient", dest="orient", action="store_const", const=None, default="LPS",
                        help="keep the stored voxel order instead of reorienting to LPS")
    parser.add_argument("--reader", default="auto", choices=["auto", "sitk", "nibabel", "itk"],
                        help="volume reader (default auto: SimpleITK, nibabel fallback for NIfTI)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (default: min(4, CPUs))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation fraction (default 0.1)")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad volume instead of skipping it")
    # "--window -1024,600" must read as a value, not as an unknown option (argparse only accepts
    # plain negative numbers as values by default).
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+[,:]-?[\d.]+$")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.data.cache import build_cache
    from medvol.data.preprocess import PreprocessParams, parse_window

    params = PreprocessParams(size=args.size, modality=args.modality, window=parse_window(args.window),
                              percentiles=args.percentiles, keep_aspect=args.keep_aspect,
                              blank_slices=args.blank_slices, orient=args.orient)
    summary = build_cache(args.src, args.dst, params, workers=args.workers, strict=args.strict, seed=args.seed,
                          val_fraction=args.val_fraction, reader=args.reader, progress=sys.stderr.isatty())
    for source, reason in summary.failed:
        print(f"medvol preprocess: skipped {reason}", file=sys.stderr)
    split = summary.manifest["split"]
    print(f"preprocessed {len(summary.processed)} volume(s), reused {len(summary.reused)}, "
          f"skipped {len(summary.failed)} into {summary.path} "
          f"(train {split['train']}, val {split['val']}); manifest: {summary.path / 'manifest.json'}")
    return 0
