"""Run a study recipe (:mod:`.recipe`): check it, claim OUT, run each step's medvol command, summarise.

Every step runs the command's own entry point (``medvol.commands.<verb>.run`` with the
arguments the ``medvol`` parser reads, the parser handed in by the caller), in this process, so a recipe does nothing the commands do not do.
``OUT`` is claimed with :func:`medvol.outputs.owned_output` (job ``study recipe``, identity: the
recipe's digest, the data folder, phantom or not): the same recipe again continues there, another
recipe (or the same with other settings) is refused unless ``overwrite``, which removes what
medvol wrote there first. Each step writes ``OUT/<step>/`` (a folder entry of OUT); when it
ends, ``OUT/steps/<step>.json`` records its command line and seconds: a step with that record
(and the same command line) is finished and not run again. ``OUT/summary.json`` and
``summary.md`` list every step's outputs and scores (:mod:`.summary`), rewritten after each step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from medvol.errors import MedvolError
from medvol.study.recipe.recipe import Recipe, load_recipe, step_argv

log = logging.getLogger("medvol.study")

JOB = "study recipe"
RECIPE_FILE = "recipe.json"


def _parser(parser):
    """``parser`` (``medvol.commands.build_parser()``) with its errors turned into one-line
    :class:`MedvolError`."""
    import argparse


    def patch(p: argparse.ArgumentParser) -> None:
        def error(message: str, prog=p.prog):
            raise MedvolError(f"{prog}: {message}")

        p.error = error
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    patch(sub)

    patch(parser)
    return parser


def check_step(parser, recipe: Recipe, argv: list[str], step) -> Any:
    """The step's parsed arguments; a step that would fail on its own arguments (an unknown
    option, an unknown model or config key) is refused now, before any step runs."""
    try:
        args = parser.parse_args(argv)
    except MedvolError as error:
        raise MedvolError(f"recipe {recipe.path}: step {step.name}: {error}") from None
    config = step.args.get("config") if "config_set" in step.args else getattr(args, "config", None)
    if step.command in ("train", "sweep", "study recursive") and config:
        from medvol.config import load_config
        from medvol.models.registry import MODELS

        overrides = list(getattr(args, "overrides", []) or [])
        if "config_set" in step.args:
            overrides = [f"--{k}={v}" for k, v in step.args["config_set"].items()]
        if step.command == "train" or "config_set" in step.args:
            overrides = [o for o in overrides if not o.startswith("--data.source")]
        else:
            overrides = [o for o in overrides if not o.startswith("data.source")]
        try:
            cfg = load_config(config, overrides)
        except MedvolError as error:
            raise MedvolError(f"recipe {recipe.path}: step {step.name}: {error}") from None
        if cfg.model.name not in MODELS:
            raise MedvolError(f"recipe {recipe.path}: step {step.name}: unknown model {cfg.model.name!r}")
    return args


def run_recipe(recipe: str | os.PathLike, out: str | os.PathLike, *, parser, data: str | os.PathLike | None = None,
               phantom: bool = False, overwrite: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or continue) a study recipe (module docstring).

    Args:
        recipe: a recipe file or a shipped recipe's name (``configs/studies/<name>.yaml``).
        out: the output folder OUT.
        parser: the ``medvol`` argument parser, ``medvol.commands.build_parser()`` (passed in: the
            commands sit above the studies, which never import them); it parses each step's
            command line and gives the command's entry point.
        data: the user's data folder in the recipe's layout; with ``phantom`` None (phantom data
            is written to ``OUT/data/``).
        phantom: write phantom data in the recipe's layout and use the phantom section's sizes.
        overwrite: accept an OUT holding another recipe's outputs: what medvol wrote there is removed.
        only: run only these steps (and the finished ones stay); None runs all.

    Returns:
        The summary (also ``OUT/summary.json``).

    Raises:
        MedvolError: a broken recipe, missing data, a refused OUT, or a step's own error (prefixed
            with the step's name).
    """
    from medvol.outputs import owned_output

    loaded = load_recipe(recipe, phantom=phantom)
    if phantom and data is not None:
        raise MedvolError("--data and --phantom exclude each other (--phantom writes its data to OUT/data)")
    if not phantom and data is None:
        raise MedvolError(f"--data DIR is required (the recipe's layout: {' '.join(loaded.layout.split())}); "
                          "or --phantom to run it on phantom data")
    root = Path(out)
    data_dir = (root / "data").resolve() if phantom else Path(data).resolve()
    if not phantom:
        _check_data(loaded, data_dir)
        where = root.resolve()
        if where == data_dir or data_dir in where.parents or where in data_dir.parents:
            raise MedvolError(f"--out {root}: overlaps --data {data}; the steps read DATA recursively and write OUT, "
                              "so neither may hold the other")
    if only:
        missing = [s for s in only if not any(step.name == s for step in loaded.steps)]
        if missing:
            raise MedvolError(f"--step {missing[0]}: the recipe {loaded.name} has no such step")
    root_abs = root.resolve()
    folders = {s.name: root_abs / s.folder for s in loaded.steps}
    folders[""] = root_abs
    parser = _parser(parser)
    plans = []
    for step in loaded.steps:
        argv = step_argv(step, data=data_dir, here=folders[step.name], folders=folders)
        plans.append((step, argv, check_step(parser, loaded, argv, step)))
    identity = {"recipe": loaded.name, "sha256": loaded.sha256, "phantom": bool(phantom),
                "data": None if phantom else str(data_dir)}
    outputs = [RECIPE_FILE, "summary.json", "summary.md"]
    with owned_output(root, JOB, identity, overwrite=overwrite, outputs=outputs) as claimed:
        _write_json(claimed.path(RECIPE_FILE), {"identity": identity, "path": loaded.path, "title": loaded.title,
                                                "steps": [{"name": s.name, "command": s.command, "argv": a}
                                                          for s, a, _ in plans]})
        if phantom:
            _phantom_data(claimed, loaded)
        _check_data(loaded, data_dir)
        records: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        for step, argv, _ in plans:
            record = _finished(claimed.folder, step.name, argv)
            if record is None and (only is None or step.name in only):
                if "config_set" in step.args:
                    _derive_config(claimed, step, data_dir, folders)
                record = _run_step(claimed, parser, loaded, step, argv)
            elif record is not None:
                log.info("step %s: finished earlier, not run again", step.name)
            records[step.name] = record
            summary = _summary(claimed, loaded, identity, records, folders)
        return summary


def _check_data(recipe: Recipe, data: Path) -> None:
    if not data.is_dir():
        raise MedvolError(f"--data {data}: {'not a folder' if data.exists() else 'no such folder'} (the recipe "
                          f"{recipe.name} expects: {' '.join(recipe.layout.split())})")
    for rel in recipe.expects:
        if not (data / rel).exists():
            raise MedvolError(f"--data {data}: {rel} is missing; the recipe {recipe.name} expects: "
                              f"{' '.join(recipe.layout.split())}")


def _phantom_data(claimed, recipe: Recipe) -> None:
    """Write the phantom data once (``OUT/data/``, a folder entry; ``data/phantom.json`` marks it done)."""
    from medvol.study.recipe.phantom_data import write_phantom_data

    spec = dict(recipe.phantom["data"])
    done = claimed.folder / "data" / "phantom.json"
    if claimed.owns("data/") and done.is_file():
        return
    folder = claimed.path("data/")
    kinds = spec.pop("kind")
    written = []
    # One kind, or several in sub-folders: {kind: [a, b], folders: [x, y]}
    if isinstance(kinds, list):
        for kind, sub in zip(kinds, spec.pop("folders")):
            written.append(write_phantom_data(kind, folder / sub, **spec))
    else:
        written.append(write_phantom_data(kinds, folder, **spec))
    _write_json(folder / "phantom.json", {"written": written})
    claimed.record_tree("data/")


def _derive_config(claimed, step, data: Path, folders: dict) -> None:
    """Write the step's config with its ``config_set`` applied (:func:`.recipe.derived_config`)."""
    import yaml

    from medvol.config import load_config, resolve_config
    from medvol.study.recipe.recipe import config_overrides, derived_config
    from medvol.utils import checked_write

    here = folders[step.name]
    load_config(step.args["config"], config_overrides(step, data=data, here=here, folders=folders))  # checks keys
    raw = yaml.safe_load(resolve_config(step.args["config"]).read_text(encoding="utf-8")) or {}
    for key, value in (step.args.get("config_set") or {}).items():
        from medvol.study.recipe.recipe import fill

        *sections, name = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = fill(value, data=data, here=here, folders=folders) if isinstance(value, str) else value
    claimed.path("steps/")
    path = derived_config(step, folders)
    with checked_write(path, "step config") as tmp:
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    claimed.record_tree("steps/")


def _finished(root: Path, name: str, argv: list[str]) -> dict[str, Any] | None:
    try:
        record = json.loads((root / "steps" / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("argv") == argv else None


def _run_step(claimed, parser, recipe: Recipe, step, argv: list[str]) -> dict[str, Any]:
    from medvol.utils import torch_threads

    folder = claimed.folder / step.folder
    if not claimed.owns(f"{step.folder}/") and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # an empty folder an --overwrite left (it held a user's file, since removed): nothing to lose
    here = claimed.path(f"{step.folder}/")
    if any(here.iterdir()) and not (claimed.folder / "steps" / f"{step.name}.json").exists():
        log.info("step %s: continuing in %s", step.name, here)
    log.info("step %s: medvol %s", step.name, " ".join(argv))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    threads = torch_threads()
    try:
        args.func(args)
    except MedvolError as error:
        raise MedvolError(f"step {step.name} (medvol {step.command}): {error}") from None
    except KeyboardInterrupt as stop:  # Ctrl-C, or a training stopped by a signal (its exit status kept)
        said = (str(stop).strip().splitlines() or ["interrupted (Ctrl-C)"])[0]
        again = KeyboardInterrupt(f"step {step.name}: {said}; run the same medvol study recipe command again to "
                                  "continue (finished steps are kept)")
        again.exit_code = getattr(stop, "exit_code", 130)
        raise again from None
    finally:
        import torch

        torch.set_num_threads(threads)  # a step that sets its own count does not change the next one's
        claimed.record_tree(f"{step.folder}/")
    record = {"name": step.name, "command": step.command, "argv": argv, "seconds": time.perf_counter() - t0}
    claimed.path("steps/")
    _write_json(claimed.folder / "steps" / f"{step.name}.json", record)  # last: marks the step finished
    claimed.record_tree("steps/")
    return record


def _summary(claimed, recipe: Recipe, identity: dict, records: dict, folders: dict) -> dict[str, Any]:
    from medvol.study.recipe.summary import step_outputs, summary_markdown
    from medvol.utils import checked_write

    steps = []
    for step in recipe.steps:
        record = records.get(step.name)
        entry = {"name": step.name, "command": step.command, "note": step.note,
                 "finished": record is not None, "folder": step.folder}
        if record is not None:
            entry.update(argv=record["argv"], seconds=record["seconds"],
                         **step_outputs(step.command, folders[step.name]))
        steps.append(entry)
    summary = {"recipe": recipe.name, "title": recipe.title, "path": recipe.path, "identity": identity,
               "steps": steps}
    _write_json(claimed.path("summary.json"), summary)
    with checked_write(claimed.path("summary.md"), "recipe summary") as tmp:
        tmp.write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from medvol.utils import checked_write

    with checked_write(path, "recipe record") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


__all__ = ["run_recipe"]
