"""``medvol study recipe``: run a source study's recipe (configs/studies/) on a user's data or on phantoms."""

from __future__ import annotations

import argparse

from medvol.utils import add_threads_option, set_threads

_EPILOG = """shipped recipes (configs/studies/): recursive_note, ct_xray_thesis, liver_tumour_thesis,
empirical_study, crfgan_clinical. --phantom writes phantom data in the recipe's folder layout to OUT/data and
runs every step at the recipe's small phantom sizes (the recipe itself is tested; nothing is reproduced).
Each step writes OUT/<step>/ through the medvol command it names; a finished step is not run again, so
the same command continues an interrupted recipe. OUT/summary.md lists every step's outputs and scores."""


def register(actions) -> None:
    parser = actions.add_parser(
        "recipe", help="run a source study's recipe (data layout, preprocess, train, generate, evaluate, studies)",
        description="Run a study recipe: a YAML file naming the data layout a source study expects and the medvol "
                    "commands that reproduce it (docs/studies.md, \"Study recipes\").",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", help="a recipe file or a shipped recipe's name")
    parser.add_argument("--data", metavar="DIR", help="your copy of the study's data, in the recipe's layout")
    parser.add_argument("--phantom", action="store_true",
                        help="write phantom data in the recipe's layout to OUT/data and use its small sizes")
    parser.add_argument("--step", action="append", metavar="NAME",
                        help="run only this step (repeatable); finished steps are kept")
    parser.add_argument("--list", action="store_true", help="list the shipped recipes and their steps, then exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="accept an OUT holding another recipe's outputs: what medvol wrote there is removed first")
    parser.add_argument("--out", metavar="OUT", help="the recipe's output folder")
    add_threads_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from medvol.errors import MedvolError

    if args.list:
        from medvol.config import shipped_configs_dir
        from medvol.study.recipe.recipe import load_recipe

        for path in sorted((shipped_configs_dir() / "studies").glob("*.yaml")):
            try:
                recipe = load_recipe(path)
            except MedvolError:
                continue  # a training config of a study, not a recipe
            print(f"{path.stem}: {recipe.title}\n    steps: {', '.join(s.name for s in recipe.steps)}")
        return 0
    if not args.recipe or not args.out:
        raise MedvolError("give a RECIPE and --out OUT (or --list)")
    from medvol.commands import build_parser
    from medvol.study.recipe import run_recipe

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    summary = run_recipe(args.recipe, args.out, parser=build_parser(), data=args.data, phantom=args.phantom,
                         overwrite=args.overwrite, only=args.step)
    done = sum(s["finished"] for s in summary["steps"])
    print(f"recipe {summary['recipe']}: {done} of {len(summary['steps'])} step(s) finished in {args.out}; "
          f"see {args.out}/summary.md")
    return 0
