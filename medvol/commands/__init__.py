"""One module per `medvol` verb: `register(subparsers)` and `run(args)`; :func:`build_parser`
assembles them into the ``medvol`` command line (``medvol.cli`` runs it; ``medvol study recipe``
parses its steps' command lines with it)."""

from __future__ import annotations

import argparse
import importlib

#: Verbs in the order ``medvol --help`` lists them; each names a module in ``medvol.commands``.
COMMANDS: list[str] = ["data", "preprocess", "train", "generate", "evaluate", "compare", "features", "sweep",
                       "study", "profile", "info", "view", "configs", "doctor"]


def build_parser() -> argparse.ArgumentParser:
    """The ``medvol`` argument parser: one sub-command per verb of :data:`COMMANDS`."""
    import medvol

    parser = argparse.ArgumentParser(
        prog="medvol",
        description="Memory-efficient 3D generative models of medical volumes.",
    )
    parser.add_argument("--version", action="version", version=f"medvol {medvol.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"medvol.commands.{name}").register(subparsers)
    return parser
