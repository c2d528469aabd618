"""``medvol study ACTION``: studies that judge synthetic data (one module per action,
``medvol/commands/study_<action>.py``)."""

from __future__ import annotations

import importlib

#: Study actions, each a module ``medvol.commands.study_<action>`` with ``register(actions)``.
ACTIONS: list[str] = ["reader", "downstream", "recursive", "recipe"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "study", help="studies of synthetic data (reader study, downstream segmentation and classification, recursive training, study recipes)",
        description="Studies that judge synthetic data beyond metrics (docs/studies.md).")
    actions = parser.add_subparsers(dest="study_command", metavar="ACTION")
    actions.required = True
    for name in ACTIONS:
        importlib.import_module(f"medvol.commands.study_{name}").register(actions)
