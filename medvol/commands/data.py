"""``medvol data``: built-in data. ``medvol data phantom`` writes procedural chest-CT phantoms."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="built-in data (procedural phantoms)",
        description="Built-in data sets.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    phantom = actions.add_parser(
        "phantom",
        help="write procedural chest-CT phantoms (HU) as NIfTI/MetaImage files",
        description="Write N chest-CT-like phantoms in Hounsfield units (int16, 380 mm in-plane field "
        "of view, 340 mm along z) named phantom_0000.<format> ...; volume i uses the seed (SEED, i), "
        "the same as item i of PhantomVolumeDataset. Each volume's label map (uint8: lungs 1, "
        "nodules 2) is written beside as phantom_0000_mask.<format>, its factors (habitus, lung "
        "asymmetry, body size, lung volume, heart position, nodules, noise, slice thickness) as "
        "phantom_0000.factors.json. A folder holding files medvol did not write for this same "
        "command is refused unless --overwrite.",
    )
    phantom.add_argument("--n", type=int, required=True, help="number of volumes")
    phantom.add_argument("--size", type=int, required=True, help="cube edge S in voxels (16..1024)")
    phantom.add_argument("--out", required=True, help="output folder (created)")
    phantom.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "mhd", "nrrd"],
                         help="file format (default nii.gz; mhd writes .mhd + .raw as LUNA16 does)")
    phantom.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    phantom.add_argument("--nodules", action="store_true", help="add 1-3 lung nodules (label 2 of the label maps)")
    phantom.add_argument("--overwrite", action="store_true",
                         help="accept a folder holding other files: removes what medvol wrote there for "
                              "another job, never replaces a file medvol did not write")
    phantom.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.data.phantom import write_phantoms

    paths = write_phantoms(args.n, args.size, args.out, fmt=args.format, seed=args.seed, nodules=args.nodules,
                           overwrite=args.overwrite)
    nodules = " with nodules" if args.nodules else ""
    classes = "lungs 1, nodules 2" if args.nodules else "lungs 1"
    print(f"wrote {len(paths)} phantom volume(s){nodules} of {args.size}^3 to {args.out}, each with its label "
          f"map phantom_NNNN_mask.{args.format} ({classes})")
    return 0
