"""A study recipe: one YAML file that says what data a source study needs and which medvol
commands reproduce it, with a small phantom version that runs anywhere.

Format (``configs/studies/*.yaml``, ``recipe: 1``)::

    recipe: 1
    name: recursive_note                # the study's short name
    title: one line                     # what it reproduces
    data:
      layout: |                         # the folder layout DATA must hold, in words
        images/<name>.png + masks/<name>.png ...
      expects: [images, masks]          # paths under DATA that must exist (checked first)
    steps:                              # run in order; each writes OUT/<name>/
      - name: cache
        command: preprocess             # one of COMMANDS
        args: {images: images, src: "{data}/images", size: 64}
      - name: dcgan
        command: train
        args: {config: dcgan_64, data.source: "{step.cache}"}
    phantom:                            # --phantom: data written by phantom_data, small sizes
      data: {kind: slices_png, n: 12, size: 32}
      steps:
        cache: {size: 32}               # per step: args replaced (null removes an argument)

Arguments are the command's own options without ``--`` (``real_fraction`` or ``real-fraction``;
``data.source`` for a config override of ``train``); ``true`` is a flag, a list repeats the
option, ``positional`` lists positional arguments, and ``config_set: {section.key: value}``
gives a command without config overrides of its own (``sweep``) a copy of its ``config`` with
those values, written to ``OUT/steps/<step>.config.yaml``. Strings may hold ``{data}`` (the data folder),
``{step.NAME}`` (the folder of an earlier step), ``{here}`` (this step's folder) and ``{out}``
(OUT itself). The output option (``--dst`` of preprocess, ``--out`` of the others) is the
runner's: OUT/<name>, or OUT/<folder> where a step names its ``folder`` (``synthetic/positive``:
two generate steps filling the class folders one classifier study reads).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from medvol.errors import MedvolError

FORMAT = 1
#: Commands a step may run, and the option that names its output folder.
COMMANDS: dict[str, str] = {
    "preprocess": "dst", "train": "out", "generate": "out", "evaluate": "out", "sweep": "out",
    "study reader make": "out", "study recursive": "out", "study downstream": "out",
}
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: Names a step may not take: folders the runner writes itself.
RESERVED = ("data", "summary")


@dataclasses.dataclass
class Step:
    name: str
    command: str
    args: dict[str, Any]
    note: str = ""
    folder: str = ""

    def __post_init__(self):
        self.folder = self.folder or self.name


@dataclasses.dataclass
class Recipe:
    """A loaded recipe (module docstring); ``sha256`` digests its resolved content."""

    name: str
    title: str
    layout: str
    expects: list[str]
    steps: list[Step]
    phantom: dict[str, Any]
    path: str
    sha256: str

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def _where(path: str, key: str) -> str:
    return f"recipe {path}: {key}"


def resolve_recipe_path(recipe: str | os.PathLike) -> Path:
    """A recipe file, or a shipped one by name (``recursive_note`` -> ``configs/studies/recursive_note.yaml``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    from medvol.config import shipped_configs_dir

    root = shipped_configs_dir()
    for candidate in (root / "studies" / f"{recipe}.yaml", root / f"{recipe}.yaml"):
        if candidate.is_file():
            return candidate
    raise MedvolError(f"recipe {recipe}: no such file, nor a shipped recipe (medvol study recipe --list)")


def load_recipe(recipe: str | os.PathLike, *, phantom: bool = False) -> Recipe:
    """Read and check a recipe; with ``phantom`` its phantom section's arguments replace the steps'.

    Raises:
        MedvolError: one line naming the file and the key: unreadable YAML, a missing or unknown
            key, an unknown command, a repeated or reserved step name, a placeholder that names an
            unknown or later step, an output option given by hand, a phantom section that names
            an unknown step or data kind.
    """
    import yaml

    path = resolve_recipe_path(recipe)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise MedvolError(f"recipe {path}: unreadable ({str(error).splitlines()[0]})") from None
    where = str(path)
    if not isinstance(raw, dict):
        raise MedvolError(f"recipe {path}: expected a mapping of recipe, name, title, data, steps, phantom")
    unknown = sorted(set(raw) - {"recipe", "name", "title", "data", "steps", "phantom"})
    if unknown:
        raise MedvolError(f"{_where(where, unknown[0])}: unknown key (expected recipe, name, title, data, steps, "
                          "phantom)")
    if raw.get("recipe") != FORMAT:
        raise MedvolError(f"{_where(where, 'recipe')}: expected {FORMAT} (the recipe format), got {raw.get('recipe')!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise MedvolError(f"{_where(where, 'name')}: expected a lower-case name (letters, digits, _), got {name!r}")
    data = raw.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("layout"), str):
        raise MedvolError(f"{_where(where, 'data')}: expected layout (text) and expects (paths under DATA)")
    expects = data.get("expects", [])
    if not isinstance(expects, list) or not all(isinstance(e, str) and e for e in expects):
        raise MedvolError(f"{_where(where, 'data.expects')}: expected a list of paths under DATA")
    for rel in expects:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise MedvolError(f"{_where(where, 'data.expects')}: {rel!r} is not a path inside DATA")
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise MedvolError(f"{_where(where, 'steps')}: expected a list of steps")
    steps: list[Step] = []
    for i, item in enumerate(steps_raw):
        key = f"steps[{i}]"
        if not isinstance(item, dict):
            raise MedvolError(f"{_where(where, key)}: expected a mapping with name, command, args")
        bad = sorted(set(item) - {"name", "command", "args", "note", "folder"})
        if bad:
            raise MedvolError(f"{_where(where, key + '.' + bad[0])}: unknown key (expected name, command, args, note, "
                              "folder)")
        step_name = item.get("name")
        if not isinstance(step_name, str) or not NAME.match(step_name) or step_name in RESERVED:
            raise MedvolError(f"{_where(where, key + '.name')}: {step_name!r} is not a step name (lower-case letters, "
                              f"digits, _; not {', '.join(RESERVED)})")
        if any(s.name == step_name for s in steps):
            raise MedvolError(f"{_where(where, key + '.name')}: step {step_name!r} appears twice")
        command = item.get("command")
        if command not in COMMANDS:
            raise MedvolError(f"{_where(where, key)}: step {step_name!r}: unknown command {command!r} (choose one of "
                              f"{', '.join(COMMANDS)})")
        args = item.get("args") or {}
        if not isinstance(args, dict):
            raise MedvolError(f"{_where(where, key + '.args')}: expected a mapping of option: value")
        folder = item.get("folder") or step_name
        parts = folder.split("/") if isinstance(folder, str) else []
        if not parts or not all(NAME.match(part) for part in parts) or parts[0] in RESERVED:
            raise MedvolError(f"{_where(where, key + '.folder')}: {folder!r} is not a folder name inside OUT "
                              "(lower-case names joined by /)")
        for other in steps:
            a, b = other.folder + "/", folder + "/"
            if a.startswith(b) or b.startswith(a):
                raise MedvolError(f"{_where(where, key + '.folder')}: {folder!r} overlaps step {other.name}'s "
                                  f"folder {other.folder!r}")
        steps.append(Step(step_name, command, dict(args), str(item.get("note") or ""), folder))
    phantom_raw = raw.get("phantom") or {}
    if not isinstance(phantom_raw, dict) or not isinstance(phantom_raw.get("data"), dict):
        raise MedvolError(f"{_where(where, 'phantom')}: expected data (the phantom data's kind, n, size) and steps")
    from medvol.study.recipe.phantom_data import KINDS

    pdata = phantom_raw["data"]
    kinds = pdata.get("kind") if isinstance(pdata.get("kind"), list) else [pdata.get("kind")]
    for kind in kinds:
        if kind not in KINDS:
            raise MedvolError(f"{_where(where, 'phantom.data.kind')}: {kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(pdata.get("kind"), list):  # several layouts side by side: one sub-folder each
        subs = pdata.get("folders")
        if not isinstance(subs, list) or len(subs) != len(kinds) or not all(
                isinstance(f, str) and NAME.match(f) for f in subs):
            raise MedvolError(f"{_where(where, 'phantom.data.folders')}: expected one folder name per kind")
    changes = phantom_raw.get("steps") or {}
    if not isinstance(changes, dict):
        raise MedvolError(f"{_where(where, 'phantom.steps')}: expected step name: {{option: value}}")
    for step_name, change in changes.items():
        if not any(s.name == step_name for s in steps):
            raise MedvolError(f"{_where(where, 'phantom.steps.' + str(step_name))}: no such step")
        if not isinstance(change, dict):
            raise MedvolError(f"{_where(where, 'phantom.steps.' + str(step_name))}: expected {{option: value}}")
    if phantom:
        for step in steps:
            for key, value in (changes.get(step.name) or {}).items():
                if value is None:
                    step.args.pop(key, None)
                else:
                    step.args[key] = value
    for i, step in enumerate(steps):
        output = COMMANDS[step.command]
        for key, value in step.args.items():
            if not isinstance(key, str) or not key:
                raise MedvolError(f"{_where(where, f'steps.{step.name}.args')}: {key!r} is not an option name")
            if key == "config_set":
                if not isinstance(value, dict) or "config" not in step.args:
                    raise MedvolError(f"{_where(where, f'steps.{step.name}.args.config_set')}: expected "
                                      "{section.key: value} beside a config")
                for text in [v for v in value.values() if isinstance(v, str)]:
                    for field in PLACEHOLDER.findall(text):
                        ref = field[len("step."):] if field.startswith("step.") else None
                        if field not in ("data", "here", "out") and (ref is None or not any(
                                s.name == ref for s in steps[:i])):
                            raise MedvolError(f"{_where(where, f'steps.{step.name}.args.config_set')}: {{{field}}} "
                                              "names no earlier step")
                continue
            if key.replace("-", "_") in (output, "overwrite"):
                raise MedvolError(f"{_where(where, f'steps.{step.name}.args.{key}')}: the runner sets --{key} "
                                  f"(the step writes OUT/{step.name}; --overwrite is the recipe command's)")
            for text in _strings(value):
                for field in PLACEHOLDER.findall(text):
                    if field in ("data", "here", "out"):
                        continue
                    ref = field[len("step."):] if field.startswith("step.") else None
                    if ref is None or not any(s.name == ref for s in steps[:i]):
                        raise MedvolError(f"{_where(where, f'steps.{step.name}.args.{key}')}: {{{field}}} names no "
                                          "earlier step (use {data}, {here}, {out} or {step.NAME})")
    content = {"name": name, "steps": [dataclasses.asdict(s) for s in steps], "expects": expects,
               "phantom": phantom_raw if phantom else None}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return Recipe(name=name, title=str(raw.get("title") or name), layout=data["layout"], expects=list(expects),
                  steps=steps, phantom=phantom_raw, path=str(path), sha256=digest)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def fill(text: str, *, data: Path, here: Path, folders: dict[str, Path]) -> str:
    """``text`` with ``{data}``, ``{here}``, ``{out}`` and ``{step.NAME}`` replaced by their folders."""

    def one(match: re.Match) -> str:
        field = match.group(1)
        if field == "data":
            return str(data)
        if field == "out":
            return str(folders[""])
        if field == "here":
            return str(here)
        return str(folders[field[len("step."):]])

    return PLACEHOLDER.sub(one, text)


def step_argv(step: Step, *, data: Path, here: Path, folders: dict[str, Path]) -> list[str]:
    """The command line of ``step`` (``medvol`` left out), its output option pointing at ``here``."""
    argv = step.command.split()
    positional: list[str] = []
    for key, value in step.args.items():
        if key == "config_set":
            continue
        if key == "config" and "config_set" in step.args:
            value = str(derived_config(step, folders))
        if key == "positional":
            positional = [fill(str(v), data=data, here=here, folders=folders) for v in
                          (value if isinstance(value, list) else [value])]
            continue
        option = "--" + (key if "." in key else key.replace("_", "-"))
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is True:
                argv.append(option)
            elif v is False or v is None:
                continue
            else:
                # one word: a value such as -1024,600 cannot read as an option
                argv.append(f"{option}={fill(str(v), data=data, here=here, folders=folders)}")
    argv.append(f"--{COMMANDS[step.command]}={here}")
    return argv + positional


def derived_config(step: Step, folders: dict[str, Path]) -> Path:
    """Where the runner writes a step's config with its ``config_set`` applied (``OUT/steps/``):
    for a command without config overrides of its own (``medvol sweep``'s base config)."""
    return folders[""] / "steps" / f"{step.name}.config.yaml"


def config_overrides(step: Step, *, data: Path, here: Path, folders: dict[str, Path]) -> list[str]:
    """``config_set`` as ``--section.key=VALUE`` overrides (placeholders filled)."""
    return [f"--{key}={fill(v, data=data, here=here, folders=folders) if isinstance(v, str) else v}"
            for key, v in (step.args.get("config_set") or {}).items()]
