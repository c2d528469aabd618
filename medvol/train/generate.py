"""Generation from a checkpoint: full-resolution volumes written as NIfTI with physical geometry.

Volume ``i`` of a call with ``seed`` uses the ``i``-th latent drawn from a CPU generator seeded
with ``seed``, so output is deterministic per seed (and ``n=3`` gives the first three of ``n=5``)
whatever the device.

What a generated file holds (docs/models.md, "Generated volumes on disk"):

- Intensities: CT is mapped back to Hounsfield units with the inverse of the training window.
  MR stays in the network's [-1, 1]: each training volume was scaled by its own percentiles, so
  there is no one scanner scale to map back to.
- Geometry: the training data's voxel spacing and direction (the checkpoint records them). The
  origin puts the centre of the volume at the physical point (0, 0, 0) mm: a generated volume
  belongs to no scanner position, and a centred one lies at the same place whatever its spacing
  and direction, so samples of one or of different runs overlay each other.
- Provenance: every file is marked synthetic (:mod:`medvol.data.provenance`): the NIfTI
  ``descrip`` starts with ``synthetic`` and names model, seed, index and checkpoint, and a sidecar
  ``sample_0000.json`` beside it, like ``generated.json`` in the output folder, records the
  checkpoint (path, SHA-256, iteration), the model, seed, index, label, mode, intensity unit,
  geometry, the training data's share of synthetic volumes, medvol version and date.
- Paired image + mask models (``model.mask_channels`` K > 0): the image is G's channel 0 alone;
  beside it ``sample_0000_mask.nii.gz`` holds the uint8 label map decoded from channels 1..K
  (:func:`medvol.data.paired.labels_from_channels`), same geometry, marked synthetic the same way;
  ``mask_labels`` (the class names) goes into both sidecars and ``generated.json``.

2D models (``system.dims == 2``) go to :mod:`medvol.train.generate2d`: slices as NIfTI and PNG
grids, or (``volume=True``) slices stacked into volumes written as above, marked the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medvol
from medvol.data.paired import labels_from_channels
from medvol.errors import MedvolError
from medvol.train.checkpoint import checksum_path, load_checkpoint
from medvol.train.distributed import pick_device
from medvol.utils import checked_write, write_failure
from medvol.viewer.preview import preview_files

log = logging.getLogger("medvol.generate")

#: The provenance file that ``generate_volumes`` keeps in its output folder.
PROVENANCE = "generated.json"

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


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
    direction = tuple(float(d) for d in meta.get("direction") or _IDENTITY)
    if len(spacing) != 3 or len(direction) != 9:
        raise MedvolError(f"checkpoint data facts: spacing {spacing} / direction {direction} are not 3D")
    return spacing, direction


def read_provenance(out: Path) -> dict[str, Any]:
    """``out/generated.json`` as a dict with ``files``; empty when absent or unreadable."""
    path = out / PROVENANCE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else {"files": {}}
    except (OSError, ValueError):
        return {"files": {}}


def generate(ckpt: str | os.PathLike, n: int | None, out: str | os.PathLike, seed: int = 0,
             label: int | None = None, tile_depth: int | None = None, device: str = "auto",
             mode: str | None = None, *, volume: bool = False, masks: str | os.PathLike | None = None,
             display_window: tuple[float, float] | None = None, batch: int = 16,
             overwrite: bool = False) -> list[Path]:
    """``medvol generate``: volumes of a 3D model, images (or stacked volumes) of a 2D model.

    Args:
        ckpt, seed, label, tile_depth, device, mode, overwrite: as :func:`generate_volumes`.
        n: volumes (3D, or 2D with ``volume``) or images (2D); None: 1, or as many as ``masks``
            gives.
        volume, masks, display_window, batch: 2D models only, see
            :func:`medvol.train.generate2d.generate_images`.

    Returns:
        The written image/volume paths, in order (masks and PNGs not included).
    """
    if n is not None and n < 1:
        raise MedvolError(f"--n: expected at least 1, got {n}")
    dev = pick_device(device)  # before the checkpoint is read: a missing GPU is named first
    system, cfg, state = load_checkpoint(ckpt)
    if system.dims == 2:
        from medvol.train.generate2d import generate_images

        return generate_images((system, cfg, state), n, out, seed=seed, label=label, tile_depth=tile_depth,
                               device=dev, mode=mode, volume=volume, masks=masks,
                               display_window=display_window, batch=batch, overwrite=overwrite)
    for flag, given in (("--volume", volume), ("--masks", masks is not None),
                        ("--display-window", display_window is not None)):
        if given:
            raise MedvolError(f"{flag}: only for 2D models; {cfg.model.name} generates volumes")
    return _generate_volumes((system, cfg, state), 1 if n is None else n, out, seed, label, tile_depth,
                             dev, mode, overwrite)


def checkpoint_facts(state: dict[str, Any], cfg, seed: int, mode: str) -> dict[str, Any]:
    """The provenance every generated file of one call shares (checkpoint, model, seed, mode)."""
    ckpt_path = Path(state["path"])
    ckpt_sha = checksum_path(ckpt_path).read_text(encoding="utf-8").split()[0]
    return {"checkpoint": str(ckpt_path.resolve()), "checkpoint_sha256": ckpt_sha,
            "iteration": int(state["iteration"]), "model": f"{cfg.model.name}@{cfg.model.size}",
            "seed": seed, "mode": mode, "medvol_version": medvol.__version__}


def generate_volumes(ckpt: str | os.PathLike, n: int, out: str | os.PathLike, seed: int = 0,
                     label: int | None = None, tile_depth: int | None = None, device: str = "auto",
                     mode: str | None = None, overwrite: bool = False) -> list[Path]:
    """Generate ``n`` volumes from a checkpoint and write them as ``out/sample_0000.nii.gz``, ….

    For a 2D model's checkpoint: ``n`` volumes of stacked slices (``generate(..., volume=True)``).

    Args:
        ckpt: a checkpoint file or a run folder (its latest checkpoint).
        n: number of volumes.
        out: output folder (created).
        seed: latent seed; the same seed gives the same volumes.
        label: class id for a class-conditional model (default: volume ``i`` gets ``i % K``).
        tile_depth: embedding slices per high-resolution tile (bounded memory at 256/512^3).
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda[:N]"``.
        mode: ``"reference"`` or ``"optimized"`` (fused upsample-conv: less memory);
            default optimized on CUDA, reference on the CPU.
        overwrite: accept an ``out`` holding other files: what another medvol generate wrote
            there is removed first; files medvol did not write are kept and never replaced.
            Without it such a folder is refused; the same call again (same checkpoint, n, seed,
            mode and options) continues in its own folder.

    Returns:
        The written file paths, in order.

    Raises:
        MedvolError: bad checkpoint, ``n < 1``, a label for an unconditional model or out of range,
            a device this machine lacks, an ``out`` holding other files (before anything is
            generated), or a failed write (a full disk): the volume being
            written then has no file under its name; the ones before it are complete and listed
            in ``generated.json``.
    """
    if n < 1:
        raise MedvolError(f"--n: expected at least 1 volume, got {n}")
    dev = pick_device(device)  # before the checkpoint is read: a missing GPU is named first
    loaded = load_checkpoint(ckpt)
    if loaded[0].dims == 2:
        from medvol.train.generate2d import generate_images

        return generate_images(loaded, n, out, seed=seed, label=label, tile_depth=tile_depth, device=dev,
                               mode=mode, volume=True, overwrite=overwrite)
    return _generate_volumes(loaded, n, out, seed, label, tile_depth, dev, mode, overwrite)


def generate_identity(state: dict[str, Any], n: int, seed: int, mode: str, **settings) -> dict[str, Any]:
    """What makes two generate calls the same job (:mod:`medvol.outputs`): the checkpoint (path
    and the SHA-256 its checksum file records), ``n``, the seed, the mode and the other settings
    that change what is written."""
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


def _generate_volumes(loaded, n: int, out: str | os.PathLike, seed: int, label: int | None,
                      tile_depth: int | None, dev: torch.device, mode: str | None,
                      overwrite: bool = False) -> list[Path]:
    """:func:`generate_volumes` for a loaded 3D ``(system, cfg, state)``."""
    from medvol.outputs import owned_output

    system, cfg, state = loaded
    k = system.num_classes
    if label is not None and k == 0:
        raise MedvolError(f"--label {label}: the model in {state['path']} is not class-conditional")
    if label is not None and not 0 <= label < k:
        raise MedvolError(f"--label {label}: the model has classes 0..{k - 1}")
    system.to(dev)
    mode = mode or ("optimized" if dev.type == "cuda" else "reference")
    system.set_mode(mode)
    meta = state.get("data", {})
    spacing, direction = output_geometry(meta)
    window = meta.get("window")
    size = cfg.model.size
    origin = centred_origin((size, size, size), spacing, direction)
    ckpt_path = Path(state["path"])
    mask_labels = paired_mask_labels(system, meta, state)
    common = {
        **checkpoint_facts(state, cfg, seed, mode), "tile_depth": tile_depth,
        "intensity": "HU" if window is not None else "[-1, 1] (MR: per-volume percentile scale)",
        "window": list(window) if window is not None else None,
        "spacing": list(spacing), "origin": list(origin), "direction": list(direction),
        "training_data": {k: meta[k] for k in ("source", "volumes", "synthetic_volumes") if k in meta},
    }

    if mask_labels is not None:
        common["mask_labels"] = mask_labels
    identity = generate_identity(state, n, seed, mode, label=label, tile_depth=tile_depth, dims=3)
    planned = sample_names(n, mask_labels is not None) + ["preview.png"]  # checked before anything is generated
    with owned_output(out, "generate", identity, overwrite=overwrite, inputs=[ckpt_path], outputs=planned) as owned:
        return _write_volumes(owned, system, n, seed, label, tile_depth, dev, k, window, mask_labels, common,
                              spacing, origin, direction)


def _write_volumes(owned, system, n, seed, label, tile_depth, dev, k, window, mask_labels, common,
                   spacing, origin, direction) -> list[Path]:
    """Generate and write the volumes of :func:`_generate_volumes` into the claimed folder."""
    from medvol.data.io import Volume
    from medvol.data.preprocess import to_intensity
    from medvol.data.provenance import sidecar_path, write_synthetic

    out = owned.folder
    provenance = read_provenance(out)
    if mask_labels is not None:
        record_mask_labels(provenance, mask_labels, out)
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        z = system.sample_latent(1, generator=generator, device=torch.device("cpu")).to(dev)
        labels = None if k == 0 else torch.tensor([label if label is not None else i % k], device=dev)
        x = system.generate(z, labels=labels, tile_depth=tile_depth)[0].float().cpu().numpy()
        array = to_intensity(x[0], tuple(window)) if window is not None else x[0]
        path = out / f"sample_{i:04d}.nii.gz"
        volume = Volume(array=array.astype("float32"), spacing=spacing, origin=origin, direction=direction)
        record = dict(common, index=i, label=int(labels[0]) if labels is not None else None)
        mask_path, mask_written = out / f"sample_{i:04d}_mask.nii.gz", False
        for written in (path, mask_path) if mask_labels is not None else (path,):
            owned.path(written.name)
            owned.path(sidecar_path(written).name)
        try:
            if mask_labels is not None:
                # The label map first: an image written without its mask would pass for an unpaired one.
                mask = Volume(array=labels_from_channels(x[1:]), spacing=spacing, origin=origin, direction=direction)
                mask_record = dict(record, kind="mask", image=path.name,
                                   intensity=f"label map 0..{len(mask_labels)} (0 background)")
                mask_record = write_synthetic(mask, mask_path, mask_record, dtype=np.uint8)
                mask_written = True
                record = dict(record, kind="image", mask=mask_path.name)
            record = write_synthetic(volume, path, record)  # marked: header, sidecar (medvol.data.provenance)
        except MedvolError as error:
            if mask_written:  # no label map without its image
                mask_path.unlink(missing_ok=True)
                sidecar_path(mask_path).unlink(missing_ok=True)
                provenance["files"].pop(mask_path.name, None)
            # The file of an earlier call under this name, if any, is untouched and keeps its entry.
            if paths:
                with contextlib.suppress(MedvolError):
                    write_provenance(owned, provenance)
            done = f"; the {i} volume(s) before it are complete" if i else ""
            raise MedvolError(f"{error}{done}") from None
        provenance["files"][path.name] = record
        if mask_written:
            provenance["files"][mask_path.name] = mask_record
        log.info("wrote %s", path)
        paths.append(path)
    write_provenance(owned, provenance)
    preview_files(paths, owned.path("preview.png"), window)  # central planes, captioned (medvol.viewer.preview)
    return paths


def paired_mask_labels(system, meta: dict[str, Any], state: dict[str, Any]) -> list[str] | None:
    """The class names of a paired image + mask model's label channels (None for other models).

    Raises:
        MedvolError: the checkpoint's data facts name another number of classes than its model has.
    """
    k = int(getattr(system, "mask_channels", 0))
    if not k:
        return None
    names = [str(n) for n in meta.get("mask_labels") or []]
    if len(names) != k:
        raise MedvolError(f"checkpoint {state['path']}: model.mask_channels {k} but its data facts name "
                          f"{len(names)} mask label(s) {names}")
    return names


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
