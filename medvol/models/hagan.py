"""HA-GAN (Sun et al.): hierarchical GAN with a high-resolution crop branch and a low-resolution
full-volume branch, an encoder and a sub-encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvol.models.networks import Generator, HighResDiscriminator, LowResDiscriminator, SubEncoder
from medvol.models.system import GANSystem, Substep


class HADiscriminator(nn.Module):
    """D = (D^H on the crop with its position + D^L on the (S/4)^3 volume), logits averaged.

    Forward: ``crop[B, 1, S/8, S, S]``, ``low[B, 1, S/4, S/4, S/4]``, ``position[B, 1]`` ->
    ``(logit[B, 1], class_logits[B, K] or None)``.
    """

    def __init__(self, size: int, base_width: int, num_classes: int):
        super().__init__()
        self.high = HighResDiscriminator(size, base_width, num_classes)
        self.low = LowResDiscriminator(size, base_width, num_classes)

    def forward(
        self, crop: torch.Tensor, low: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logit_h, cls_h = self.high(crop, position)
        logit_l, cls_l = self.low(low)
        cls = None if cls_h is None else (cls_h + cls_l) / 2
        return (logit_h + logit_l) / 2, cls


def downsample_low(real: torch.Tensor) -> torch.Tensor:
    """Real low-resolution volume for D^L: nearest x1/4, as published. ``[B,1,S,S,S] -> [B,1,S/4,...]``."""
    return F.interpolate(real, scale_factor=0.25, mode="nearest")


class HAGAN(GANSystem):
    """HA-GAN system: ``G`` (G^A + G^H + G^L), ``D`` (D^H + D^L), ``E``, ``sub_E``.

    Build with ``build("hagan", S)``. :meth:`encode_latent` gives the sub-encoder's latent, so
    ``generate(encode_latent(x))`` is the global reconstruction path.
    """

    name = "hagan"
    extra = "sub_E"

    def __init__(self, size: int, base_width: int = 32, latent_dim: int = 1024, num_classes: int = 0):
        super().__init__(size, base_width, latent_dim, num_classes)
        self.G = Generator(size, base_width, latent_dim, num_classes, low_branch=True)
        self.D = HADiscriminator(size, base_width, num_classes)
        self.sub_E = SubEncoder(size, base_width, latent_dim)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Real volume ``[B, 1, S, S, S]`` -> latent ``[B, latent_dim]`` (E crop by crop, then sub_E)."""
        emb = self.encode(x)
        with self._eval():
            return self.sub_E(emb)

    def _fake(
        self, z: torch.Tensor, labels: torch.Tensor | None, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.G.embed(z, labels)
        return self.G.render(self._crop_emb(emb, start)), self.G.render_low(emb)

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
        """One published HA-GAN iteration: D, G, E and sub-encoder updates (in that order).

        - D: BCE on (real crop, real low-res) vs (fake crop, G^L volume) at the same random depth.
        - G: BCE(D(fake), 1).
        - E: L1 between the real crop and G^H(E(real crop)).
        - sub_E: z = sub_E(E(real) crop by crop, no grad into E); loss = (L1(G^H crop of z, real
          crop) + L1(G^L(z), real low-res)) / 2, gradients through the frozen G.
        With ``num_classes > 0`` the auxiliary heads add cross-entropy (real labels in the D step,
        the conditioning labels of the fakes in the G step).

        Args and returns: as :meth:`medvol.models.crfgan.CRFGAN.train_step`; ``iteration`` is
        unused by HA-GAN. Losses: D, D_real, D_fake, G, E, sub_E (+ D_cls, G_cls).
        """
        prepared = self._prepare_step(real, labels, substep, generator)
        real, labels, substep, start, real_crop, position = prepared
        batch, device = real.shape[0], real.device
        real_low = downsample_low(real)
        autocast = lambda: self._autocast(device, amp_dtype)  # noqa: E731
        out: dict[str, torch.Tensor] = {}
        try:
            with substep("D"):
                self._train_only("D")
                with autocast():
                    with torch.no_grad():
                        z = self.sample_latent(batch, generator, device)
                        fake, fake_low = self._fake(z, labels, start)
                    d_real, cls_real = self.D(real_crop, real_low, position)
                    d_fake, _ = self.D(fake, fake_low, position)
                    del fake, fake_low  # no grad: nothing needs them through the later sub-steps
                    loss_real, loss_fake = self._bce(d_real, 1.0), self._bce(d_fake, 0.0)
                    loss_d = loss_real + loss_fake
                    loss_d = self._add_class_loss(loss_d, cls_real, labels, out, "D_cls")
                self._update("D", loss_d, optimizers, scaler)
            out.update(D=loss_d.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())

            with substep("G"):
                self._train_only("G")
                z = self.sample_latent(batch, generator, device)
                with autocast():
                    d_gen, cls_gen = self.D(*self._fake(z, labels, start), position)
                    loss_g = self._bce(d_gen, 1.0)
                    loss_g = self._add_class_loss(loss_g, cls_gen, labels, out, "G_cls")
                self._update("G", loss_g, optimizers, scaler)
            out["G"] = loss_g.detach()

            with substep("E"):
                out["E"] = self._encoder_step(real_crop, optimizers, amp_dtype, scaler)

            with substep("sub_E"):
                self._train_only("sub_E")
                with autocast():
                    with torch.no_grad():
                        emb_real = self._amp_cast(self._encode_slabs(real), amp_dtype)
                    loss_sub = self._sub_encoder_loss(emb_real, labels, start, real_crop, real_low)
                self._update("sub_E", loss_sub, optimizers, scaler)
            out["sub_E"] = loss_sub.detach()
        finally:
            self._unfreeze()
        if scaler is not None:
            scaler.update()
        return out
