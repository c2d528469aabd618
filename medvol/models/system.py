"""GANSystem: the part of the HA-GAN / CRF-GAN API that both 3D models share.

A system owns its sub-networks (``G``, ``D``, ``E`` and ``sub_E`` or ``crf``) and knows its
published training step (:meth:`train_step`, written in :mod:`medvol.models.hagan` and
:mod:`medvol.models.crfgan`), generation with depth tiling and the encoder path. What every GAN
shares (the sub-step template, G_ema, the losses) is :class:`medvol.models.gan.GANBase`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.contract import MODES, Substep
from medvol.models.gan import GANBase, StepState
from medvol.models.networks import Encoder, Geometry, check_crop_depth

__all__ = ["BETAS", "LEARNING_RATES", "MODES", "GANSystem", "StepState", "Substep"]

#: Adam learning rates per sub-network group, as published (betas (0, 0.999) for all).
LEARNING_RATES = {"G": 1e-4, "D": 4e-4, "E": 1e-4, "sub_E": 1e-4, "crf": 4e-4}
BETAS = (0.0, 0.999)


class GANSystem(GANBase):
    """Base class of the two 3D models; build one with :func:`medvol.models.build`.

    Attributes:
        name, size, latent_dim, num_classes, base_width, mask_channels: the build options.
        channels: C = 1 + mask_channels, the channels of the volumes G draws and D, E read.
        mode: "reference" or "optimized" (see :meth:`set_mode`).
        grad_sync: optional ``fn(group_name, params)`` called after each sub-step's backward and
            before its optimiser step (the trainer all-reduces gradients there under DDP).
    """

    extra: str = ""  # "sub_E" or "crf"
    dims: int = 3

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int, mask_channels: int = 0,
                 crop_depth: int = 0):
        super().__init__(size, base_width, latent_dim, num_classes, mask_channels)
        self.geometry = Geometry(size, check_crop_depth(size, crop_depth))
        self.E = Encoder(base_width, self.channels)

    # ------------------------------------------------------------------ structure
    def groups(self) -> dict[str, nn.Module]:
        """Sub-network groups in update order, keyed like the optimisers."""
        return {"D": self.D, "G": self.G, "E": self.E, self.extra: getattr(self, self.extra)}

    def param_counts(self) -> dict[str, int]:
        """Trainable parameters per group and ``total`` (spectral-norm vectors are buffers)."""
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in self.groups().items()}
        ordered = {k: counts[k] for k in ("G", "D", "E", self.extra)}
        ordered["total"] = sum(counts.values())
        return ordered

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per group with the published learning rates and betas (0, 0.999).

        In optimized mode the Adams are fused (one kernel per group, no multi-tensor temporaries
        of the size of the parameters); call :meth:`set_mode` first.
        """
        fused = True if self.mode == "optimized" else None
        return {
            k: torch.optim.Adam(m.parameters(), lr=LEARNING_RATES[k], betas=BETAS, fused=fused)
            for k, m in self.groups().items()
        }

    def prepare_training(self) -> None:
        """Load and check what only training reads (a loss's weights file), so that a bad file is
        named before the trainer writes anything; generation never calls it. Nothing here."""

    def set_mode(self, mode: str, channels_last: bool = False) -> "GANSystem":
        """Switch execution mode; weights are untouched (only, with ``channels_last``, their layout).

        "reference": plain interpolate + conv3d, no checkpointing, torch CRF.
        "optimized": fused :func:`medvol.ops.upsample_conv3d`, activation checkpointing of the
        G and D stages, :func:`medvol.ops.meanfield_crf` with backend "auto", group norms in the
        autocast dtype followed by in-place ReLUs, and G's latent linear and the sub-encoder's last
        layer in float32 (see :func:`medvol.models.blocks.full_precision`).

        Args:
            mode: "reference" or "optimized".
            channels_last: optimized mode only, not on the CPU: ``channels_last_3d`` weights and
                activations. Off by default: on CUDA ``group_norm`` has no channels-last kernel
                and copies its input to the contiguous layout, so every conv -> GroupNorm pair of
                these networks would convert layouts twice; no GPU measurement has shown it paying
                for that (docs/models.md). On the CPU oneDNN's bfloat16 channels_last conv3d weight
                gradient is wrong for inputs of depth 2 (torch 2.14; garbage or NaN), a depth our
                crops reach, so it is refused there.

        Call it after moving the system to its device.
        """
        if mode not in MODES:
            raise MedvolError(f"unknown mode {mode!r} (choose reference or optimized)")
        optimized = mode == "optimized"
        if channels_last and not optimized:
            raise MedvolError("channels_last: only with the optimized mode")
        if channels_last and self._device().type == "cpu":
            raise MedvolError("channels_last: not on the CPU (oneDNN's bf16 channels_last conv3d "
                              "weight gradient is wrong at depth 2)")
        for module in self.modules():
            if hasattr(module, "optimized"):
                module.optimized = optimized
                module.channels_last = channels_last
        self.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
        self.channels_last = channels_last
        self.mode = mode
        return self

    # ------------------------------------------------------------------ sampling
    def _sample_crop(self, generator: torch.Generator | None) -> int:
        """Random crop start in voxels, any of 0 .. S - S/8 (as published, for both models).

        The fake crop is rendered from embedding slices ``start // 4`` on, so for a start that is
        not a multiple of 4 the real and the fake crop are offset by up to 3 voxels, as in the
        published code. The start is a host-side int; under ``FakeTensorMode`` (memory tracing)
        it is still drawn from a real tensor, since a fake one has no value to read.
        """
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        g = self.geometry
        device = generator.device if generator is not None else "cpu"
        with unset_fake_temporarily():
            return int(torch.randint(g.size - g.crop + 1, (1,), generator=generator, device=device))

    def _position(self, start: int, batch: int, device: torch.device) -> torch.Tensor:
        """Crop position fed to D^H: voxel start / (S - crop), shape [B, 1]; 0 when the crop is the
        whole depth (``crop_depth`` S)."""
        g = self.geometry
        return torch.full((batch, 1), start / (g.size - g.crop) if g.crop < g.size else 0.0, device=device)


    def _check_volume(self, x: torch.Tensor) -> None:
        s, c = self.size, self.channels
        if x.dim() != 5 or tuple(x.shape[1:]) != (c, s, s, s):
            raise MedvolError(f"volume: expected shape [B, {c}, {s}, {s}, {s}], got {list(x.shape)}")


    def generate(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, tile_depth: int | None = None
    ) -> torch.Tensor:
        """Full-resolution volumes ``[B, C, S, S, S]`` in [-1, 1] (no grad, eval mode); C =
        :attr:`channels`: the image, then the K mask channels of a paired model.

        Args:
            z: ``[B, latent_dim]``.
            labels: ``[B]`` class ids (class-conditional models only).
            tile_depth: embedding slices per G^H tile (bounded memory); the tiled output equals the
                untiled one up to float rounding (GroupNorm statistics are global in both).
        """
        if tile_depth is not None and tile_depth < 1:
            raise MedvolError(f"tile_depth: must be >= 1, got {tile_depth}")
        labels = self._check_labels(labels, z.shape[0])
        with self._eval(sample=True):
            emb = self.G.embed(z.to(self._device()), labels)
            return self._render(emb, tile_depth)

    def _render(self, emb: torch.Tensor, tile_depth: int | None) -> torch.Tensor:
        if tile_depth is None or tile_depth >= emb.shape[2]:
            return self.G.render(emb)
        return self.G.render_tiled(emb, tile_depth)

    def _encode_slabs(self, x: torch.Tensor) -> torch.Tensor:
        """E applied to each depth crop of S/8 slices, concatenated: ``[B, 2c, S/4, S/4, S/4]``.

        Crop by crop, as E is trained (and as HA-GAN builds the sub-encoder's input).
        """
        c = self.geometry.crop
        return torch.cat([self.E(x[:, :, i : i + c]) for i in range(0, self.size, c)], dim=2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder path: real volume ``[B, C, S, S, S]`` -> embedding ``[B, 2c, S/4, S/4, S/4]``.

        This is the latent G^H decodes; :meth:`reconstruct` maps it back to a volume.
        """
        self._check_volume(x)
        with self._eval():
            return self._encode_slabs(x.to(self._device()))

    def reconstruct(self, x: torch.Tensor, tile_depth: int | None = None) -> torch.Tensor:
        """``G^H(E(x))``: ``[B, C, S, S, S]`` -> ``[B, C, S, S, S]`` in [-1, 1]."""
        emb = self.encode(x)
        with self._eval():
            return self._render(emb, tile_depth)

    # ------------------------------------------------------------------ training helpers
    def _encoder_step(
        self,
        real_crop: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        amp_dtype: torch.dtype | None,
        scaler: "torch.amp.GradScaler | None",
    ) -> torch.Tensor:
        """The E update shared by both models: L1 between the real crop and G^H(E(real crop))."""
        self._train_only("E")
        with self._autocast(real_crop.device, amp_dtype):
            reconstruction = self.G.render(self.E(real_crop))
            loss = F.l1_loss(reconstruction.float(), real_crop.float())
        self._update("E", loss, optimizers, scaler)
        return loss.detach()

    def _prepare_step(
        self,
        real: torch.Tensor,
        labels: torch.Tensor | None,
        optimizers: dict[str, torch.optim.Optimizer],
        iteration: int,
        amp_dtype: torch.dtype | None,
        scaler: "torch.amp.GradScaler | None",
        generator: torch.Generator | None,
    ) -> "StepState":
        """Validate inputs and pick the crop (the first draw of ``generator`` in every step)."""
        self._check_volume(real)
        labels = self._check_labels(labels, real.shape[0])
        if labels is not None:
            labels = labels.to(real.device)
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last_3d)
        start = self._sample_crop(generator)
        crop = real[:, :, start : start + self.geometry.crop]
        position = self._position(start, real.shape[0], real.device)
        return StepState(real, labels, start, crop, position, optimizers, iteration, amp_dtype, scaler,
                         generator)

    def _real_inputs(self, state: "StepState") -> tuple[torch.Tensor, ...]:
        """D's inputs for the real batch, before the position (D^H: the crop)."""
        return (state.real_crop,)

    def _fake_inputs(self, z: torch.Tensor, labels: torch.Tensor | None, start: int) -> tuple[torch.Tensor, ...]:
        """D's inputs for the fakes of ``z`` with the crop at voxel ``start``: G's crop there, the
        counterpart of :meth:`_real_inputs` (HA-GAN adds its low-resolution volume)."""
        return (self.G.render(self._crop_emb(self.G.embed(z, labels), start)),)

    def _step_D(self, state: "StepState") -> None:
        """D: BCE(D(real), 1) + BCE(D(fake), 0) at the crop position (+ the real labels' CE)."""
        with state.autocast():
            with torch.no_grad():
                z = self.sample_latent(state.batch, state.generator, state.device)
                fake = self._fake_inputs(z, state.labels, state.start)
            d_real, cls_real = self.D(*self._real_inputs(state), state.position)
            d_fake, _ = self.D(*fake, state.position)
            del fake  # no grad: nothing needs it through the later sub-steps
            loss_real, loss_fake = self._bce(d_real, 1.0), self._bce(d_fake, 0.0)
            loss = self._add_class_loss(loss_real + loss_fake, cls_real, state.labels, state.out, "D_cls")
        self._update("D", loss, state.optimizers, state.scaler)
        state.out.update(D=loss.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())
        state.keep["d_real"] = d_real.detach()

    def _generator_logit(self, z: torch.Tensor, state: "StepState") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logit G is trained to push towards "real", and D's class logits of the fakes.

        With :attr:`mode_seeking` the fake crop is kept in ``state.keep["g_fake"]`` for its term.
        """
        fake = self._fake_inputs(z, state.labels, state.start)
        if self.mode_seeking > 0:
            state.keep["g_fake"] = fake[0]
        return self.D(*fake, state.position)

    def _step_G(self, state: "StepState") -> None:
        """G: BCE(logit, 1) on fresh fakes through the frozen D (+ the conditioning labels' CE)
        (+ :attr:`mode_seeking` times :meth:`mode_seeking_loss` of those fakes' crops)."""
        z = self.sample_latent(state.batch, state.generator, state.device)
        with state.autocast():
            logit, cls = self._generator_logit(z, state)
            loss = self._add_class_loss(self._bce(logit, 1.0), cls, state.labels, state.out, "G_cls")
            if self.mode_seeking > 0:
                ms = self.mode_seeking_loss(z, state.keep.pop("g_fake"))
                state.out["G_ms"] = ms.detach()
                loss = loss + self.mode_seeking * ms
        self._update("G", loss, state.optimizers, state.scaler)
        state.out["G"] = loss.detach()

    def _step_E(self, state: "StepState") -> None:
        state.out["E"] = self._encoder_step(state.real_crop, state.optimizers, state.amp_dtype, state.scaler)

    def _crop_emb(self, emb: torch.Tensor, start: int) -> torch.Tensor:
        """The embedding slices G^H renders into the crop at voxel ``start``: from ``start // 4``."""
        first = start // 4
        return emb[:, :, first : first + self.geometry.crop_emb]
