"""A trained model ready to generate volumes in physical units, for the viewer's widget.

No GUI here: :class:`LoadedModel` wraps a :class:`medvol.sample.sampler.Sampler` and samples
exactly as ``medvol generate`` does, so seed ``s`` (and class ``k``) in the widget gives the
volume ``medvol generate --seed s --label k`` writes first.
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
        sampler: the :class:`~medvol.sample.sampler.Sampler` that draws the volumes.
        device: the torch device the system is on.
    """

    system: Any
    name: str
    spacing: tuple[float, float, float]
    window: tuple[float, float] | None
    num_classes: int
    sampler: Any
    device: Any = "cpu"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LoadedModel":
        """Load a checkpoint file or run folder (:meth:`medvol.sample.sampler.Sampler.load`)."""
        from medvol.viewer.display import guard_triton

        guard_triton()  # napari's OpenGL is running: importing Triton now could crash
        from medvol.sample.sampler import Sampler

        # As `medvol generate`: the fused upsample-conv saves memory on CUDA; plain ops on the CPU.
        sampler = Sampler.load(path, "auto")
        meta = sampler.meta
        return cls(
            system=sampler.system,
            name=f"{Path(sampler.state.get('path', path)).name.split('.')[0]} ({sampler.model})",
            spacing=tuple(float(s) for s in meta.get("spacing") or (1.0, 1.0, 1.0)),
            window=sampler.window,
            num_classes=sampler.num_classes,
            sampler=sampler,
            device=sampler.device,
        )

    def generate(self, seed: int, label: int | None = None):
        """One volume from latent seed ``seed`` (and class ``label`` for conditional models).

        Returns:
            a :class:`medvol.data.io.Volume`, array (S, S, S) float32 in HU (CT) or [-1, 1] (MR).
        """
        from medvol.data.io import Volume
        from medvol.data.preprocess import to_intensity

        if self.num_classes and (label is None or not 0 <= label < self.num_classes):
            raise MedvolError(f"class label {label} out of range: this model has {self.num_classes} classes")
        # Sample 0 of `medvol generate --seed SEED --label LABEL`.
        sample = next(self.sampler.stream(1, int(seed), label=int(label) if self.num_classes else None))
        x = sample.array[0]
        array = to_intensity(x, self.window) if self.window is not None else x
        return Volume(array=np.ascontiguousarray(array, dtype=np.float32), spacing=self.spacing)
