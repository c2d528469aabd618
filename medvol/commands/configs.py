"""``medvol configs``: the shipped configs, by the names ``--config`` accepts."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "configs", help="list the shipped configs (usable by name: --config demo)",
        description="List the configs that come with medvol: name (what --config and --grid "
                    "accept, e.g. `medvol train --config crfgan_256`), model, size and the first "
                    "line of the file's comment. They are read from the installed package, so "
                    "they work from any folder; copy one (--path shows where) to edit it.")
    parser.add_argument("--path", action="store_true", help="print each config's file path as well")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.config import list_shipped_configs

    rows = list_shipped_configs()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        model = f"{r['model']} {r['size']}" if r["model"] else "sweep grid"
        print(f"{r['name']:<{width}}  {model:<15} {r['description']}")
        if args.path:
            print(f"{'':<{width}}  {r['path']}")
    return 0
