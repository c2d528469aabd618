"""GANSystem: the part of the HA-GAN / CRF-GAN API that both models share.

A system owns its sub-networks (``G``, ``D``, ``E`` and ``sub_E`` or ``crf``) and knows its
published training step (:meth:`train_step`, written in :mod:`medvol.models.hagan` and
:mod:`medvol.models.crfgan`), generation with depth tiling and the encoder path.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.networks import Encoder, Geometry, check_crop_depth

MODES = ("reference", "optimized")

#: Adam learning rates per sub-network group, as published (betas (0, 0.999) for all).
LEARNING_RATES = {"G": 1e-4, "D": 4e-4, "E": 1e-4, "sub_E": 1e-4, "crf": 4e-4}
BETAS = (0.0, 0.999)

Substep = Callable[[str], ContextManager]


@dataclass
class StepState:
    """What the sub-steps of one training iteration share.

    ``start`` is the crop start in voxels; ``out`` collects the detached losses; ``keep`` holds
    tensors one sub-step hands to a later one (cleared when the step ends).
    """

    real: torch.Tensor
    labels: torch.Tensor | None
    start: int
    real_crop: torch.Tensor
    position: torch.Tensor
    optimizers: dict[str, torch.optim.Optimizer]
    iteration: int
    amp_dtype: torch.dtype | None
    scaler: "torch.amp.GradScaler | None"
    generator: torch.Generator | None
    out: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.real.shape[0]

    @property
    def device(self) -> torch.device:
        return self.real.device

    def autocast(self) -> ContextManager:
        return GANSystem._autocast(self.device, self.amp_dtype)


class GANSystem(nn.Module):
    """Base class of the two models; build one with :func:`medvol.models.build`.

    Attributes:
        name, size, latent_dim, num_classes, base_width, mask_channels: the build options.
        channels: C = 1 + mask_channels, the channels of the volumes G draws and D, E read.
        mode: "reference" or "optimized" (see :meth:`set_mode`).
        grad_sync: optional ``fn(group_name, params)`` called after each sub-step's backward and
            before its optimiser step (the trainer all-reduces gradients there under DDP).
    """

    name: str = ""
    extra: str = ""  # "sub_E" or "crf"
    #: What the trainer feeds: volumes ``[B, channels, S, S, S]`` (3) or slices ``[B, channels, S, S]`` (2).
    dims: int = 3
    channels: int = 1
    #: Paired image + mask generation: K label-map channels after the image (channels = 1 + K).
    mask_channels: int = 0

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int, mask_channels: int = 0,
                 crop_depth: int = 0):
        super().__init__()
        self.size = size
        self.base_width = base_width
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.mask_channels = mask_channels
        self.channels = 1 + mask_channels
        self.geometry = Geometry(size, check_crop_depth(size, crop_depth))
        self.mode = "reference"
        self.channels_last = False
        self.grad_sync: Callable[[str, list[nn.Parameter]], None] | None = None
        self.E = Encoder(base_width, self.channels)

    # ------------------------------------------------------------------ structure
    def options(self) -> dict[str, object]:
        """Model-specific build options (``build(name, size, **options)``); none by default."""
        return {}

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
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_latent(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Standard normal ``z[B, latent_dim]``, drawn on the generator's device, moved to ``device``."""
        device = self._device() if device is None else torch.device(device)
        gen_device = generator.device if generator is not None else device
        return torch.randn(batch, self.latent_dim, generator=generator, device=gen_device).to(device)

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

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.num_classes == 0:
            return None
        if labels is None:
            raise MedvolError(
                f"labels: the model is class-conditional ({self.num_classes} classes); pass labels"
            )
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1 and batch > 1:
            labels = labels.expand(batch)
        if labels.numel() != batch or int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise MedvolError(f"labels: expected {batch} class ids in [0, {self.num_classes})")
        return labels

    def _check_volume(self, x: torch.Tensor) -> None:
        s, c = self.size, self.channels
        if x.dim() != 5 or tuple(x.shape[1:]) != (c, s, s, s):
            raise MedvolError(f"volume: expected shape [B, {c}, {s}, {s}, {s}], got {list(x.shape)}")

    # ------------------------------------------------------------------ G's moving average
    #: Half-life in iterations of ``G_ema``, the exponential moving average of G's weights that
    #: :meth:`generate` samples from; 0: no ``G_ema`` (the published procedure).
    g_ema_half_life: float = 0.0

    def enable_g_ema(self, half_life: float) -> "GANSystem":
        """Keep ``G_ema``, a moving average of G's weights with the given half-life in iterations,
        and sample from it (:meth:`generate`); G itself still trains as before.

        Averaging the last few hundred generators smooths the oscillation of a short adversarial
        run, where the last G is one point of a cycle (docs/learning.md). ``G_ema`` is a submodule
        (checkpoints carry it) but no optimiser group. Call before the system is trained.
        """
        if half_life <= 0:
            raise MedvolError(f"g_ema_half_life: must be positive, got {half_life}")
        if "G_ema" in self._modules:
            raise MedvolError(f"g_ema_half_life: {self.name} keeps its own G_ema (stylegan2: model.ema_kimg)")
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.g_ema_half_life = float(half_life)
        return self

    @torch.no_grad()
    def update_g_ema(self) -> None:
        """``G_ema <- G + beta (G_ema - G)``, beta = 0.5 ** (1 / half-life); buffers (GroupNorm has
        none; BatchNorm statistics, spectral-norm vectors) are copied from G."""
        beta = 0.5 ** (1.0 / self.g_ema_half_life)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # ------------------------------------------------------------------ inference
    @contextlib.contextmanager
    def _eval(self, sample: bool = False) -> Iterator[None]:
        """Eval mode without grad; with ``sample`` and a ``G_ema`` (:meth:`enable_g_ema`), G_ema's
        weights stand in G's place (generation, never the encoder paths)."""
        was_training = self.training
        self.eval()
        swap = sample and self.g_ema_half_life > 0
        if swap:
            self._modules["G"], self._modules["G_ema"] = self._modules["G_ema"], self._modules["G"]
        try:
            with torch.no_grad():
                yield
        finally:
            if swap:
                self._modules["G"], self._modules["G_ema"] = self._modules["G_ema"], self._modules["G"]
            self.train(was_training)

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
    def _train_only(self, group: str) -> None:
        """Only ``group``'s parameters record gradients during a sub-step (frozen nets cost nothing)."""
        for name, module in self.groups().items():
            module.requires_grad_(name == group)

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

    def _amp_cast(self, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
        """``x`` in the autocast dtype in optimized mode under autocast; otherwise unchanged.

        For activations kept across sub-steps without grad: the next layer would cast them anyway,
        so a float32 copy alive beside the cast one is memory for nothing.
        """
        if self.mode == "optimized" and amp_dtype is not None:
            return x.to(amp_dtype)
        return x

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

    # ------------------------------------------------------------------ the training step
    #: Sub-steps in update order; each ``name`` is run by ``self._step_<name>(state)``.
    SUBSTEPS: tuple[str, ...] = ()

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
        """One published training iteration: the sub-steps :attr:`SUBSTEPS` in order.

        Every sub-step trains only its own group (the others are frozen) and updates it once.
        The crop start is drawn first, then one latent batch per sub-step that generates.

        Args:
            real: ``[B, C, S, S, S]`` in [-1, 1] (C = :attr:`channels`: the image, then a paired
                model's one-hot mask channels as -1 / +1).
            optimizers: from :meth:`make_optimizers`.
            iteration: 0-based global iteration (CRF-GAN's CRF weight schedule).
            labels: ``[B]`` class ids (class-conditional only); fakes are generated with them too.
            amp_dtype: autocast dtype on ``real.device.type`` or None for float32.
            scaler: GradScaler for float16, or None; ``update()`` is called once at the end.
            substep: ``substep(name)`` context manager around each sub-step.
            generator: RNG for the crop position and the latents.

        Returns:
            Detached scalar losses (see the model's :attr:`SUBSTEPS` docs).
        """
        state = self._prepare_step(real, labels, optimizers, iteration, amp_dtype, scaler, generator)
        substep = substep or (lambda name: contextlib.nullcontext())
        try:
            for name in self.SUBSTEPS:
                with substep(name):
                    self._train_only(name)
                    getattr(self, f"_step_{name}")(state)
        finally:
            self._unfreeze()
            state.keep.clear()
        if scaler is not None:
            scaler.update()
        return state.out

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

    #: Weight of the mode-seeking term in G's loss (:meth:`mode_seeking_loss`); 0: none, as published.
    mode_seeking: float = 0.0

    @staticmethod
    def mode_seeking_loss(z: torch.Tensor, fake: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        """Mode seeking (Mao et al., CVPR 2019): ``1 / (ratio + eps)``, the ratio the mean absolute
        difference of two samples over that of their latents, each sample paired with the next
        (the batch rolled by one). G minimises it, so two latents may not give one image; without
        it short runs of these models turn every latent into one chest (docs/learning.md).

        Args:
            z: ``[B, L]`` latents, B >= 2.
            fake: ``[B, ...]`` what G made of them.
        """
        if z.shape[0] < 2:
            raise MedvolError("mode_seeking: needs a batch of at least 2 (samples are compared in pairs)")
        dx = (fake.float() - fake.float().roll(1, 0)).abs().flatten(1).mean(1)
        dz = (z.float() - z.float().roll(1, 0)).abs().mean(1)
        return 1.0 / ((dx / dz).mean() + eps)

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

    @staticmethod
    def _bce(logit: torch.Tensor, target: float) -> torch.Tensor:
        logit = logit.float()
        return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, target))

    def _class_loss(self, cls: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor | None:
        if cls is None:
            return None
        return F.cross_entropy(cls.float(), labels)

    def _add_class_loss(
        self,
        loss: torch.Tensor,
        cls: torch.Tensor | None,
        labels: torch.Tensor | None,
        out: dict[str, torch.Tensor],
        key: str,
    ) -> torch.Tensor:
        """``loss`` plus the auxiliary classifier's loss (recorded as ``out[key]``) when conditional."""
        cls_loss = self._class_loss(cls, labels)
        if cls_loss is None:
            return loss
        out[key] = cls_loss.detach()
        return loss + cls_loss

    def _unfreeze(self) -> None:
        """Undo :meth:`_train_only` after a step (also after a failed one)."""
        for module in self.groups().values():
            module.requires_grad_(True)
