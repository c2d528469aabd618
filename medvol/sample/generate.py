"""``medvol generate``: a checkpoint's samples written to a folder.

A 3D model's checkpoint gives volumes (:mod:`medvol.sample.volumes`); a 2D model's gives images,
or with ``volume`` slices stacked into volumes (:mod:`medvol.sample.images`). Both draw through
one :class:`~medvol.sample.sampler.Sampler`.
"""

from __future__ import annotations

import os
from pathlib import Path

from medvol.errors import MedvolError
from medvol.sample.images import write_images
from medvol.sample.sampler import Sampler
from medvol.sample.volumes import write_volumes


def generate(ckpt: str | os.PathLike, n: int | None, out: str | os.PathLike, seed: int = 0,
             label: int | None = None, tile_depth: int | None = None, device: str = "auto",
             mode: str | None = None, *, volume: bool = False, masks: str | os.PathLike | None = None,
             display_window: tuple[float, float] | None = None, batch: int = 16,
             overwrite: bool = False, inputs: str | os.PathLike | None = None, direction: str = "AB") -> list[Path]:
    """``medvol generate``: volumes of a 3D model, images (or stacked volumes) of a 2D model.

    Args:
        ckpt, seed, label, tile_depth, device, mode, overwrite: as :func:`generate_volumes`.
        n: volumes (3D, or 2D with ``volume``) or images (2D); None: 1, or as many as ``masks``
            gives.
        volume, masks, display_window, batch: 2D models only, see
            :func:`medvol.sample.images.write_images`.
        inputs, direction: translation models (cyclegan): the 2D image cache to translate and
            "AB" or "BA" (:func:`medvol.sample.images.write_images`).

    Returns:
        The written image/volume paths, in order (masks and PNGs not included).
    """
    if n is not None and n < 1:
        raise MedvolError(f"--n: expected at least 1, got {n}")
    sampler = Sampler.load(ckpt, device, mode)
    if sampler.dims == 2:
        return write_images(sampler, n, out, seed=seed, label=label, tile_depth=tile_depth, volume=volume,
                            masks=masks, display_window=display_window, batch=batch, overwrite=overwrite,
                            inputs=inputs, direction=direction)
    for flag, given in (("--volume", volume), ("--masks", masks is not None),
                        ("--display-window", display_window is not None), ("--input", inputs is not None),
                        ("--direction", direction != "AB")):
        if given:
            raise MedvolError(f"{flag}: only for 2D models; {sampler.cfg.model.name} generates volumes")
    return write_volumes(sampler, 1 if n is None else n, out, seed, label, tile_depth, overwrite)


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
    sampler = Sampler.load(ckpt, device, mode)
    if sampler.dims == 2:
        return write_images(sampler, n, out, seed=seed, label=label, tile_depth=tile_depth, volume=True,
                            overwrite=overwrite)
    return write_volumes(sampler, n, out, seed, label, tile_depth, overwrite)
