"""``medvol generate --ckpt PATH --n K --out DIR [--seed S] [--label C] [--tile-depth T]
[--volume] [--masks DIR] [--input CACHE [--direction AB|BA]] [--display-window LOW,HIGH] [--overwrite]``."""

from __future__ import annotations

import logging

from medvol.errors import MedvolError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="write generated volumes (NIfTI) or 2D images (NIfTI + PNG) from a checkpoint",
        description="Generate from a training checkpoint. 3D models: full-resolution volumes as NIfTI, "
                    "CT in Hounsfield units, MR in [-1, 1]; the training data's voxel spacing and "
                    "direction, the volume centred at (0, 0, 0) mm (docs/models.md, 'Generated volumes "
                    "on disk'). 2D models: one 2D NIfTI per image (plus a _mask file with a mask "
                    "channel) and PNG grids, or with --volume slices stacked into volumes for the 3D "
                    "metrics (docs/models2d.md). A paired image + mask model (model.mask_channels K) "
                    "also writes sample_NNNN_mask.nii.gz, its uint8 label map 0..K. generated.json "
                    "records what made each file.")
    parser.add_argument("--ckpt", required=True, help="checkpoint file (ckpt_*.pt) or run folder")
    parser.add_argument("--n", type=int, default=None,
                        help="number of volumes (3D, 2D with --volume) or images (2D); default 1, or "
                             "one per mask file with --masks")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (same seed, same volumes)")
    parser.add_argument("--label", type=int, help="class id for a class-conditional model")
    parser.add_argument("--tile-depth", type=int, dest="tile_depth",
                        help="3D: embedding slices per high-resolution tile (bounded memory at 256/512)")
    parser.add_argument("--volume", action="store_true",
                        help="2D: stack S consecutive images into one S^3 volume along the training "
                             "plane (for medvol evaluate --fake DIR)")
    parser.add_argument("--masks", metavar="DIR",
                        help="2D mask-conditional models: a folder of 2D masks (NIfTI or PNG, nonzero = "
                             "foreground), one image per mask; default: masks of the training phantoms")
    parser.add_argument("--input", metavar="CACHE",
                        help="cyclegan: the 2D image cache (medvol preprocess --images) whose images are "
                             "translated, all of them or the first --n")
    parser.add_argument("--direction", choices=["AB", "BA"], default="AB",
                        help="cyclegan: translate domain A's images to B (default) or B's to A")
    parser.add_argument("--display-window", dest="display_window", metavar="LOW,HIGH",
                        help="2D: intensities shown black .. white in the PNGs (CT: HU, e.g. -160,240); "
                             "default the training window")
    parser.add_argument("--batch", type=int, default=16, help="2D: images per forward pass (default 16)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--mode", choices=["reference", "optimized"],
                        help="default: optimized on CUDA, reference on the CPU")
    parser.add_argument("--overwrite", action="store_true",
                        help="accept an --out holding other files: removes what another medvol generate "
                             "wrote there, keeps (and never replaces) files medvol did not write; the same "
                             "command again continues without it")
    parser.set_defaults(func=run)


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise MedvolError(f"--display-window {text}: expected LOW,HIGH (two numbers)") from None
    return low, high


def run(args) -> int:
    from medvol.train.distributed import pick_device
    from medvol.sample.generate import generate
    from medvol.train.monitor import peak_memory_bytes

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    paths = generate(args.ckpt, args.n, args.out, seed=args.seed, label=args.label,
                     tile_depth=args.tile_depth, device=args.device, mode=args.mode, volume=args.volume,
                     masks=args.masks, display_window=_window(args.display_window), batch=args.batch,
                     overwrite=args.overwrite, inputs=args.input, direction=args.direction)
    for path in paths:
        print(path)
    device = pick_device(args.device)
    kind = "CUDA max allocated" if device.type == "cuda" else "CPU peak RSS"
    print(f"{len(paths)} file(s) in {args.out}; peak memory {peak_memory_bytes(device) / 2**20:.0f} MiB ({kind})")
    return 0
