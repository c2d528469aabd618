"""What every generate call records: geometry of its outputs, the provenance listing
``generated.json``, the job identity that :mod:`medvol.outputs` keys its output folder by.

Shared by the volume writer (:mod:`medvol.sample.volumes`) and the image writer
(:mod:`medvol.sample.images`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import medvol
from medvol.errors import MedvolError
from medvol.utils import checked_write

#: The provenance file that a generate call keeps in its output folder.
PROVENANCE = "generated.json"

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def centred_origin(shape: tuple[int, int, int], spacing, direction) -> tuple[float, float, float]:
    """The (x, y, z) origin that puts the centre of a (z, y, x) ``shape`` volume at (0, 0, 0) mm."""
    extent_xyz = (np.asarray(shape[::-1], dtype=np.float64) - 1.0) * np.asarray(spacing[::-1], dtype=np.float64)
    origin = -np.asarray(direction, dtype=np.float64).reshape(3, 3) @ (extent_xyz / 2.0)
    return tuple(float(o) + 0.0 for o in origin)  # + 0.0: no "-0.0" in headers


def output_geometry(meta: dict[str, Any]) -> tuple[tuple[float, float, float], tuple[float, ...]]:
    """``(spacing, direction)`` of generated volumes from a checkpoint's ``data`` facts.

    Checkpoints written before the direction was recorded get the identity (LPS-aligned axes, as
    ``medvol preprocess`` reorients by default).
    """
    spacing = tuple(float(s) for s in meta.get("spacing", (1.0, 1.0, 1.0)))
    direction = tuple(float(d) for d in meta.get("direction") or IDENTITY)
    if len(spacing) != 3 or len(direction) != 9:
        raise MedvolError(f"checkpoint data facts: spacing {spacing} / direction {direction} are not 3D")
    return spacing, direction


def read_provenance(out: Path) -> dict[str, Any]:
    """``out/generated.json`` as a dict with ``files``; empty when absent or unreadable."""
    path = Path(out) / PROVENANCE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else {"files": {}}
    except (OSError, ValueError):
        return {"files": {}}


def checkpoint_facts(state: dict[str, Any], cfg, seed: int, mode: str) -> dict[str, Any]:
    """The provenance every generated file of one call shares (checkpoint, model, seed, mode)."""
    from medvol.train.checkpoint import checksum_path

    ckpt_path = Path(state["path"])
    ckpt_sha = checksum_path(ckpt_path).read_text(encoding="utf-8").split()[0]
    return {"checkpoint": str(ckpt_path.resolve()), "checkpoint_sha256": ckpt_sha,
            "iteration": int(state["iteration"]), "model": f"{cfg.model.name}@{cfg.model.size}",
            "seed": seed, "mode": mode, "medvol_version": medvol.__version__}


def generate_identity(state: dict[str, Any], n: int, seed: int, mode: str, **settings) -> dict[str, Any]:
    """What makes two generate calls the same job (:mod:`medvol.outputs`): the checkpoint (path
    and the SHA-256 its checksum file records), ``n``, the seed, the mode and the other settings
    that change what is written."""
    from medvol.train.checkpoint import checksum_path

    ckpt_path = Path(state["path"])
    sidecar = checksum_path(ckpt_path)
    sha = sidecar.read_text(encoding="utf-8").split()[0] if sidecar.is_file() else None
    return {"checkpoint": str(ckpt_path.resolve()), "checkpoint_sha256": sha, "n": n, "seed": seed,
            "mode": mode, **settings}


def sample_names(n: int, masks: bool, extra: tuple[str, ...] = ()) -> list[str]:
    """The files a generate call of ``n`` samples writes: images, their sidecars, masks (with
    theirs), each of ``extra`` per sample (``"_views.png"``) and generated.json."""
    names = []
    for i in range(n):
        stem = f"sample_{i:04d}"
        names += [f"{stem}.nii.gz", f"{stem}.json"]
        if masks:
            names += [f"{stem}_mask.nii.gz", f"{stem}_mask.json"]
        names += [stem + tail for tail in extra]
    return names + [PROVENANCE]


def record_mask_labels(provenance: dict[str, Any], mask_labels: list[str], out: Path) -> None:
    """Put ``mask_labels`` into a folder's generated.json, refusing a folder whose label maps name
    other classes (one listing must mean one thing)."""
    have = provenance.get("mask_labels")
    if have is not None and list(have) != list(mask_labels):
        raise MedvolError(f"--out {out}: holds label maps of classes {have}, these would be {mask_labels}; "
                          "use another folder")
    provenance["mask_labels"] = list(mask_labels)


def write_provenance(owned, provenance: dict[str, Any]) -> None:
    """Rewrite generated.json of the claimed output folder ``owned`` atomically."""
    with checked_write(owned.path(PROVENANCE), "provenance file") as tmp:
        tmp.write_text(json.dumps(provenance, indent=1, sort_keys=True), encoding="utf-8")


def intensity_facts(window) -> dict[str, Any]:
    """The ``intensity`` and ``window`` of a generate call's records (CT: HU; MR: [-1, 1])."""
    return {"intensity": "HU" if window is not None else "[-1, 1] (MR: per-volume percentile scale)",
            "window": list(window) if window is not None else None}
