"""Checkpoints: everything needed to continue a run exactly, written atomically, checksummed.

A checkpoint ``ckpt_0001000.pt`` is a ``torch.save`` dict (loadable with ``weights_only=True``)
holding every network, optimiser and grad scaler state, the RNG states of every rank (torch, CUDA,
numpy, python and the trainer's own crop/latent generator), the number of completed iterations,
the resolved config and the data facts generation needs (voxel spacing, HU window). Beside it,
``ckpt_0001000.pt.sha256`` holds its SHA-256 in ``sha256sum`` format; loading verifies it, so a
truncated or corrupted file is refused instead of half-loaded. The data order needs no state of
its own: the sampler is a pure function of (seed, rank, samples consumed) - see ``data.py``.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvol.config import TrainConfig, config_from_dict, config_to_dict
from medvol.errors import MedvolError
from medvol.utils import checked_write, sha256_file

log = logging.getLogger("medvol.train")

FORMAT = "medvol-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_name(iteration: int) -> str:
    return f"ckpt_{iteration:07d}.pt"


def checksum_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


# ----------------------------------------------------------------------------------------------
# RNG state, as tensors and plain Python values (so ``weights_only=True`` loading works)

def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states: torch CPU, every CUDA device, numpy, python, ``generator``."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "generator": generator.get_state() if generator is not None else None,
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])


# ----------------------------------------------------------------------------------------------
# Writing and reading

def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], what: str = "checkpoint") -> Path:
    """Write ``state`` to ``path`` atomically, then its ``.sha256`` sidecar.

    ``what`` names the file in a failure's message (``"checkpoint"``, ``"domain feature file"``).

    The checksum is computed on the temporary file and written before the rename, so a reader
    that finds the checkpoint under its final name always finds its checksum too. Both files are
    flushed to the disk before they take their names.

    Raises:
        MedvolError: the write failed (a full disk); neither file is left under its final name.
    """
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    side = checksum_path(path)
    renamed_side = False
    try:
        # torch.save reports a failed write as a RuntimeError from its C++ writer.
        with checked_write(path, what, library_errors=(RuntimeError,)) as tmp:
            torch.save(state, tmp)
            digest = sha256_file(tmp)
            with checked_write(side, f"{what} checksum") as side_tmp:
                side_tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
            renamed_side = True
    except MedvolError:
        if renamed_side:  # the checkpoint it describes never got its name
            side.unlink(missing_ok=True)
        raise
    return path


def verify_checksum(path: str | os.PathLike) -> None:
    """Raise :class:`MedvolError` unless ``path`` matches its ``.sha256`` sidecar."""
    path = Path(path)
    side = checksum_path(path)
    if not path.is_file():
        raise MedvolError(f"checkpoint {path} does not exist")
    if not side.is_file():
        raise MedvolError(f"checkpoint {path} has no checksum file {side.name}: incomplete or not a medvol checkpoint")
    expected = side.read_text(encoding="utf-8").split()[:1]
    if not expected or sha256_file(path) != expected[0].lower():
        raise MedvolError(f"checkpoint {path} is corrupt or truncated (SHA-256 does not match {side.name})")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify and load a checkpoint file (or the latest one of a run folder) as a dict.

    Raises:
        MedvolError: missing file, checksum mismatch, unreadable or foreign content.
    """
    path = resolve_checkpoint(path)
    verify_checksum(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise MedvolError(f"checkpoint {path} cannot be read: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MedvolError(f"{path} is not a medvol checkpoint")
    if state.get("version") != VERSION:
        raise MedvolError(f"checkpoint {path} has format version {state.get('version')}, expected {VERSION}")
    state["path"] = str(path)
    return state


def checkpoint_config(state: dict[str, Any]) -> TrainConfig:
    """The training config of a generative model's checkpoint.

    Raises:
        MedvolError: a checkpoint of an auxiliary network (:mod:`medvol.train.fit`), which has none.
    """
    if state.get("kind") == "auxiliary":
        raise MedvolError(f"{state.get('path')} is a checkpoint of an auxiliary network ({state.get('task')}), "
                          "not of a generative model")
    return config_from_dict(state["config"], source=f"config in checkpoint {state.get('path')}")


def _model_settings(model: dict[str, Any]) -> dict[str, Any]:
    """A config's model section with its options as ``options.<key>``, so a refusal names the one
    that differs."""
    options = model.get("options") or {}
    return {**{k: v for k, v in model.items() if k != "options"}, **{f"options.{k}": v for k, v in options.items()}}


def check_compatible(state: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume ``cfg`` from a checkpoint of another model, size or width."""
    # Through the config loader: keys added since the checkpoint was written take their defaults.
    have = _model_settings(config_to_dict(checkpoint_config(state))["model"])
    want = _model_settings(config_to_dict(cfg)["model"])
    if have != want:
        diff = ", ".join(f"{k} {have.get(k)} vs {want.get(k)}" for k in {**have, **want} if have.get(k) != want.get(k))
        raise MedvolError(f"checkpoint {state.get('path')} is {have['name']}@{have['size']} and does not "
                          f"match the config's model {want['name']}@{want['size']} ({diff})")


def load_system_state(system: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load the network weights, turning a shape/key mismatch into a one-line error."""
    try:
        system.load_state_dict(state["system"], strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise MedvolError(f"checkpoint {state.get('path')} does not fit the model: {first}") from None


def load_submodule(system: torch.nn.Module, name: str, source: str | os.PathLike, what: str) -> None:
    """Initialise ``system.<name>`` from the same submodule of another run's checkpoint (a
    latent diffusion model's stage-1 autoencoder), strictly: every tensor present and of its shape.

    Raises:
        MedvolError: naming ``what`` (the option that gave ``source``) for a missing or damaged
            checkpoint, or one without that submodule or with other shapes.
    """
    try:
        state = read_checkpoint(source)
    except MedvolError as error:
        raise MedvolError(f"{what}: {error}") from None
    prefix = name + "."
    weights = {k[len(prefix):]: v for k, v in state["system"].items() if k.startswith(prefix)}
    if not weights:
        raise MedvolError(f"{what}: checkpoint {state['path']} has no {name} (a "
                          f"{state.get('config', {}).get('model', {}).get('name', '?')} checkpoint)")
    try:
        getattr(system, name).load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise MedvolError(f"{what}: the {name} of checkpoint {state['path']} does not fit this model "
                          f"(same base_width, latent_dim, size and levels?): {first}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the trained system from a checkpoint.

    Args:
        path: a ``ckpt_*.pt`` file or a run folder (its latest checkpoint is used).
        map_location: where tensors are loaded.

    Returns:
        ``(system, cfg, state)``: the ``GANSystem`` with the checkpoint's weights (on the CPU),
        the resolved :class:`TrainConfig` it was trained with, and the whole checkpoint dict.
    """
    from medvol.models import build_from_config

    state = read_checkpoint(path, map_location)
    cfg = checkpoint_config(state)
    m = cfg.model
    system = build_from_config(m)
    load_system_state(system, state)
    return system, cfg, state


# ----------------------------------------------------------------------------------------------
# Run folders

def list_checkpoints(folder: str | os.PathLike, require_checksum: bool = True) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the checkpoints in ``folder`` that have a checksum, oldest first.

    ``require_checksum=False`` also lists ``ckpt_*.pt`` files without a sidecar (foreign or
    damaged files a run folder may hold).
    """
    folder = Path(folder)
    found = []
    for path in folder.glob("ckpt_*.pt") if folder.is_dir() else []:
        match = _NAME.match(path.name)
        if match and (not require_checksum or checksum_path(path).is_file()):
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_latest_verified(folder: str | os.PathLike,
                         map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint of ``folder`` that passes its checksum and loads, as a dict.

    Newer files that fail are skipped with one warning line each (which file, and why): a run
    killed or a disk that filled while writing must not block resuming from the checkpoint
    before it. ``None`` when ``folder`` holds no checkpoint at all.

    Raises:
        MedvolError: checkpoints exist but none of them is intact.
    """
    found = list_checkpoints(folder, require_checksum=False)
    skipped = []
    for _, path in reversed(found):
        try:
            return read_checkpoint(path, map_location)
        except MedvolError as error:
            log.warning("%s; trying the next older checkpoint", error)
            skipped.append(path.name)
    if found:
        raise MedvolError(f"no intact checkpoint in {folder}: {', '.join(skipped)} all failed "
                          f"verification; resume from a copy with --resume PATH or start a new run with --out")
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or the latest checkpoint of a run folder / checkpoints folder."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            found = list_checkpoints(folder)
            if found:
                return found[-1][1]
        raise MedvolError(f"no checkpoint (ckpt_*.pt with .sha256) in {path}")
    if not path.exists():
        raise MedvolError(f"checkpoint {path} does not exist")
    return path


#: Names of medvol's own temporaries in a run folder (``atomic_path`` keeps the stem and suffixes):
#: checkpoints and their sidecars, sample slices, the saved configs (``config.yaml``,
#: ``config.N.yaml``) and the history. A killed writer leaves them.
TEMP_PATTERNS = ("checkpoints/.ckpt_*.tmp-*.pt", "checkpoints/.ckpt_*.tmp-*.pt.sha256",
                 "samples/.slices_*.tmp-*.npz", ".config.tmp-*.yaml", ".history.tmp-*.jsonl")


def clean_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporaries that killed writes left in ``run_dir``; returns what was removed.

    Only call this while holding the run folder's lock: a live writer's temporary looks the same.
    """
    removed = []
    for pattern in TEMP_PATTERNS:
        for path in sorted(Path(run_dir).glob(pattern)):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep=0`` keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(folder)[:-keep]:
        checksum_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
