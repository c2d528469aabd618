"""HA-GAN (Sun et al.): hierarchical GAN with a high-resolution crop branch and a low-resolution
full-volume branch, an encoder and a sub-encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medvol.models.networks import Generator, HighResDiscriminator, LowResDiscriminator, SubEncoder
from medvol.models.system import GANSystem, StepState


@dataclass
class HAGANOptions:
    """Options of ``hagan`` (``model.options``); defaults: the published procedure.

    Attributes:
        crop_depth: training crop depth in voxels; 0: S/8 as published, else a multiple of S/8
            up to S, the whole volume (:func:`medvol.models.networks.check_crop_depth`;
            docs/learning.md).
        d_minibatch_std: a minibatch standard-deviation feature in D (off as published;
            docs/learning.md).
    """

    crop_depth: int = 0
    d_minibatch_std: bool = False


class HADiscriminator(nn.Module):
    """D = (D^H on the crop with its position + D^L on the (S/4)^3 volume), logits averaged.

    Forward: ``crop[B, C, S/8, S, S]``, ``low[B, C, S/4, S/4, S/4]``, ``position[B, 1]`` ->
    ``(logit[B, 1], class_logits[B, K] or None)``; C = 1, or 1 + K mask channels.
    """

    def __init__(self, size: int, base_width: int, num_classes: int, in_channels: int = 1, crop_depth: int = 0,
                 minibatch_std: bool = False):
        super().__init__()
        self.high = HighResDiscriminator(size, base_width, num_classes, in_channels, crop_depth, minibatch_std)
        self.low = LowResDiscriminator(size, base_width, num_classes, in_channels, minibatch_std)

    def forward(
        self, crop: torch.Tensor, low: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logit_h, cls_h = self.high(crop, position)
        logit_l, cls_l = self.low(low)
        cls = None if cls_h is None else (cls_h + cls_l) / 2
        return (logit_h + logit_l) / 2, cls


def downsample_low(real: torch.Tensor) -> torch.Tensor:
    """Real low-resolution volume for D^L: nearest x1/4, as published. ``[B,C,S,S,S] -> [B,C,S/4,...]``.

    Nearest neighbour picks the same voxel in every channel, so a paired model's mask channels stay
    one-hot (-1 / +1) and aligned with the image."""
    return F.interpolate(real, scale_factor=0.25, mode="nearest")


class HAGAN(GANSystem):
    """HA-GAN system: ``G`` (G^A + G^H + G^L), ``D`` (D^H + D^L), ``E``, ``sub_E``.

    Build with ``build("hagan", S)``. :meth:`encode_latent` gives the sub-encoder's latent, so
    ``generate(encode_latent(x))`` is the global reconstruction path. With ``mask_channels`` K > 0
    (paired image + mask generation) G^H and G^L draw, and E, D^H and D^L read, 1 + K channels;
    the crop and the low-resolution volume cut every channel alike. ``crop_depth``: the training
    crop depth in voxels, 0 for S/8 as published (:func:`medvol.models.networks.check_crop_depth`);
    ``d_minibatch_std``: D^H and D^L also read :func:`medvol.models.networks.minibatch_std` (off
    as published).
    """

    name = "hagan"
    extra = "sub_E"

    def __init__(self, size: int, base_width: int = 32, latent_dim: int = 1024, num_classes: int = 0,
                 mask_channels: int = 0, crop_depth: int = 0, d_minibatch_std: bool = False):
        super().__init__(size, base_width, latent_dim, num_classes, mask_channels, crop_depth)
        self.G = Generator(size, base_width, latent_dim, num_classes, low_branch=True, out_channels=self.channels)
        self.D = HADiscriminator(size, base_width, num_classes, self.channels, crop_depth, bool(d_minibatch_std))
        self.d_minibatch_std = bool(d_minibatch_std)
        self.sub_E = SubEncoder(size, base_width, latent_dim)

    def options(self) -> dict[str, object]:
        """The build options beyond size and widths (what a checkpoint must rebuild)."""
        return {"crop_depth": self.geometry.crop_depth, "d_minibatch_std": self.d_minibatch_std}

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Real volume ``[B, C, S, S, S]`` -> latent ``[B, latent_dim]`` (E crop by crop, then sub_E)."""
        emb = self.encode(x)
        with self._eval():
            return self.sub_E(emb)

    #: Published order: D, G, E, sub-encoder. Losses: D, D_real, D_fake, G, E, sub_E (+ D_cls, G_cls).
    SUBSTEPS = ("D", "G", "E", "sub_E")

    def _fake(
        self, z: torch.Tensor, labels: torch.Tensor | None, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(G^H crop at voxel ``start``, G^L low-resolution volume) of ``z``."""
        emb = self.G.embed(z, labels)
        return self.G.render(self._crop_emb(emb, start)), self.G.render_low(emb)

    _fake_inputs = _fake

    def _real_low(self, state: StepState) -> torch.Tensor:
        if "real_low" not in state.keep:
            state.keep["real_low"] = downsample_low(state.real)
        return state.keep["real_low"]

    def _real_inputs(self, state: StepState) -> tuple[torch.Tensor, ...]:
        """(real crop, real volume nearest-downsampled x1/4) for D^H + D^L."""
        return state.real_crop, self._real_low(state)

    def _sub_encoder_loss(
        self,
        emb_real: torch.Tensor,
        labels: torch.Tensor | None,
        start: int,
        real_crop: torch.Tensor,
        real_low: torch.Tensor,
    ) -> torch.Tensor:
        """(L1(G^H crop of sub_E(emb), real crop) + L1(G^L(sub_E(emb)), real low-res)) / 2.

        A function of its own so that the reconstructions are not held by the caller's frame
        through the backward pass (only what autograd saved stays alive).
        """
        rec, rec_low = self._fake(self.sub_E(emb_real), labels, start)
        loss = F.l1_loss(rec.float(), real_crop.float())
        return (loss + F.l1_loss(rec_low.float(), real_low.float())) / 2

    def _step_sub_E(self, state: StepState) -> None:
        """sub_E: z = sub_E(E(real) crop by crop, no grad into E); the loss of
        :meth:`_sub_encoder_loss`, gradients through the frozen G."""
        with state.autocast():
            with torch.no_grad():
                emb_real = self._amp_cast(self._encode_slabs(state.real), state.amp_dtype)
            loss = self._sub_encoder_loss(emb_real, state.labels, state.start, state.real_crop,
                                          self._real_low(state))
        self._update("sub_E", loss, state.optimizers, state.scaler)
        state.out["sub_E"] = loss.detach()
