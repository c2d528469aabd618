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
    parser.add_argument("--size", type=int, help="output cube edge: 32, 64, 128, 256 or 512; with --images the "
                        "image side, 4..2048 (required with --src)")
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
    images = parser.add_argument_group(
        "2D images (docs/data.md \"2D images\")",
        "--images images|slices builds a 2D cache instead: DST/volumes/<name>.npy float32 (C, SIZE, SIZE) in [-1, 1] "
        "(and <name>_labels.npy uint8 masks) from PNG, JPEG, TIFF, BMP or 2D DICOM files (MONOCHROME1 inverted, "
        "Modality and VOI LUT / window applied, pixel spacing kept), or from the native axial slices of volumes "
        "(each resized bilinearly to SIZE x SIZE). SRC: a folder (train/ and test/ folders give the split; masks "
        "paired by name, X_mask or masks/X), a MONAI Decathlon dataset.json or datalist JSON (also for volumes). "
        "The 2D models train on such a cache (data.source DST).")
    images.add_argument("--images", choices=["images", "slices"],
                        help="build a 2D cache of image files (images) or of the axial slices of volumes (slices)")
    images.add_argument("--colour", choices=["grey", "rgb"], default="grey",
                        help="grey (RGB converted to luma, default) or rgb (3 channels kept)")
    images.add_argument("--scale", choices=["auto", "range", "minmax", "window"], default="auto",
                        help="intensity to [-1, 1]: the file's range (8-bit, DICOM VOI output), each image's "
                        "min..max, or --window; auto: range for 8-bit and windowed DICOM, else minmax")
    images.add_argument("--select-class", type=int, metavar="C",
                        help="label each image 1 if its mask has a pixel labelled C, else 0 (LiTS tumour: 2)")
    images.add_argument("--keep", choices=["all", "with", "without"], default="all",
                        help="keep only the images with (or without) a pixel of --select-class: one cache per class")
    images.add_argument("--classes", choices=["none", "folders"], default="none",
                        help="folders: the first-level folders (below train/ and test/) are classes 0, 1, ...")
    images.add_argument("--fraction", type=float, default=1.0,
                        help="keep each image with this probability (seeded by --fraction-seed; default 1)")
    images.add_argument("--fraction-seed", type=int, default=0, help="seed of --fraction (default 0)")
    images.add_argument("--split", choices=["auto", "dataset", "seeded"], default="auto",
                        help="the dataset's split (train/test folders, a datalist) or a seeded one; auto: the "
                        "dataset's where it defines one")
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
    if args.images is not None:
        return _run_images(args, waiting)
    for option, value, default in (("--colour", args.colour, "grey"), ("--scale", args.scale, "auto"),
                                   ("--select-class", args.select_class, None), ("--keep", args.keep, "all"),
                                   ("--classes", args.classes, "none"), ("--fraction", args.fraction, 1.0),
                                   ("--split", args.split, "auto")):
        if value != default:
            raise MedvolError(f"{option} applies to 2D caches only (give --images images or --images slices)")
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


def _run_images(args: argparse.Namespace, waiting) -> int:
    """``--images``: a 2D cache (:func:`medvol.data.image_cache.build_image_cache`)."""
    from medvol.data.cache import parse_mask_labels
    from medvol.data.image_cache import ImageParams, build_image_cache
    from medvol.data.preprocess import parse_window
    from medvol.errors import MedvolError

    if args.export_nifti is not None:
        raise MedvolError("--export-nifti writes volumes; a 2D cache holds images (read them with "
                          "medvol.data.image_cache.read_image_labels)")
    for option, value, default in (("--blank-slices", args.blank_slices, "replace"), ("--reader", args.reader, "auto"),
                                   ("--no-orient", args.orient, "LPS")):
        if value != default:
            raise MedvolError(f"{option} applies to 3D caches only (slices of a 2D cache are always cut in LPS "
                              "orientation, every slice kept)")
    window_given = args.window != "-1024,600"
    if args.images == "images" and window_given and args.scale != "window":
        raise MedvolError("--window applies to images only with --scale window")
    window = parse_window(args.window) if (args.images == "slices" or args.scale == "window") else None
    params = ImageParams(size=args.size, source=args.images, colour=args.colour, scale=args.scale, window=window,
                         modality=args.modality, percentiles=args.percentiles, keep_aspect=args.keep_aspect,
                         classes=args.classes, select_class=args.select_class, keep=args.keep,
                         fraction=args.fraction, fraction_seed=args.fraction_seed)
    summary = build_image_cache(args.src, args.dst, params, workers=args.workers, strict=args.strict,
                                split=args.split, seed=args.seed, val_fraction=args.val_fraction, progress=True,
                                overwrite=args.overwrite, wait=args.lock_wait, on_wait=waiting,
                                allow_synthetic=args.allow_synthetic, labels=args.labels,
                                mask_labels=parse_mask_labels(args.mask_labels))
    if summary.cleaned:
        print(f"medvol preprocess: removed {len(summary.cleaned)} temporary file(s) left by an interrupted run",
              file=sys.stderr)
    if summary.replaced:
        print(f"medvol preprocess: --overwrite: {summary.replaced}", file=sys.stderr)
    for _, reason in summary.failed:
        print(f"medvol preprocess: skipped {reason}", file=sys.stderr)
    manifest = summary.manifest
    split = manifest["split"]
    entries = manifest["volumes"]
    extra = ""
    synthetic = sum(e.get("synthetic") is True for e in entries)
    if synthetic:
        extra += f", {synthetic} synthetic"
    masked = sum(isinstance(e.get("labels"), str) for e in entries)
    if masked:
        extra += f", {masked} with masks ({','.join(manifest.get('mask_labels') or [])})"
    if manifest.get("classes"):
        counts = [sum(e.get("label") == i for e in entries) for i in range(len(manifest["classes"]))]
        extra += ", classes " + ", ".join(f"{n} {c}" for c, n in zip(manifest["classes"], counts))
    print(f"cached {len(summary.processed)} image(s), reused {len(summary.reused)}, left out {summary.dropped}, "
          f"skipped {len(summary.failed)} file(s) into {summary.path}; the cache holds {len(entries)} "
          f"({split['mode']} split: train {split['train']}, val {split['val']}{extra}); "
          f"manifest: {summary.path / 'manifest.json'}")
    return 0
