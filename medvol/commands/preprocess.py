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
        "(sources, checksums, parameters, the geometry of every array, a seeded 90/10 train/val split). "
        "A cache only grows: a new source adds its volumes, volumes already done from the same source "
        "with the same parameters are skipped, and other parameters than the cache's are refused "
        "(--overwrite replaces the cache). One run writes a cache at a time: a second one waits for it. "
        "A bad volume is reported and skipped (--strict: fails). --export-nifti DIR writes every cache "
        "entry as DIR/<name>.nii.gz with its geometry (CT in HU); without --src it exports an existing cache. "
        "A label map beside a volume (<stem>_mask, _seg, _label(s), -mask, -seg; LiTS segmentation-N; LUNA16 "
        "seg-lungs-LUNA16/<uid>) is resampled by nearest neighbour onto the volume's grid and cached as "
        "DST/volumes/<name>_labels.npy (exported as DIR/<name>_mask.nii.gz).",
    )
    parser.add_argument("--src", help="file, folder, glob or .txt list of volumes (required unless only exporting)")
    parser.add_argument("--dst", required=True, help="cache folder (created or grown)")
    parser.add_argument("--size", type=int, help="output cube edge: 32, 64, 128, 256 or 512 (required with --src)")
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
    parser.add_argument("--seed", type=int, help="seed of the train/val split (default: the cache's, 0 for a new one)")
    parser.add_argument("--val-fraction", type=float,
                        help="validation fraction (default: the cache's, 0.1 for a new one)")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad volume instead of skipping it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a cache made with other parameters or split settings (or a damaged one), "
                        "and redo this run's volumes even where they are done")
    parser.add_argument("--lock-wait", type=float, metavar="SECONDS",
                        help="how long to wait for another run writing the cache (default: until it ends; 0: refuse)")
    parser.add_argument("--allow-synthetic", action="store_true", dest="allow_synthetic",
                        help="accept volumes marked synthetic (written by `medvol generate`); refused by default. "
                        "Their manifest entries record them as synthetic, and they are never in the val split")
    parser.add_argument("--mask-labels", metavar="NAME,NAME",
                        help="class names of label ids 1, 2, ... of the label maps (default: the cache's; "
                        "LiTS liver,tumour; else label_1, label_2, ...)")
    parser.add_argument("--no-labels", dest="labels", action="store_false",
                        help="ignore label maps beside the volumes")
    parser.add_argument("--export-nifti", metavar="DIR",
                        help="write every cache entry as DIR/<name>.nii.gz with its spacing, origin and direction "
                        "(CT in HU, MR in [-1, 1])")
    # "--window -1024,600" must read as a value, not as an unknown option (argparse only accepts
    # plain negative numbers as values by default).
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+[,:]-?[\d.]+$")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.data.cache import build_cache, export_nifti, parse_mask_labels
    from medvol.data.preprocess import PreprocessParams, not_hu_warning, parse_window
    from medvol.errors import MedvolError

    def waiting(message: str) -> None:
        print(f"medvol preprocess: {message}", file=sys.stderr, flush=True)

    if args.src is None:
        if args.export_nifti is None:
            raise MedvolError("--src is required (or give --export-nifti DIR alone to export the cache --dst)")
        written = export_nifti(args.dst, args.export_nifti, wait=args.lock_wait, on_wait=waiting)
        print(f"exported {len(written)} file(s) of {args.dst} as NIfTI into {args.export_nifti}")
        return 0
    if args.size is None:
        raise MedvolError("--size is required with --src (the cube edge: 32, 64, 128, 256 or 512)")
    params = PreprocessParams(size=args.size, modality=args.modality, window=parse_window(args.window),
                              percentiles=args.percentiles, keep_aspect=args.keep_aspect,
                              blank_slices=args.blank_slices, orient=args.orient)
    summary = build_cache(args.src, args.dst, params, workers=args.workers, strict=args.strict, seed=args.seed,
                          val_fraction=args.val_fraction, reader=args.reader, progress=True,
                          overwrite=args.overwrite, wait=args.lock_wait, on_wait=waiting,
                          export_dir=args.export_nifti, allow_synthetic=args.allow_synthetic,
                          labels=args.labels, mask_labels=parse_mask_labels(args.mask_labels))
    if summary.cleaned:
        print(f"medvol preprocess: removed {len(summary.cleaned)} temporary file(s) left by an interrupted run",
              file=sys.stderr)
    if summary.replaced:
        print(f"medvol preprocess: --overwrite: {summary.replaced}", file=sys.stderr)
    if summary.reused:
        print(f"medvol preprocess: {len(summary.reused)} volume(s) already in the cache with the same parameters: "
              "skipped", file=sys.stderr)
    for source, reason in summary.failed:
        print(f"medvol preprocess: skipped {reason}", file=sys.stderr)
    if summary.not_hu:
        print(f"medvol preprocess: warning: {not_hu_warning(summary.not_hu, len(summary.processed), params.window)}",
              file=sys.stderr)
    split = summary.manifest["split"]
    synthetic = sum(entry.get("synthetic") is True for entry in summary.manifest["volumes"])
    marked = f", {synthetic} synthetic" if synthetic else ""
    labelled = sum(isinstance(entry.get("labels"), str) for entry in summary.manifest["volumes"])
    if labelled:
        names = ",".join(summary.manifest.get("mask_labels") or [])
        marked += f", {labelled} with label maps ({names})"
    print(f"preprocessed {len(summary.processed)} volume(s), reused {len(summary.reused)}, "
          f"skipped {len(summary.failed)} into {summary.path}; the cache holds {len(summary.manifest['volumes'])} "
          f"(train {split['train']}, val {split['val']}{marked}); manifest: {summary.path / 'manifest.json'}")
    if args.export_nifti is not None:
        print(f"exported {len(summary.exported)} file(s) as NIfTI into {args.export_nifti}")
    return 0
