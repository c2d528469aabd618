"""``medvol info``: trainable parameter counts of a model at a size, per sub-network."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameter counts of a model",
        description="Print the trainable parameter counts of a model per sub-network "
        "(G, D, E, sub_E or crf, total). Nothing is allocated: the model is built on the meta device.",
    )
    parser.add_argument("--model", required=True, help="hagan or crfgan")
    parser.add_argument("--size", required=True, type=int, help="volume side: 64, 128, 256, 512 (or 32)")
    parser.add_argument("--base-width", type=int, default=32, help="generator base width c (default 32)")
    parser.add_argument("--latent-dim", type=int, default=1024, help="latent length (default 1024)")
    parser.add_argument("--num-classes", type=int, default=0, help="classes of the conditional variant")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from medvol.models import build

    with torch.device("meta"):
        system = build(
            args.model,
            args.size,
            base_width=args.base_width,
            latent_dim=args.latent_dim,
            num_classes=args.num_classes,
        )
    counts = system.param_counts()
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"{args.model} @ {args.size}^3 (base width {args.base_width}, latent {args.latent_dim}, "
          f"classes {args.num_classes})")
    for key, value in counts.items():
        print(f"  {key:<6} {value:>14,}  ({value / 1e6:.2f}M)")
    return 0
