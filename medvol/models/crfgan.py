"""CRF-GAN: the HA-GAN generator trunk without G^L / D^L, plus a patch-wise mean-field CRF.

The CRF's nodes are the S/4 depth slices of the generator's 2c-channel embedding (16, 32, 64 nodes
at 64^3, 128^3, 256^3). Node features are the flattened slices; node unaries are the
discriminator's logit for the volume's crop (broadcast over nodes); the only trainable parameter
is the N x N compatibility W. Its averaged node logits form, with D's, the generator's
adversarial target, with a CRF weight decaying linearly 0.5 -> 0 over the first 60,000 iterations.
"""

from __future__ import annotations

import torch
from torch import nn

from medvol.models.networks import Generator, HighResDiscriminator
from medvol.models.system import GANSystem, Substep

#: Mean-field iterations (10 in the paper).
CRF_ITERATIONS = 10
#: CRF weight in the generator's adversarial target: CRF_WEIGHT_START at iteration 0, decaying
#: linearly to 0 at CRF_DECAY_ITERATIONS.
CRF_WEIGHT_START = 0.5
CRF_DECAY_ITERATIONS = 60_000


def crf_weight(iteration: int) -> float:
    """0.5 * (1 - iteration / 60000), clamped at 0."""
    return CRF_WEIGHT_START * max(0.0, 1.0 - iteration / CRF_DECAY_ITERATIONS)


class PatchCRF(nn.Module):
    """Mean-field CRF over the depth slices of an embedding.

    Args:
        nodes: N (= S/4).
        iterations: mean-field iterations T.

    Forward: ``emb[B, C, N, h, w]``, ``unary[B, 1]`` -> mean node logit ``[B, 1]`` (float32).
    """

    def __init__(self, nodes: int, iterations: int = CRF_ITERATIONS):
        super().__init__()
        self.iterations = iterations
        # Scale 1/N: the pairwise sum over N nodes then starts small against the unary.
        self.compat = nn.Parameter(torch.randn(nodes, nodes) / nodes)
        self.optimized = False

    def forward(self, emb: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
        from medvol.ops import meanfield_crf

        b, n = emb.shape[0], emb.shape[2]
        # Each node's features flattened in whichever order is cheapest (cosines ignore the order):
        # (H, W, C), a view, when emb is channels_last_3d; (C, H, W) otherwise, one copy made of
        # contiguous runs of H*W values.
        if emb.is_contiguous(memory_format=torch.channels_last_3d) and not emb.is_contiguous():
            feats = emb.permute(0, 2, 3, 4, 1).reshape(b, n, -1)
        else:
            feats = emb.transpose(1, 2).reshape(b, n, -1)
        backend = "auto" if self.optimized else "torch"
        # The CRF is tiny next to the networks: run it in float32 whatever the autocast dtype. The
        # fused backends read bf16/fp16 features and accumulate in float32, so the optimized mode
        # hands them over as they are instead of making a float32 copy of the whole embedding.
        if not self.optimized:
            feats = feats.float()
        with torch.autocast(emb.device.type, enabled=False):
            logits = meanfield_crf(
                feats,
                unary.float().reshape(b, 1).expand(b, n).contiguous(),
                self.compat.float(),
                iterations=self.iterations,
                backend=backend,
            )
        return logits.mean(dim=1, keepdim=True)


class CRFGAN(GANSystem):
    """CRF-GAN system: ``G`` (G^A + G^H), ``D`` (D^H), ``E``, ``crf``. Build with ``build("crfgan", S)``."""

    name = "crfgan"
    extra = "crf"

    def __init__(self, size: int, base_width: int = 32, latent_dim: int = 1024, num_classes: int = 0):
        super().__init__(size, base_width, latent_dim, num_classes)
        self.G = Generator(size, base_width, latent_dim, num_classes, low_branch=False)
        self.D = HighResDiscriminator(size, base_width, num_classes)
        self.crf = PatchCRF(self.geometry.emb)

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
        """One published CRF-GAN iteration: D, G, E and CRF updates (in that order).

        - D: BCE on the real crop vs the fake crop at the same random depth (position fed to D).
        - G: BCE(blend, 1) with blend = w * CRF(fake embedding, D logit) + (1 - w) * D logit,
          w = :func:`crf_weight` (iteration).
        - E: L1 between the real crop and G^H(E(real crop)).
        - CRF: BCE on real embeddings (E over the real volume, crop by crop) with D's logit of the
          real crop as unary, vs the fake embedding and its D logit.
        With ``num_classes > 0`` D's auxiliary head adds cross-entropy on the real labels (D step)
        and on the conditioning labels of the fakes (G step).

        Args:
            real: ``[B, 1, S, S, S]`` in [-1, 1].
            optimizers: from :meth:`make_optimizers`.
            iteration: 0-based global iteration (CRF weight schedule).
            labels: ``[B]`` class ids (class-conditional only); fakes are generated with them too.
            amp_dtype: autocast dtype on ``real.device.type`` or None for float32.
            scaler: GradScaler for float16, or None; ``update()`` is called once at the end.
            substep: ``substep(name)`` context manager around "D", "G", "E", "crf".
            generator: RNG for the crop position and the latents.

        Returns:
            Detached scalar losses: D, D_real, D_fake, G, E, crf, crf_weight (+ D_cls, G_cls).
        """
        prepared = self._prepare_step(real, labels, substep, generator)
        real, labels, substep, start, real_crop, position = prepared
        batch, device = real.shape[0], real.device
        autocast = lambda: self._autocast(device, amp_dtype)  # noqa: E731
        out: dict[str, torch.Tensor] = {}
        try:
            with substep("D"):
                self._train_only("D")
                with autocast():
                    with torch.no_grad():
                        z = self.sample_latent(batch, generator, device)
                        fake = self.G.render(self._crop_emb(self.G.embed(z, labels), start))
                    d_real, cls_real = self.D(real_crop, position)
                    d_fake, _ = self.D(fake, position)
                    del fake  # no grad: nothing needs it through the later sub-steps
                    loss_real, loss_fake = self._bce(d_real, 1.0), self._bce(d_fake, 0.0)
                    loss_d = loss_real + loss_fake
                    loss_d = self._add_class_loss(loss_d, cls_real, labels, out, "D_cls")
                self._update("D", loss_d, optimizers, scaler)
            out.update(D=loss_d.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())

            weight = crf_weight(iteration)
            with substep("G"):
                self._train_only("G")
                z = self.sample_latent(batch, generator, device)
                with autocast():
                    emb = self.G.embed(z, labels)
                    d_gen, cls_gen = self.D(self.G.render(self._crop_emb(emb, start)), position)
                    adversarial = d_gen
                    if weight > 0:
                        adversarial = weight * self.crf(emb, d_gen) + (1.0 - weight) * d_gen.float()
                    loss_g = self._bce(adversarial, 1.0)
                    loss_g = self._add_class_loss(loss_g, cls_gen, labels, out, "G_cls")
                self._update("G", loss_g, optimizers, scaler)
            out.update(G=loss_g.detach(), crf_weight=torch.tensor(weight))
            # Only the CRF step needs the fake embedding now; under autocast keep it in the autocast
            # dtype (the CRF reads it with float32 accumulation) rather than in float32.
            emb = self._amp_cast(emb.detach(), amp_dtype)

            with substep("E"):
                out["E"] = self._encoder_step(real_crop, optimizers, amp_dtype, scaler)

            with substep("crf"):
                self._train_only("crf")
                with autocast():
                    with torch.no_grad():
                        emb_real = self._amp_cast(self._encode_slabs(real), amp_dtype)
                    logit_real = self.crf(emb_real, d_real.detach())
                    logit_fake = self.crf(emb, d_gen.detach())
                    loss_crf = self._bce(logit_real, 1.0) + self._bce(logit_fake, 0.0)
                self._update("crf", loss_crf, optimizers, scaler)
            out["crf"] = loss_crf.detach()
        finally:
            self._unfreeze()
        if scaler is not None:
            scaler.update()
        return out
