"""The one way medvol draws samples from a trained model: :class:`Sampler`.

``medvol generate`` (:mod:`medvol.sample.volumes`, :mod:`medvol.sample.images`), ``medvol
evaluate`` (a checkpoint as ``--fake``), the viewer's generator widget, the studies and the sweep
all sample through it, so one seed means one set of samples everywhere:

- sample ``i`` of a call with ``seed`` is made from the ``i``-th latent drawn, one at a time, from
  a CPU ``torch.Generator`` seeded with ``seed``: the samples do not depend on the device or on
  how many are drawn per forward pass (``n=3`` gives the first three of ``n=5``);
- a class-conditional 3D model gets class ``label`` for every sample, or ``i % K`` when no label
  is given;
- the model samples in eval mode without gradients, from its weight average (``G_ema``) where it
  keeps one (the model's ``generate`` does both);
- ``mode`` picks the model's compute path: ``"optimized"`` (fused upsample-conv, less memory) by
  default on CUDA, ``"reference"`` on the CPU.

The model is called in exactly one place, :meth:`Sampler.draw`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from medvol.errors import MedvolError


def default_mode(device: torch.device) -> str:
    """The compute path a sampler uses when none is named: optimized on CUDA, reference elsewhere."""
    return "optimized" if device.type == "cuda" else "reference"


@dataclass
class Sample:
    """One drawn sample.

    Attributes:
        index: its number in the call (the latent it was made from).
        array: float32 ``[C, S, S, S]`` (3D) or ``[C, S, S]`` (2D) in [-1, 1]: channel 0 the image,
            then mask channels (a paired model's K label channels, a conditional model's mask).
        label: the class it was drawn for (class-conditional models), else None.
        mask_source: where its conditioning mask came from (mask-conditional models), else None.
    """

    index: int
    array: np.ndarray
    label: int | None = None
    mask_source: str | None = None


class Sampler:
    """A trained model (any checkpoint: 2D or 3D, any model) on a device, ready to sample.

    Args:
        loaded: ``(system, cfg, state)`` of :func:`medvol.train.checkpoint.load_checkpoint`.
        device: a torch device (:func:`medvol.train.distributed.pick_device` has checked it).
        mode: ``"reference"`` / ``"optimized"``; None: :func:`default_mode` of ``device``.

    Example:
        >>> sampler = Sampler.load("runs/demo", device="cpu")  # doctest: +SKIP
        >>> first = next(sampler.stream(n=1, seed=0)).array   # [C, S, S, S]
    """

    def __init__(self, loaded, device: torch.device | str = "cpu", mode: str | None = None):
        self.system, self.cfg, self.state = loaded
        self.device = torch.device(device)
        self.mode = mode or default_mode(self.device)
        self.system.to(self.device)
        self.system.set_mode(self.mode)

    @classmethod
    def load(cls, ckpt: str | os.PathLike, device: str = "auto", mode: str | None = None) -> "Sampler":
        """Read a checkpoint file or run folder (its latest checkpoint) and put it on ``device``.

        The device is checked before the checkpoint is read, so a GPU this machine lacks is named
        first. Checkpoints of every earlier medvol format load
        (:func:`medvol.train.checkpoint.load_checkpoint` converts them).
        """
        from medvol.train.distributed import pick_device

        dev = pick_device(device)
        return cls(load_checkpoint(ckpt), dev, mode)

    # ------------------------------------------------------------------ facts
    @property
    def dims(self) -> int:
        return int(getattr(self.system, "dims", 3))

    @property
    def size(self) -> int:
        return int(self.system.size)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.system, "num_classes", 0))

    @property
    def conditional(self) -> bool:
        """Whether the model draws images of given masks (2D mask-conditional models)."""
        return bool(getattr(self.system, "conditional", False))

    @property
    def unpaired(self) -> bool:
        """Whether the model translates given images between two domains (cyclegan)."""
        return bool(getattr(self.system, "unpaired", False))

    @property
    def meta(self) -> dict[str, Any]:
        """The training data's facts the checkpoint records (spacing, window, plane, ...)."""
        return self.state.get("data") or {}

    @property
    def window(self) -> tuple[float, float] | None:
        """The training HU window (CT), or None (MR: samples stay in [-1, 1])."""
        window = self.meta.get("window")
        return tuple(float(w) for w in window) if window is not None else None

    @property
    def path(self) -> Path:
        return Path(self.state["path"])

    @property
    def model(self) -> str:
        """``"<name>@<size>"`` of the checkpoint's config."""
        return f"{self.cfg.model.name}@{self.cfg.model.size}"

    def mask_labels(self) -> list[str] | None:
        """The class names of a paired image + mask model's label channels (None for other models).

        Raises:
            MedvolError: the checkpoint's data facts name another number of classes than its model has.
        """
        k = int(getattr(self.system, "mask_channels", 0))
        if not k:
            return None
        names = [str(n) for n in self.meta.get("mask_labels") or []]
        if len(names) != k:
            raise MedvolError(f"checkpoint {self.state['path']}: model.mask_channels {k} but its data facts name "
                              f"{len(names)} mask label(s) {names}")
        return names

    def check_label(self, label: int | None) -> None:
        """Refuse a class label for an unconditional model, or one out of range."""
        k = self.num_classes
        if label is not None and k == 0:
            raise MedvolError(f"--label {label}: the model in {self.state['path']} is not class-conditional")
        if label is not None and not 0 <= label < k:
            raise MedvolError(f"--label {label}: the model has classes 0..{k - 1}")

    # ------------------------------------------------------------------ sampling
    def latents(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` latents, drawn one at a time on the CPU from ``generator``, on the device."""
        cpu = torch.device("cpu")
        z = torch.cat([self.system.sample_latent(1, generator=generator, device=cpu) for _ in range(count)])
        return z.to(self.device)

    def draw(self, z: torch.Tensor, *, labels: torch.Tensor | None = None, masks: torch.Tensor | None = None,
             tile_depth: int | None = None, images: torch.Tensor | None = None,
             direction: str | None = None) -> np.ndarray:
        """The model's samples of latents ``z``: float32 ``[B, C, ...]`` in [-1, 1] on the CPU.

        The one call of the model's sampling method in medvol; ``labels``, ``masks`` (``[B, 1, S, S]``
        of -1 / 1), ``tile_depth`` and a translation model's ``images`` (``[B, 1, S, S]`` in [-1, 1])
        and ``direction`` are passed on only when given.
        """
        given = {"labels": labels, "masks": masks, "tile_depth": tile_depth, "images": images,
                 "direction": direction}
        with torch.no_grad():
            x = self.system.generate(z, **{key: value for key, value in given.items() if value is not None})
        return x.float().cpu().numpy()

    def stream(self, n: int, seed: int, *, batch: int = 1, label: int | None = None,
               masks: Iterable[tuple[np.ndarray, str]] | None = None,
               tile_depth: int | None = None, images: Iterable[tuple[np.ndarray, str]] | None = None,
               direction: str | None = None) -> Iterator[Sample]:
        """Samples ``0 .. n-1`` of ``seed``, drawn ``batch`` per forward pass, in order.

        Args:
            n: how many.
            seed: the latent seed (module docstring: sample ``i`` is the same for any ``batch``).
            batch: samples per forward pass.
            label: class of every sample (class-conditional models; None: ``i % K``).
            masks: mask-conditional models: ``(uint8 (S, S) mask, where it came from)`` per sample.
            tile_depth: embedding slices per high-resolution tile (3D models; bounded memory).
            images, direction: translation models (cyclegan): ``(float32 (S, S) image in [-1, 1],
                where it came from)`` per sample, and "AB" or "BA"; the sample's ``mask_source``
                then names its input.
        """
        self.check_label(label)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise MedvolError(f"--batch: expected a positive integer, got {batch!r}")
        generator = torch.Generator().manual_seed(int(seed))
        k = self.num_classes
        mask_iter = iter(masks) if masks is not None else None
        image_iter = iter(images) if images is not None else None
        for start in range(0, n, batch):
            count = min(batch, n - start)
            z = self.latents(count, generator)
            classes = [None] * count
            labels = given = None
            sources: list[str | None] = [None] * count
            if k:
                classes = [label if label is not None else (start + j) % k for j in range(count)]
                labels = torch.tensor(classes, device=self.device)
            if mask_iter is not None:
                drawn = [next(mask_iter) for _ in range(count)]
                sources = [source for _, source in drawn]
                given = torch.from_numpy(np.stack([m for m, _ in drawn]).astype(np.float32))[:, None]
                given = (given * 2 - 1).to(self.device)
            inputs = None
            if image_iter is not None:
                drawn = [next(image_iter) for _ in range(count)]
                sources = [source for _, source in drawn]
                inputs = torch.from_numpy(np.stack([x for x, _ in drawn]).astype(np.float32))[:, None].to(self.device)
            x = self.draw(z, labels=labels, masks=given, tile_depth=tile_depth, images=inputs, direction=direction)
            for j in range(count):
                yield Sample(start + j, x[j], classes[j], sources[j])


def load_checkpoint(ckpt: str | os.PathLike):
    """``(system, cfg, state)`` of a checkpoint file or run folder (what :meth:`Sampler.load` reads)."""
    from medvol.train.checkpoint import load_checkpoint as read

    return read(ckpt)


def is_checkpoint(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a checkpoint (``*.pt``) or a run folder holding ``ckpt_*.pt``."""
    path = Path(spec)
    if path.is_file():
        return path.suffix == ".pt"
    return path.is_dir() and (any(path.glob("ckpt_*.pt")) or any(path.glob("checkpoints/ckpt_*.pt")))
