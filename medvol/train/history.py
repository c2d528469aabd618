"""A run's history: what each start of a run folder resumed from, with which settings.

Resuming must not rewrite the past silently. A run folder keeps every resolved config it was
trained with (``config.yaml``, then ``config.1.yaml``, ``config.2.yaml``, ... when a later start
resolves to something else, e.g. more iterations) and one JSON line per start in
``history.jsonl``: the event (``start``, ``resume``, ``fork``), the checkpoint and its SHA-256,
the config file in force and every changed setting with its old and new value.

Two resumes are refused unless asked for, because they quietly change what the run is:

- an **older checkpoint** of the run (newer ones exist): continuing in place would overwrite them;
- a **changed setting** (seed, learning rate, data, precision, ...): the run would no longer be
  what its config says.

``--fork NEWDIR`` starts a new run folder from the checkpoint (copied in, the source only read);
``--allow-changes`` continues in place, recording the changes and moving newer checkpoints and
sample slices aside into ``superseded/N/`` instead of overwriting them. Keys that say where and
how often, not what is learned (:data:`FREE_KEYS`), may change without either flag.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from medvol.config import TrainConfig, config_from_dict, config_to_dict
from medvol.errors import MedvolError
from medvol.utils import checked_write, sha256_file

HISTORY = "history.jsonl"

#: Settings a resume may change freely: the run's length, folder, device, cadence of logs, samples
#: and checkpoints, and data-loading workers. None of them changes the trained numbers.
FREE_KEYS = frozenset({
    "train.iterations", "train.out", "train.device", "train.progress", "train.log_every",
    "train.sample_every", "train.ckpt_every", "train.keep_checkpoints", "train.threads", "data.workers",
    "data.prefetch",
})

_CONFIG = re.compile(r"^config(?:\.(\d+))?\.yaml$")
_ITERATION = re.compile(r"^(?:ckpt|slices)_(\d+)\.")


def flatten(cfg: TrainConfig | dict, prefix: str = "") -> dict[str, Any]:
    """``{"train.seed": 0, "train.lr.G": 1e-4, ...}`` of a config (nested mappings joined by dots)."""
    data = config_to_dict(cfg) if isinstance(cfg, TrainConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(old: TrainConfig, new: TrainConfig) -> dict[str, list[Any]]:
    """``{key: [old, new]}`` for every setting that differs, :data:`FREE_KEYS` left out."""
    a, b = flatten(old), flatten(new)
    return {key: [a.get(key), b.get(key)] for key in sorted(set(a) | set(b))
            if key not in FREE_KEYS and a.get(key) != b.get(key)}


def describe_changes(changes: dict[str, list[Any]], limit: int = 4) -> str:
    text = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


# ----------------------------------------------------------------------------------------------
# Versioned configs

def config_versions(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(version, path)`` of the run's config files, oldest first (``config.yaml`` is version 0)."""
    run_dir = Path(run_dir)
    found = []
    for path in run_dir.glob("config*.yaml") if run_dir.is_dir() else []:
        match = _CONFIG.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1) or 0), path))
    return sorted(found)


def current_config(run_dir: str | os.PathLike) -> TrainConfig | None:
    """The config the run was last started with (its newest config file), ``None`` if it has none.

    Raises:
        MedvolError: the file cannot be read as a config.
    """
    versions = config_versions(run_dir)
    if not versions:
        return None
    path = versions[-1][1]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MedvolError(f"run config {path} cannot be read ({type(error).__name__})") from None
    return config_from_dict(data, source=f"run config {path}")


def record_config(run_dir: str | os.PathLike, cfg: TrainConfig) -> Path:
    """The run's config file for ``cfg``: the newest one if it says the same, else a new version.

    An existing config file is never rewritten: what a checkpoint was trained with stays readable.
    ``train.out`` does not count (a run folder that was moved or copied is the same run).
    """
    from medvol.config import save_config

    def settings(config: TrainConfig) -> dict:
        return {k: v for k, v in flatten(config).items() if k != "train.out"}

    run_dir = Path(run_dir)
    versions = config_versions(run_dir)
    if versions:
        newest = current_config(run_dir)
        if newest is not None and settings(newest) == settings(cfg):
            return versions[-1][1]
        return save_config(cfg, run_dir / f"config.{versions[-1][0] + 1}.yaml")
    return save_config(cfg, run_dir / "config.yaml")


# ----------------------------------------------------------------------------------------------
# The history file

def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``history.jsonl`` (empty for a run without one)."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise MedvolError(f"{path}: line {number} is not JSON") from None
    return records


def append_history(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Add one record; the file is rewritten under a temporary name, so it is never half-written."""
    path = Path(run_dir) / HISTORY
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
    with checked_write(path, "run history") as tmp:
        tmp.write_text(old + json.dumps(record, sort_keys=False, default=str) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# What a resume may do

def newer_checkpoints(run_dir: str | os.PathLike, iteration: int) -> list[int]:
    """Iterations of the run's checkpoint files newer than ``iteration`` (damaged ones included)."""
    from medvol.train.checkpoint import list_checkpoints

    return [i for i, _ in list_checkpoints(Path(run_dir) / "checkpoints", require_checksum=False) if i > iteration]


def check_resume(state: dict[str, Any], cfg: TrainConfig, run_dir: str | os.PathLike, *,
                 auto: bool, allow_changes: bool) -> dict[str, list[Any]]:
    """Refuse an in-place resume from an older checkpoint or with changed settings unless allowed.

    Args:
        state: the checkpoint dict being resumed (a checkpoint of ``run_dir``).
        cfg: the resolved config of this start.
        run_dir: the run folder being continued.
        auto: ``--resume auto`` (which may have skipped damaged newer checkpoints on purpose).
        allow_changes: ``--allow-changes``.

    Returns:
        The changed settings ``{key: [old, new]}``, compared with the run's newest config file
        (the checkpoint's config where the folder has none).

    Raises:
        MedvolError: one line naming the checkpoint or the changed keys and the two flags.
    """
    from medvol.train.checkpoint import check_compatible, checkpoint_config

    check_compatible(state, cfg)  # another model or size can never continue this run
    iteration = int(state["iteration"])
    newer = [] if auto else newer_checkpoints(run_dir, iteration)
    if newer and not allow_changes:
        raise MedvolError(f"checkpoint {state['path']} (iteration {iteration}) is older than the run's newest "
                          f"(iteration {newer[-1]}): continuing in place would overwrite it; start a new run "
                          f"folder from it with --fork NEWDIR, or move the newer ones aside with --allow-changes")
    before = current_config(run_dir) or checkpoint_config(state)
    changes = changed_settings(before, cfg)
    if changes and not allow_changes:
        raise MedvolError(f"resuming {run_dir} with changed settings ({describe_changes(changes)}); "
                          f"record them in the run's history with --allow-changes, or start a new run "
                          f"folder with --fork NEWDIR")
    return changes


def set_aside_newer(run_dir: str | os.PathLike, iteration: int) -> Path | None:
    """Move checkpoints (with sidecars) and sample slices newer than ``iteration`` to ``superseded/N/``.

    Returns:
        The folder they went to, ``None`` when there was nothing newer.
    """
    run_dir = Path(run_dir)
    moving = []
    for sub, pattern in (("checkpoints", "ckpt_*.pt*"), ("samples", "slices_*.npz")):
        for path in sorted((run_dir / sub).glob(pattern)):
            match = _ITERATION.match(path.name)
            if match and int(match.group(1)) > iteration and path.is_file():
                moving.append((sub, path))
    if not moving:
        return None
    number = 1
    while (run_dir / "superseded" / str(number)).exists():
        number += 1
    target = run_dir / "superseded" / str(number)
    try:
        for sub, path in moving:
            (target / sub).mkdir(parents=True, exist_ok=True)
            os.replace(path, target / sub / path.name)  # a rename in one filesystem: nothing copied
    except OSError as error:
        raise MedvolError(f"cannot move newer checkpoints of {run_dir} aside into {target}: "
                          f"{os.strerror(error.errno).lower() if error.errno else error}") from None
    return target


def copy_checkpoint(source: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Copy a checkpoint and its checksum into ``run_dir/checkpoints`` (a fork's first checkpoint).

    The source is only read. The copy is verified against the source's SHA-256, so the fork starts
    from exactly the recorded bytes and ``--resume auto`` in the fork works before its first save.
    """
    from medvol.train.checkpoint import checksum_path

    source = Path(source)
    target = Path(run_dir) / "checkpoints" / source.name
    digest = sha256_file(source)
    side_done = False
    try:
        with checked_write(target, "checkpoint") as tmp:
            shutil.copyfile(source, tmp)
            if sha256_file(tmp) != digest:
                raise MedvolError(f"checkpoint {source} changed while it was copied to {target}")
            with checked_write(checksum_path(target), "checkpoint checksum") as side:
                side.write_text(f"{digest}  {target.name}\n", encoding="utf-8")
            side_done = True
    except MedvolError:
        if side_done:  # the copy it describes never got its name
            checksum_path(target).unlink(missing_ok=True)
        raise
    return target
