"""``medvol info``: trainable parameter counts of a model at a size, per sub-network."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameter counts of a model",
        description="Print the trainable parameter counts of a model per sub-network "
        "(3D: G, D, E, sub_E or crf, total; 2D: G, D, total). Nothing is allocated: the model is built "
        "on the meta device.",
    )
    parser.add_argument("--model", required=True, help="hagan, crfgan (3D) or dcgan, mlpgan (2D)")
    parser.add_argument("--size", required=True, type=int,
                        help="volume side: 64, 128, 256, 512; 2D image side: 64, 128, 256 (or 32)")
    parser.add_argument("--base-width", type=int, default=None,
                        help="base width c (default: the model's published one: 32, dcgan 64, mlpgan 256)")
    parser.add_argument("--latent-dim", type=int, default=None,
                        help="latent length (default: the published one: 1024, dcgan and mlpgan 100)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model build option, e.g. channels=2 or spectral_norm_d=true (repeatable)")
    parser.add_argument("--num-classes", type=int, default=0, help="classes of the conditional variant")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import yaml

    from medvol.errors import MedvolError
    from medvol.models import build

    options = {}
    for item in args.option:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise MedvolError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(text) if text.strip() else text
    with torch.device("meta"):
        system = build(
            args.model,
            args.size,
            base_width=args.base_width,
            latent_dim=args.latent_dim,
            num_classes=args.num_classes,
            **options,
        )
    counts = system.param_counts()
    if args.json:
        print(json.dumps(counts))
        return 0
    shape = f"{args.size}^{system.dims}"
    print(f"{args.model} @ {shape} (base width {system.base_width}, latent {system.latent_dim}, "
          f"classes {args.num_classes})")
    for key, value in counts.items():
        print(f"  {key:<6} {value:>14,}  ({value / 1e6:.2f}M)")
    return 0
