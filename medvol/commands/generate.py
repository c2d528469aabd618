"""``medvol generate --ckpt PATH --n K --out DIR [--seed S] [--label C] [--tile-depth T]``."""

from __future__ import annotations

import logging


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="write generated volumes (NIfTI) from a checkpoint",
        description="Generate full-resolution volumes from a training checkpoint and write them as "
                    "NIfTI: CT in Hounsfield units, MR in [-1, 1]; the training data's voxel spacing "
                    "and direction, the volume centred at (0, 0, 0) mm; generated.json records "
                    "what made each file (docs/models.md, 'Generated volumes on disk').")
    parser.add_argument("--ckpt", required=True, help="checkpoint file (ckpt_*.pt) or run folder")
    parser.add_argument("--n", type=int, default=1, help="number of volumes (default 1)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (same seed, same volumes)")
    parser.add_argument("--label", type=int, help="class id for a class-conditional model")
    parser.add_argument("--tile-depth", type=int, dest="tile_depth",
                        help="embedding slices per high-resolution tile (bounded memory at 256/512)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--mode", choices=["reference", "optimized"],
                        help="default: optimized on CUDA, reference on the CPU")
    parser.set_defaults(func=run)


def run(args) -> int:
    from medvol.train.distributed import pick_device
    from medvol.train.generate import generate_volumes
    from medvol.train.monitor import peak_memory_bytes

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    paths = generate_volumes(args.ckpt, args.n, args.out, seed=args.seed, label=args.label,
                             tile_depth=args.tile_depth, device=args.device, mode=args.mode)
    for path in paths:
        print(path)
    device = pick_device(args.device)
    kind = "CUDA max allocated" if device.type == "cuda" else "CPU peak RSS"
    print(f"{len(paths)} volume(s) in {args.out}; peak memory {peak_memory_bytes(device) / 2**20:.0f} MiB ({kind})")
    return 0
