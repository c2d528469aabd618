"""A trained model ready to generate volumes in physical units, for the viewer's widget.

No GUI here: :class:`LoadedModel` wraps :func:`medvol.train.checkpoint.load_checkpoint` and
samples exactly as ``medvol generate`` does, so seed ``s`` (and class ``k``) in the widget gives
the volume ``medvol generate --seed s --label k`` writes first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvol.errors import MedvolError


@dataclass
class LoadedModel:
    """A trained system ready to sample, with what is needed to write its output in physical units.

    Attributes:
        system: the ``GANSystem`` on ``device``.
        name: display name, e.g. ``"ckpt_0000010 (crfgan@64)"``.
        spacing: (z, y, x) mm of the training volumes.
        window: the training HU window (low, high), or None (MR: intensities stay in [-1, 1]).
        num_classes: 0 for unconditional models.
        device: the torch device the system is on.
    """

    system: Any
    name: str
    spacing: tuple[float, float, float]
    window: tuple[float, float] | None
    num_classes: int
    device: Any = "cpu"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LoadedModel":
        """Load a checkpoint file or run folder (:func:`medvol.train.checkpoint.load_checkpoint`)."""
        from medvol.viewer.display import guard_triton

        guard_triton()  # napari's OpenGL is running: importing Triton now could crash
        from medvol.train.checkpoint import load_checkpoint
        from medvol.train.distributed import pick_device

        system, cfg, state = load_checkpoint(path)
        device = pick_device("auto")
        system.to(device)
        # As `medvol generate`: the fused upsample-conv saves memory on CUDA; plain ops on the CPU.
        system.set_mode("optimized" if device.type == "cuda" else "reference")
        meta = state.get("data") or {}
        window = meta.get("window")
        return cls(
            system=system,
            name=f"{Path(state.get('path', path)).name.split('.')[0]} ({cfg.model.name}@{cfg.model.size})",
            spacing=tuple(float(s) for s in meta.get("spacing") or (1.0, 1.0, 1.0)),
            window=tuple(float(w) for w in window) if window is not None else None,
            num_classes=int(system.num_classes),
            device=device,
        )

    def generate(self, seed: int, label: int | None = None):
        """One volume from latent seed ``seed`` (and class ``label`` for conditional models).

        Returns:
            a :class:`medvol.data.io.Volume`, array (S, S, S) float32 in HU (CT) or [-1, 1] (MR).
        """
        import torch

        from medvol.data.io import Volume
        from medvol.data.preprocess import to_intensity

        if self.num_classes and (label is None or not 0 <= label < self.num_classes):
            raise MedvolError(f"class label {label} out of range: this model has {self.num_classes} classes")
        # The same latent as sample 0 of `medvol generate --seed SEED`: drawn on the CPU.
        generator = torch.Generator().manual_seed(int(seed))
        z = self.system.sample_latent(1, generator=generator, device=torch.device("cpu")).to(self.device)
        labels = torch.tensor([int(label)], device=self.device) if self.num_classes else None
        x = self.system.generate(z, labels=labels)[0, 0].float().cpu().numpy()
        array = to_intensity(x, self.window) if self.window is not None else x
        return Volume(array=np.ascontiguousarray(array, dtype=np.float32), spacing=self.spacing)
