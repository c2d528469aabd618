"""GANSystem2D: the GAN base for image models trained on slices ``[B, C, S, S]``.

The 2D systems keep the model contract (:mod:`medvol.models.contract`) with the trainer,
checkpoints and generation:
``groups``, ``param_counts``, ``make_optimizers``, ``set_mode``, ``sample_latent``, ``generate``
and the ``train_step`` template (the sub-steps :attr:`SUBSTEPS` run as ``_step_<name>``).
What differs: no depth crop, no encoder, and :attr:`dims` = 2 tells the trainer to feed slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medvol.errors import MedvolError
from medvol.models.gan2d.augment import rand_flip_shift
from medvol.models.gan2d.diffaugment import diff_augment
from medvol.models.gan2d.losses import discriminator_loss, feature_matching, generator_loss, gradient_penalty
from medvol.models.contract import MODES
from medvol.models.gan import GANBase, StepState

#: Image sides the 2D models support (32: a tiny size for tests and demos).
SIZES_2D = (32, 64, 128, 256)
#: Optimisers of the 2D models: Adam (DCGAN's, the default) or RMSprop (the WGAN paper's).
OPTIMIZERS = ("adam", "rmsprop")
#: RMSprop's learning rate in the WGAN paper (Arjovsky et al. 2017, Algorithm 1), for both nets.
RMSPROP_LR = 5e-5


@dataclass
class CriticState(StepState):
    """A 2D step's state: ``reals`` holds the ``n_critic`` real batches, one per D update;
    ``real`` is the last of them (the batch G's feature matching compares against)."""

    reals: tuple[torch.Tensor, ...] = ()


class GANSystem2D(GANBase):
    """Base of the 2D models: sub-networks ``G`` and ``D``, updated D first, then G.

    Attributes:
        channels: image channels C (1 + the mask channels concatenated with the image).
        lr, betas: Adam settings of both optimisers (``train.lr`` overrides the rates).
        conditional: True for mask-conditional models (SPADE, Pix2Pix): their ``generate`` takes
            ``masks [B, 1, S, S]`` in {-1, 1} and returns ``[B, 2, S, S]``, the image then the given
            mask; ``medvol generate`` feeds them masks (``--masks DIR`` or phantom slices).
        n_critic: D updates per G update, each on its own real batch: ``train_step`` takes
            ``real [n_critic * B, C, S, S]``, the batches concatenated (the trainer loads
            :attr:`real_batches` = n_critic batches per iteration).
        optimizer: "adam" (betas :attr:`betas`) or "rmsprop" (default rate :data:`RMSPROP_LR`).
    """

    dims = 2
    conditional: bool = False
    n_critic = 1
    optimizer = "adam"
    SUBSTEPS = ("D", "G")
    lr = {"D": 2e-4, "G": 2e-4}
    betas = (0.5, 0.999)
    # The objective; subclasses set these in __init__ (the defaults are plain BCE).
    loss = "bce"
    real_target = 1.0
    gp_weight = 0.0
    clip = 0.0
    fm_weight = 0.0
    policy: tuple[str, ...] = ()
    #: Classical augmentation of the real batches (flips, small shifts: medvol.models.gan2d.augment).
    augment = False
    #: Weight of the VGG perceptual term in G's loss, and its weights file and sha256 (vgg.py); the
    #: network is loaded at the first G step that needs it and is not part of the checkpoint.
    vgg_weight = 0.0
    vgg_weights: str | None = None
    vgg_sha256: str | None = None

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int, channels: int):
        if size not in SIZES_2D:
            raise MedvolError(f"size: {self.name} supports sizes {', '.join(map(str, SIZES_2D))}, not {size!r}")
        if num_classes:
            raise MedvolError(f"num_classes: {self.name} is unconditional (train one model per class "
                              "with data.slice_class instead)")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise MedvolError(f"channels: expected a positive integer, got {channels!r}")
        super().__init__(size, base_width, latent_dim, 0, channels=channels)

    # ------------------------------------------------------------------ structure
    def groups(self) -> dict[str, nn.Module]:
        return {"D": self.D, "G": self.G}

    def param_counts(self) -> dict[str, int]:
        counts = super().param_counts()
        return {"G": counts["G"], "D": counts["D"], "total": counts["total"]}

    @property
    def real_batches(self) -> int:
        """Real batches one :meth:`train_step` consumes (the trainer loads this many per iteration)."""
        return self.n_critic

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam (fused in optimized mode) or, with ``optimizer="rmsprop"``, RMSprop at 5e-5."""
        if self.optimizer == "rmsprop":
            return {k: torch.optim.RMSprop(m.parameters(), lr=RMSPROP_LR) for k, m in self.groups().items()}
        fused = True if self.mode == "optimized" else None
        return {k: torch.optim.Adam(m.parameters(), lr=self.lr[k], betas=self.betas, fused=fused)
                for k, m in self.groups().items()}

    def set_mode(self, mode: str, channels_last: bool = False) -> "GANSystem2D":
        """"reference": fp32 eager; "optimized": fused Adam, and the trainer's autocast.

        The 2D networks are small enough that activation checkpointing would only cost time, so
        the two modes run the same layers. ``channels_last`` stores weights and activations as NHWC.
        """
        if mode not in MODES:
            raise MedvolError(f"unknown mode {mode!r} (choose reference or optimized)")
        if channels_last and mode != "optimized":
            raise MedvolError("channels_last: only with the optimized mode")
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.channels_last = channels_last
        self.mode = mode
        return self

    # ------------------------------------------------------------------ inference
    def _check_volume(self, x: torch.Tensor) -> None:
        s, c = self.size, self.channels
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise MedvolError(f"image: expected shape [B, {c}, {s}, {s}], got {list(x.shape)}")

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                 tile_depth: int | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``[B, C, S, S]`` in [-1, 1] (no grad, eval mode: BatchNorm uses running stats).

        ``masks`` ``[B, 1, S, S]`` in {-1, 1} are for mask-conditional models (:attr:`conditional`),
        which override this method; an unconditional model refuses them.
        """
        if tile_depth is not None:
            raise MedvolError(f"tile_depth: {self.name} generates 2D images; there is no depth to tile")
        if labels is not None:
            raise MedvolError(f"labels: {self.name} is unconditional")
        if masks is not None:
            raise MedvolError(f"masks: {self.name} is not mask-conditional (it generates its images "
                              "from noise alone)")
        with self._eval(sample=True):
            return self.G(z.to(self._device()))

    # ------------------------------------------------------------------ training
    def _prepare_step(self, real, labels, optimizers, iteration, amp_dtype, scaler, generator) -> CriticState:
        """Validate the batch and split it into the ``n_critic`` real batches; a 2D step has no
        crop, so the "crop" is the whole image."""
        self._check_volume(real)
        if labels is not None:
            raise MedvolError(f"labels: {self.name} is unconditional")
        if real.shape[0] % self.n_critic:
            raise MedvolError(f"image: {real.shape[0]} images do not split into n_critic = {self.n_critic} "
                              "equal real batches")
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        reals = real.chunk(self.n_critic)
        if self.augment:
            reals = tuple(rand_flip_shift(r, generator) for r in reals)
        return CriticState(reals[-1], None, 0, reals[-1], None, optimizers, iteration, amp_dtype, scaler,
                           generator, reals=reals)

    def _augment(self, x: torch.Tensor, state: StepState) -> torch.Tensor:
        return diff_augment(x, self.policy, state.generator) if self.policy else x

    def _step_D(self, state: CriticState) -> None:
        """``n_critic`` D updates, each on its own real batch and fresh fakes; the reported D
        losses are their means."""
        totals: dict[str, torch.Tensor] = {}
        for i, real in enumerate(state.reals):
            if i and state.scaler is not None:
                state.scaler.update()  # a GradScaler steps each optimiser once between updates
            for key, value in self._critic_update(real, state).items():
                totals[key] = totals[key] + value if key in totals else value
        state.out.update({key: value / len(state.reals) for key, value in totals.items()})

    def _critic_update(self, real: torch.Tensor, state: CriticState) -> dict[str, torch.Tensor]:
        """One D update: the loss's real and fake terms (+ gp_weight * GP), then weight clipping."""
        out = {}
        with state.autocast():
            with torch.no_grad():
                z = self.sample_latent(state.batch, state.generator, state.device)
                fake = self.G(z)
            real_in, fake_in = self._augment(real, state), self._augment(fake, state)
            d_real, _ = self.D(real_in)
            d_fake, _ = self.D(fake_in)
            loss_real, loss_fake = discriminator_loss(self.loss, d_real, d_fake, self.real_target)
            loss = loss_real + loss_fake
            if self.gp_weight > 0:
                gen_device = state.generator.device if state.generator is not None else state.device
                eps = torch.rand(state.batch, generator=state.generator, device=gen_device).to(state.device)
                penalty = gradient_penalty(lambda x: self.D(x)[0], real_in, fake_in, eps)
                loss = loss + self.gp_weight * penalty
                out["D_gp"] = penalty.detach()
        self._update("D", loss, state.optimizers, state.scaler)
        if self.clip > 0:
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.clip, self.clip)
        out.update(D=loss.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())
        return out

    def prepare_training(self) -> None:
        """Load the VGG of the perceptual term (file and sha256 checked) when it is used."""
        if self.vgg_weight > 0:
            self._vgg(torch.device("cpu"))

    def _vgg(self, device: torch.device) -> nn.Module:
        """The perceptual network, loaded once (kept out of the module tree: frozen, not checkpointed)."""
        from medvol.models.gan2d.vgg import load_vgg

        if "_vgg_net" not in self.__dict__:
            self.__dict__["_vgg_net"] = load_vgg(self.vgg_weights, self.vgg_sha256)
        return self.__dict__["_vgg_net"].to(device)

    def _step_G(self, state: StepState) -> None:
        """G: the loss's G term on fresh fakes through the frozen D (+ fm_weight * feature matching,
        + vgg_weight * the VGG perceptual distance of the fakes to the real batch)
        (+ :attr:`mode_seeking` times :meth:`mode_seeking_loss` of the fakes)."""
        z = self.sample_latent(state.batch, state.generator, state.device)
        with state.autocast():
            fake = self.G(z)
            logit, features = self.D(self._augment(fake, state))
            loss = generator_loss(self.loss, logit)
            if self.mode_seeking > 0:
                ms = self.mode_seeking_loss(z, fake)
                state.out["G_ms"] = ms.detach()
                loss = loss + self.mode_seeking * ms
            if self.vgg_weight > 0:
                from medvol.models.gan2d.vgg import perceptual_distance

                perceptual = perceptual_distance(self._vgg(fake.device), fake, state.real)
                loss = loss + self.vgg_weight * perceptual
                state.out["G_vgg"] = perceptual.detach()
            if self.fm_weight > 0:
                with torch.no_grad():
                    _, real_features = self.D(self._augment(state.real, state))
                matching = feature_matching(features, real_features)
                loss = loss + self.fm_weight * matching
                state.out["G_fm"] = matching.detach()
        self._update("G", loss, state.optimizers, state.scaler)
        state.out["G"] = loss.detach()
