"""The model contract: what the trainer, sampler, profiler and estimate need of any generative model.

A model is an ``nn.Module`` subclass of :class:`GenerativeSystem` built by
:func:`medvol.models.build` from its registry entry (:mod:`medvol.models.registry`). Nothing here
is GAN-specific: a GAN trains its ``D`` and ``G`` groups in one step, a latent diffusion model its
autoencoder in one stage and its denoiser in the next, and both keep the same contract:

- structure: :meth:`groups` (one optimiser per group), :meth:`param_counts`,
  :meth:`make_optimizers`, :meth:`options`, :meth:`set_mode`, :meth:`prepare_training`;
- training: :meth:`train_step` (one iteration, all its sub-steps and optimiser updates),
  :attr:`real_batches` and :meth:`batch_shape` (what one step eats);
- sampling: :meth:`sample` (``n`` samples from a seed or a generator, the one call the sampler
  makes), built on :meth:`sample_latent` and :meth:`generate` (a latent in, a sample out);
- state: ``state_dict`` / ``load_state_dict`` of ``nn.Module``: every tensor a sample depends on is
  a parameter or buffer of the module tree, so a checkpoint is the state dict.

:meth:`groups`, :meth:`make_optimizers`, :meth:`train_step` and :meth:`generate` are abstract: a
class that lacks one cannot be instantiated (the error names it), so a model is incomplete at
build time, not in the middle of a run. Its options are a dataclass registered with it
(:mod:`medvol.models.options`).
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn

from medvol.errors import MedvolError

MODES = ("reference", "optimized")

#: ``substep(name)``: a context manager the trainer or profiler wraps around each sub-step.
Substep = Callable[[str], ContextManager]


class GenerativeSystem(nn.Module, metaclass=abc.ABCMeta):
    """Base of every model; build one with :func:`medvol.models.build`.

    Attributes:
        name: the registry name ("crfgan", "ldm", ...).
        dims: 3 (the trainer feeds volumes ``[B, C, S, S, S]``) or 2 (slices ``[B, C, S, S]``).
        size, base_width, latent_dim, num_classes, mask_channels: the build options.
        channels: C, the channels of what the model draws and its training batches hold.
        conditional: True for a model whose samples are drawn from given masks (``masks=``).
        mode: "reference" or "optimized" (:meth:`set_mode`).
        grad_sync: optional ``fn(group_name, params)`` the model calls after each backward and
            before the optimiser step (the trainer all-reduces gradients there under DDP).
        g_ema_half_life: > 0 when the model keeps a moving average of its generator that the
            trainer updates after each step (:meth:`update_g_ema`).
    """

    name: str = ""
    dims: int = 3
    channels: int = 1
    mask_channels: int = 0
    num_classes: int = 0
    conditional: bool = False
    g_ema_half_life: float = 0.0

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int = 0,
                 mask_channels: int = 0, channels: int | None = None):
        super().__init__()
        self.size = size
        self.base_width = base_width
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.mask_channels = mask_channels
        self.channels = 1 + mask_channels if channels is None else channels
        self.mode = "reference"
        self.channels_last = False
        self.grad_sync: Callable[[str, list[nn.Parameter]], None] | None = None

    # ------------------------------------------------------------------ structure
    def options(self) -> dict[str, object]:
        """Model-specific build options (``build(name, size, **options)``); none by default."""
        return {}

    @abc.abstractmethod
    def groups(self) -> dict[str, nn.Module]:
        """Trainable sub-networks in update order, keyed like the optimisers."""

    def param_counts(self) -> dict[str, int]:
        """Trainable parameters per group and their ``total``."""
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in self.groups().items()}
        return {**counts, "total": sum(counts.values())}

    @abc.abstractmethod
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per group of :meth:`groups` (the trainer checkpoints them by key)."""

    def prepare_training(self) -> None:
        """Load and check what only training reads (a loss's weights file, a first stage's
        checkpoint), so that a bad file is named before the trainer writes anything; sampling
        never calls it. Nothing by default."""

    def pretrained(self) -> dict[str, str]:
        """Sub-networks to initialise from another run's checkpoint before training, as
        ``{submodule: checkpoint file or run folder}`` (the trainer loads them: a model never reads
        checkpoints); none by default."""
        return {}

    def set_mode(self, mode: str, channels_last: bool = False) -> "GenerativeSystem":
        """"reference" (fp32, plain layers) or "optimized" (the model's memory savings: activation
        checkpointing, fused ops); weights are untouched. Call it after moving to the device."""
        if mode not in MODES:
            raise MedvolError(f"unknown mode {mode!r} (choose reference or optimized)")
        if channels_last:
            raise MedvolError(f"channels_last: not supported by {self.name}")
        self.mode = mode
        return self

    @property
    def real_batches(self) -> int:
        """Real batches one :meth:`train_step` consumes (the trainer loads this many per iteration)."""
        return 1

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        """The real batch one training step takes at batch size B: ``[k B, C, S, ...]`` with ``dims``
        spatial sides S and k = :attr:`real_batches`."""
        return (batch * self.real_batches, self.channels) + (self.size,) * self.dims

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def train_step(
        self,
        real: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        iteration: int,
        *,
        labels: torch.Tensor | None = None,
        amp_dtype: torch.dtype | None = None,
        scaler: "torch.amp.GradScaler | None" = None,
        substep: Substep | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One training iteration on ``real`` (:meth:`batch_shape`, values in [-1, 1]).

        Args:
            optimizers: from :meth:`make_optimizers`.
            iteration: 0-based global iteration (for schedules).
            labels: ``[B]`` class ids (class-conditional models only).
            amp_dtype: autocast dtype on ``real.device.type`` or None for float32.
            scaler: GradScaler for float16, or None; ``update()`` is called once at the end.
            substep: ``substep(name)`` context manager around each sub-step (profiling).
            generator: the RNG of everything the step draws (crops, latents, noise, timesteps).

        Returns:
            Detached scalar losses by name.
        """

    def update_g_ema(self) -> None:
        """Advance the generator's moving average (only called when :attr:`g_ema_half_life` > 0)."""

    # ------------------------------------------------------------------ sampling
    def sample_latent(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Standard normal ``z[B, latent_dim]``, drawn on the generator's device, moved to ``device``.

        Everything random about a sample is in its latent (drawn here), so a fixed latent gives a
        fixed sample; a model whose sampling draws more (a diffusion model's noise at each step)
        draws it from a generator seeded by its latent (see its ``generate``).
        """
        device = self._device() if device is None else torch.device(device)
        gen_device = generator.device if generator is not None else device
        return torch.randn(batch, self.latent_dim, generator=generator, device=gen_device).to(device)

    @abc.abstractmethod
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Samples ``[B, C, S, ...]`` in [-1, 1] from latents of :meth:`sample_latent` (no grad,
        eval mode). ``options`` are the model's sampling options (3D GANs: ``tile_depth``;
        mask-conditional models: ``masks``; diffusion: ``steps``, ``tile``)."""

    def sample(self, n: int, *, generator: torch.Generator | None = None, seed: int | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None,
               **options) -> torch.Tensor:
        """``n`` samples ``[n, C, S, ...]`` in [-1, 1]: the one call that turns randomness into samples.

        Args:
            n: how many.
            generator: the RNG of the latents; or
            seed: seeds a CPU generator (so that a seed gives the same samples on every device).
            device: where the model runs (default: where its parameters are).
            labels: ``[n]`` class ids (class-conditional models).
            **options: the model's sampling options, passed to :meth:`generate`.
        """
        if generator is not None and seed is not None:
            raise MedvolError("sample: give a generator or a seed, not both")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MedvolError(f"sample: n must be a positive integer, got {n!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        device = self._device() if device is None else torch.device(device)
        z = self.sample_latent(n, generator, device)
        return self.generate(z, labels=labels, **options)

    def preview(self, z: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """What the trainer shows of the model during training: samples of the fixed latents ``z``
        (a mask-conditional model's drawn from the real batch's masks, its last channel)."""
        masks = {"masks": real[: z.shape[0], -1:]} if self.conditional else {}
        return self.generate(z, labels=labels, **masks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise MedvolError(f"{self.name} has no encoder")

    def reconstruct(self, x: torch.Tensor, tile_depth: int | None = None) -> torch.Tensor:
        raise MedvolError(f"{self.name} has no encoder")

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> ContextManager:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    def _update(
        self,
        group: str,
        loss: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        scaler: "torch.amp.GradScaler | None",
    ) -> None:
        """Backward ``loss``, let :attr:`grad_sync` average the group's gradients, step its optimiser."""
        optimizer = optimizers[group]
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.grad_sync is not None:
            self.grad_sync(group, list(self.groups()[group].parameters()))
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        if self.mode == "optimized":
            # The published code keeps each group's gradients alive until its next update; freeing
            # them now keeps only one sub-network's gradients live at a time.
            optimizer.zero_grad(set_to_none=True)
