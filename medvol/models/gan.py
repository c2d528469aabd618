"""GANBase: what every GAN of medvol shares, 2D or 3D, on top of the model contract.

Sub-networks updated in turn within one iteration (:attr:`SUBSTEPS`, each run by
``_step_<name>``), a moving average of G (``G_ema``), the mode-seeking term, the BCE and
auxiliary-classifier losses. The 3D HA-GAN / CRF-GAN add their crop geometry and encoder in
:mod:`medvol.models.system`, the 2D models their critic loop in :mod:`medvol.models.gan2d.system`.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.contract import GenerativeSystem, Substep


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
        return GenerativeSystem._autocast(self.device, self.amp_dtype)



class GANBase(GenerativeSystem):
    """Base of the GANs: groups trained in turn (:attr:`SUBSTEPS`), each frozen outside its own
    sub-step; :meth:`generate` samples from ``G`` (or ``G_ema``)."""

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

    # ------------------------------------------------------------------ G's moving average
    #: Half-life in iterations of ``G_ema``, the exponential moving average of G's weights that
    #: :meth:`generate` samples from; 0: no ``G_ema`` (the published procedure).
    g_ema_half_life: float = 0.0

    def enable_g_ema(self, half_life: float) -> "GANBase":
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

    # ------------------------------------------------------------------ training helpers
    def _train_only(self, group: str) -> None:
        """Only ``group``'s parameters record gradients during a sub-step (frozen nets cost nothing)."""
        for name, module in self.groups().items():
            module.requires_grad_(name == group)

    def _amp_cast(self, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
        """``x`` in the autocast dtype in optimized mode under autocast; otherwise unchanged.

        For activations kept across sub-steps without grad: the next layer would cast them anyway,
        so a float32 copy alive beside the cast one is memory for nothing.
        """
        if self.mode == "optimized" and amp_dtype is not None:
            return x.to(amp_dtype)
        return x

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
