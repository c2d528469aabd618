"""CRF-GAN: the HA-GAN generator trunk without G^L / D^L, plus a patch-wise mean-field CRF.

The CRF has N = S/4 nodes (16, 32, 64 at 64^3, 128^3, 256^3), cut from the generator's 2c-channel
embedding in the published layout (see :class:`PatchCRF`); node unaries are the
discriminator's logit for the volume's crop (broadcast over nodes); the only trainable parameter
is the N x N compatibility W. Its averaged node logits form, with D's, the generator's
adversarial target, with a CRF weight decaying linearly 0.5 -> 0 over the first 60,000 iterations.
"""

from __future__ import annotations

import torch
from torch import nn

from medvol.errors import MedvolError
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
    """Mean-field CRF over N nodes of the generator's (or encoder's) embedding.

    Node layout ``"channels"`` is the published one: the first N depth slices of the contiguous
    ``[B, C, D, H, W]`` embedding flattened and cut into N equal rows, so with C = 64 a node is a
    block of C/N consecutive channels over those slices (not a depth slice). ``"depth"`` (medvol's
    former choice) makes node i the i-th depth slice, all channels. The compatibility W starts at
    zeros and the cosine adds ``eps`` to the norm product, as the published code does (1e-6, none in
    its 64^3 model); self-pairs are included unless ``self_pairs=False``.

    Args:
        nodes: N (= S/4).
        iterations: mean-field iterations T.
        eps: added to |f_i||f_j| in the cosine.
        self_pairs: keep P_ii = Wsym_ii (published) or zero it.
        layout: "channels" (published) or "depth".

    Forward: ``emb[B, C, D >= N, h, w]``, ``unary[B, 1]`` -> mean node logit ``[B, 1]`` (float32).
    """

    LAYOUTS = ("channels", "depth")

    def __init__(self, nodes: int, iterations: int = CRF_ITERATIONS, *, eps: float = 1e-6,
                 self_pairs: bool = True, layout: str = "channels"):
        super().__init__()
        if layout not in self.LAYOUTS:
            raise MedvolError(f"crf layout: expected one of {', '.join(self.LAYOUTS)}, got {layout!r}")
        self.iterations, self.eps, self.self_pairs, self.layout = iterations, eps, self_pairs, layout
        self.compat = nn.Parameter(torch.zeros(nodes, nodes))
        self.optimized = False

    def node_features(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, C, D, h, w]`` -> ``[B, N, F]`` node features in the chosen layout."""
        b, n = emb.shape[0], self.compat.shape[0]
        if emb.shape[2] < n:
            raise MedvolError(f"crf: embedding has {emb.shape[2]} depth slices, fewer than {n} nodes")
        emb = emb[:, :, :n]
        if self.layout == "channels":
            # The published reshape reads the contiguous (C, D, H, W) order; for a channels_last
            # embedding this is one copy, made so that the nodes are the same whatever the layout.
            return emb.contiguous().reshape(b, n, -1)
        # Depth slab: cosines ignore the order inside a node, so take the cheapest flattening.
        if emb.is_contiguous(memory_format=torch.channels_last_3d) and not emb.is_contiguous():
            return emb.permute(0, 2, 3, 4, 1).reshape(b, n, -1)
        return emb.transpose(1, 2).reshape(b, n, -1)

    def forward(self, emb: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
        from medvol.ops import meanfield_crf

        feats = self.node_features(emb)
        b, n = feats.shape[:2]
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
                self_pairs=self.self_pairs,
                eps=self.eps,
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
        # The published 64^3 model has no epsilon in its cosine (128^3 and 256^3 add 1e-6): a node
        # whose features are all zero (a dead ReLU block, likely in narrow models) then gives NaN.
        # medvol adds 1e-6 at every size; elsewhere the two agree to float32 rounding.
        self.crf = PatchCRF(self.geometry.emb, eps=1e-6)

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
