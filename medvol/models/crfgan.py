"""CRF-GAN: the HA-GAN generator trunk without G^L / D^L, plus a patch-wise mean-field CRF.

The CRF has N = S/4 nodes (16, 32, 64 at 64^3, 128^3, 256^3), cut from the generator's 2c-channel
embedding in the published layout (see :class:`PatchCRF`); node unaries are the
discriminator's logit for the volume's crop (broadcast over nodes); the only trainable parameter
is the N x N compatibility W. Its averaged node logits form, with D's, the generator's
adversarial target, with a CRF weight decaying linearly 0.5 -> 0 over the first 60,000 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from medvol.errors import MedvolError
from medvol.models.hagan import HAGANOptions
from medvol.models.networks import Generator, HighResDiscriminator
from medvol.models.system import GANSystem, StepState

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


#: How the CRF sub-step gets its inputs (:class:`CRFGAN` ``crf_forwards``).
CRF_FORWARDS = ("fresh", "reuse")


@dataclass
class CRFGANOptions(HAGANOptions):
    """Options of ``crfgan`` (``model.options``): HA-GAN's, and the CRF's (docs/models.md "CRF-GAN
    options"); defaults: the published procedure.

    Attributes:
        crf_forwards: the CRF step's inputs: "fresh" forwards as published, or "reuse" the G and
            D steps' (cheaper; :class:`CRFGAN`).
        crf_layout: the CRF's node layout, "channels" (published) or "depth" (:class:`PatchCRF`).
        crf_self_pairs: keep the CRF's self-pairs (published) or drop them.
    """

    crf_forwards: Literal["fresh", "reuse"] = "fresh"
    crf_layout: Literal["channels", "depth"] = "channels"
    crf_self_pairs: bool = True


class CRFGAN(GANSystem):
    """CRF-GAN system: ``G`` (G^A + G^H), ``D`` (D^H), ``E``, ``crf``. Build with ``build("crfgan", S)``.

    One training iteration (:meth:`train_step`) is the published one, in its order D, G, CRF, E:

    - D: BCE(D(real crop), 1) + BCE(D(fake crop), 0), the crop at a random voxel depth whose
      position D is given.
    - G: BCE(blend, 1) on fresh fakes, blend = w * CRF(fake embedding, D logit) + (1 - w) * D logit,
      w = :func:`crf_weight` (iteration); D and the CRF frozen.
    - CRF: with ``crf_forwards="fresh"`` (published) a new latent batch is drawn and G and the
      just-updated D run again on it, E encodes the whole real volume at once (its GroupNorm
      statistics cover the volume) and D scores the real crop again; then
      BCE(CRF(fake emb, D(fake)), 0) + BCE(CRF(E(real), D(real crop)), 1), only W trained.
      ``crf_forwards="reuse"`` (medvol's former step, cheaper) takes the G step's embedding and
      logit and the D step's pre-update real logit instead, and E crop by crop.
    - E: L1(G^H(E(real crop)), real crop).

    With ``num_classes > 0`` D's auxiliary head adds cross-entropy on the real labels (D step)
    and on the conditioning labels of the fakes (G step). Losses returned: D, D_real, D_fake, G,
    crf_weight, crf, E (+ D_cls, G_cls).

    Args:
        size, base_width, latent_dim, num_classes: as :func:`medvol.models.build`.
        crf_forwards: "fresh" (published) or "reuse" (see above).
        crf_layout: the CRF's node layout, "channels" (published) or "depth" (:class:`PatchCRF`).
        crf_self_pairs: keep the CRF's self-pairs (published) or drop them.
        mask_channels: K > 0: paired image + mask generation; G^H draws and D, E read 1 + K
            channels. The CRF is unchanged: it reads G's and E's 2c-channel embeddings.
        crop_depth: training crop depth in voxels; 0: S/8, as published (an option for small
            sizes, docs/learning.md: :func:`medvol.models.networks.check_crop_depth`).
        d_minibatch_std: D^H also reads :func:`medvol.models.networks.minibatch_std` (off as
            published).
    """

    name = "crfgan"
    extra = "crf"
    SUBSTEPS = ("D", "G", "crf", "E")

    def __init__(self, size: int, base_width: int = 32, latent_dim: int = 1024, num_classes: int = 0, *,
                 crf_forwards: str = "fresh", crf_layout: str = "channels", crf_self_pairs: bool = True,
                 mask_channels: int = 0, crop_depth: int = 0, d_minibatch_std: bool = False):
        super().__init__(size, base_width, latent_dim, num_classes, mask_channels, crop_depth)
        self.d_minibatch_std = bool(d_minibatch_std)
        if crf_forwards not in CRF_FORWARDS:
            raise MedvolError(f"crf_forwards: expected one of {', '.join(CRF_FORWARDS)}, got {crf_forwards!r}")
        if not isinstance(crf_self_pairs, bool):
            raise MedvolError(f"crf_self_pairs: expected true or false, got {crf_self_pairs!r}")
        self.crf_forwards = crf_forwards
        self.G = Generator(size, base_width, latent_dim, num_classes, low_branch=False, out_channels=self.channels)
        self.D = HighResDiscriminator(size, base_width, num_classes, self.channels, crop_depth, self.d_minibatch_std)
        # The published 64^3 model has no epsilon in its cosine (128^3 and 256^3 add 1e-6): a node
        # whose features are all zero (a dead ReLU block, likely in narrow models) then gives NaN.
        # medvol adds 1e-6 at every size; elsewhere the two agree to float32 rounding.
        self.crf = PatchCRF(self.geometry.emb, eps=1e-6, self_pairs=crf_self_pairs, layout=crf_layout)

    def options(self) -> dict[str, object]:
        """The build options beyond size and widths (what a checkpoint must rebuild)."""
        return {"crf_forwards": self.crf_forwards, "crf_layout": self.crf.layout,
                "crf_self_pairs": self.crf.self_pairs, "crop_depth": self.geometry.crop_depth,
                "d_minibatch_std": self.d_minibatch_std}

    def _generator_logit(self, z: torch.Tensor, state: StepState) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = crf_weight(state.iteration)
        state.out["crf_weight"] = torch.tensor(weight)
        emb = self.G.embed(z, state.labels)
        fake = self.G.render(self._crop_emb(emb, state.start))
        if self.mode_seeking > 0:
            state.keep["g_fake"] = fake
        d_gen, cls_gen = self.D(fake, state.position)
        adversarial = d_gen
        if weight > 0:
            adversarial = weight * self.crf(emb, d_gen) + (1.0 - weight) * d_gen.float()
        if self.crf_forwards == "reuse":
            # Only the CRF step needs the fake embedding now; under autocast keep it in the
            # autocast dtype (the CRF reads it with float32 accumulation) rather than in float32.
            state.keep["emb_fake"] = self._amp_cast(emb.detach(), state.amp_dtype)
            state.keep["d_fake"] = d_gen.detach()
        return adversarial, cls_gen

    def _crf_inputs(self, state: StepState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fake embedding, its D logit, real embedding, the real crop's D logit), no grad."""
        amp = state.amp_dtype
        if self.crf_forwards == "reuse":
            emb_real = self._amp_cast(self._encode_slabs(state.real), amp)
            return state.keep.pop("emb_fake"), state.keep.pop("d_fake"), emb_real, state.keep["d_real"]
        z = self.sample_latent(state.batch, state.generator, state.device)
        emb_fake = self.G.embed(z, state.labels)
        d_fake, _ = self.D(self.G.render(self._crop_emb(emb_fake, state.start)), state.position)
        emb_fake = self._amp_cast(emb_fake, amp)
        # E on the whole real volume (published); optimized mode computes the same in depth tiles.
        emb_real = self.E.forward_tiled(state.real) if self.mode == "optimized" else self.E(state.real)
        emb_real = self._amp_cast(emb_real, amp)
        d_real, _ = self.D(state.real_crop, state.position)
        return emb_fake, d_fake, emb_real, d_real

    def _step_crf(self, state: StepState) -> None:
        with state.autocast():
            with torch.no_grad():
                emb_fake, d_fake, emb_real, d_real = self._crf_inputs(state)
            loss = self._bce(self.crf(emb_fake, d_fake), 0.0) + self._bce(self.crf(emb_real, d_real), 1.0)
        self._update("crf", loss, state.optimizers, state.scaler)
        state.out["crf"] = loss.detach()
