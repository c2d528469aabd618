"""``medvol view``: open real and generated volumes in napari, or render them to a PNG."""

from __future__ import annotations

import argparse

from medvol.viewer.presets import WINDOW_WIDTH_LEVEL


#: What a Ctrl-C leaves (``medvol.cli``).
INTERRUPTED = "nothing was written (a screenshot is written whole or not at all)"


def register(subparsers) -> None:
    presets = ", ".join(f"{name} W{w:g}/L{level:g}" for name, (w, level) in WINDOW_WIDTH_LEVEL.items())
    parser = subparsers.add_parser(
        "view",
        help="view volumes in napari (or write a screenshot)",
        description="Open NIfTI, MetaImage, NRRD, DICOM series and medvol sample folders in napari "
        "with their physical spacing and orientation.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="volume file, DICOM series folder, folder of volumes, glob, or a "
                             "preprocessing cache folder / CACHE/volumes/NAME.npy (shown in HU "
                             "with the entry's geometry)")
    parser.add_argument("--window", metavar="PRESET|LOW,HIGH",
                        help=f"CT window in HU: {presets}, or LOW,HIGH (write --window=-1000,400 when LOW is "
                        "negative); default: each volume's 0.5-99.5 percentile range")
    parser.add_argument("--grid", action="store_true",
                        help="volumes side by side with linked slicing (shapes must match)")
    parser.add_argument("--labels", metavar="MASK", help="label volume overlaid on the (first) volume")
    parser.add_argument("--screenshot", metavar="OUT.png",
                        help="render headlessly to this PNG and exit instead of opening a window")
    parser.add_argument("--slice", dest="slice_view", choices=["axial", "coronal", "sagittal"],
                        default="axial", help="which planes are shown (default: axial)")
    parser.add_argument("--ndisplay", type=int, choices=[2, 3], default=2,
                        help="2: slices (default), 3: volume rendering")
    parser.add_argument("--ckpt", metavar="PATH",
                        help="dock the generator widget with this checkpoint (file or run folder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.viewer.app import view

    out = view(args.paths, window=args.window, grid=args.grid, labels=args.labels,
               screenshot=args.screenshot, slice_view=args.slice_view, ndisplay=args.ndisplay,
               ckpt=args.ckpt)
    if out is not None:
        print(out)
    return 0
