"""Generation from a checkpoint: full-resolution volumes written as NIfTI with physical geometry.

Volume ``i`` of a call with ``seed`` uses the ``i``-th latent drawn from a CPU generator seeded
with ``seed``, so output is deterministic per seed (and ``n=3`` gives the first three of ``n=5``)
whatever the device. CT volumes are mapped back to Hounsfield units with the inverse of the
training window; they carry the training data's voxel spacing and an identity-direction affine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from medvol.errors import MedvolError
from medvol.train.checkpoint import load_checkpoint
from medvol.train.distributed import pick_device

log = logging.getLogger("medvol.generate")


def generate_volumes(ckpt: str | os.PathLike, n: int, out: str | os.PathLike, seed: int = 0,
                     label: int | None = None, tile_depth: int | None = None, device: str = "auto",
                     mode: str | None = None) -> list[Path]:
    """Generate ``n`` volumes from a checkpoint and write them as ``out/sample_0000.nii.gz``, ….

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

    Returns:
        The written file paths, in order.

    Raises:
        MedvolError: bad checkpoint, ``n < 1``, a label for an unconditional model or out of range.
    """
    from medvol.data.io import Volume, write_volume
    from medvol.data.preprocess import to_intensity

    if n < 1:
        raise MedvolError(f"--n: expected at least 1 volume, got {n}")
    system, cfg, state = load_checkpoint(ckpt)
    k = system.num_classes
    if label is not None and k == 0:
        raise MedvolError(f"--label {label}: the model in {state['path']} is not class-conditional")
    if label is not None and not 0 <= label < k:
        raise MedvolError(f"--label {label}: the model has classes 0..{k - 1}")
    dev = pick_device(device)
    system.to(dev)
    system.set_mode(mode or ("optimized" if dev.type == "cuda" else "reference"))
    meta = state.get("data", {})
    spacing = tuple(float(s) for s in meta.get("spacing", (1.0, 1.0, 1.0)))
    window = meta.get("window")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        z = system.sample_latent(1, generator=generator, device=torch.device("cpu")).to(dev)
        labels = None if k == 0 else torch.tensor([label if label is not None else i % k], device=dev)
        x = system.generate(z, labels=labels, tile_depth=tile_depth)[0, 0].float().cpu().numpy()
        array = to_intensity(x, tuple(window)) if window is not None else x
        path = out / f"sample_{i:04d}.nii.gz"
        write_volume(Volume(array=array.astype("float32"), spacing=spacing), path)
        log.info("wrote %s", path)
        paths.append(path)
    return paths
