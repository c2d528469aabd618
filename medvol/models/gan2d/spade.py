"""``spade``: mask-conditioned generation with spatially-adaptive normalisation (Park et al. 2019).

G maps a random latent ``z`` and a mask to an image: a linear layer to a 4x4 map, then SPADE
residual blocks with nearest x2 upsampling between them, each of whose normalisations is
modulated pixel by pixel by the mask (the paper's encoder-free variant with a random latent).
D is the pix2pixHD multi-scale patch discriminator (two scales) on (image, mask) pairs. Hinge loss,
D feature matching (weight 10) for G, spectral norm on every layer, TTUR (G 1e-4, D 4e-4, betas
(0, 0.999)). The paper's VGG perceptual loss is left out (no pretrained weights here). All the
choices the paper leaves open are listed in docs/models2d.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.gan2d.conditional import ConditionalGANSystem2D
from medvol.models.gan2d.losses import discriminator_loss, generator_loss
from medvol.models.gan2d.nets import apply_spectral_norm
from medvol.models.gan import StepState
from medvol.models.options import check_ranges



@dataclass
class SPADEOptions:
    """Options of ``spade`` (``model.options``); defaults: the paper's.

    Attributes:
        channels: the image and its mask (2: spade draws images from given masks).
        norm: G's parameter-free normalisation, "batch" or "instance".
        d_scales: discriminator scales (1 to 3).
        fm_l1_weight: weight of D feature matching (L1) in G's loss.
    """

    channels: int = 2
    norm: Literal["batch", "instance"] = "batch"
    d_scales: int = 2
    fm_l1_weight: float = 10.0

    def __post_init__(self) -> None:
        check_ranges(self, positive=("channels",), non_negative=("fm_l1_weight",))
#: G's block widths at 256^2 in units of the base width c (the paper: 1024 ... 64 with c = 64);
#: smaller images drop the first (4x4-side) blocks, so the last blocks keep their widths.
G_MULTIPLES = (16, 16, 16, 8, 4, 2, 1)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``norm(x) * gamma(m) + beta(m)``, per pixel.

    ``norm`` is parameter-free (BatchNorm or InstanceNorm without affine); the mask ``m`` is
    area-resized to the feature's side, embedded by a shared 3x3 conv + ReLU (``hidden`` channels)
    and mapped by two 3x3 convs to ``gamma`` and ``beta`` ``[B, C, H, W]``. The mask convs pad by
    replication: zero padding would invent a value 0, which is no label, along the border. The
    gamma conv's bias starts at 1 so that a fresh layer is close to the plain normalisation.

    Args:
        channels: C of the normalised features ``x[B, C, H, W]``.
        hidden: width of the shared mask embedding (128 in the paper).
        norm: "batch" or "instance".
    """

    def __init__(self, channels: int, hidden: int, norm: str):
        super().__init__()
        self.norm = (nn.BatchNorm2d(channels, affine=False) if norm == "batch"
                     else nn.InstanceNorm2d(channels, affine=False))
        self.shared = nn.Conv2d(1, hidden, 3, padding=1, padding_mode="replicate")
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1, padding_mode="replicate")
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1, padding_mode="replicate")
        nn.init.ones_(self.gamma.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x[B, C, H, W]``, ``mask[B, 1, S, S]`` (S a multiple of H) -> ``[B, C, H, W]``."""
        # Area averaging keeps a small nodule visible (as a partial value) at the coarse layers,
        # where nearest resizing would drop it or keep it by where the sampling grid falls.
        m = F.interpolate(mask.to(x.dtype), size=x.shape[-2:], mode="area")
        h = F.relu(self.shared(m))
        return self.norm(x) * self.gamma(h) + self.beta(h)


class SPADEResBlock(nn.Module):
    """SPADE, ReLU, conv 3x3, SPADE, ReLU, conv 3x3, plus the shortcut.

    The shortcut is the identity when the widths agree and learned otherwise (SPADE, ReLU, conv
    3x3, the main branch's unit). The middle width is ``c_out`` (the blocks never widen).
    """

    def __init__(self, c_in: int, c_out: int, hidden: int, norm: str):
        super().__init__()
        self.norm_0, self.conv_0 = SPADE(c_in, hidden, norm), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm_1, self.conv_1 = SPADE(c_out, hidden, norm), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.learned = c_in != c_out
        if self.learned:
            self.norm_s, self.conv_s = SPADE(c_in, hidden, norm), nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x[B, c_in, H, W]`` -> ``[B, c_out, H, W]``."""
        shortcut = self.conv_s(F.relu(self.norm_s(x, mask))) if self.learned else x
        h = self.conv_0(F.relu(self.norm_0(x, mask)))
        return shortcut + self.conv_1(F.relu(self.norm_1(h, mask)))


def generator_widths(size: int, base_width: int) -> list[int]:
    """Block widths from the 4x4 block up to the S x S one: the last log2(S) - 1 of
    :data:`G_MULTIPLES` times c."""
    blocks = int(math.log2(size)) - 1
    return [base_width * k for k in G_MULTIPLES[len(G_MULTIPLES) - blocks:]]


class SPADEGenerator(nn.Module):
    """``(z[B, L], mask[B, 1, S, S]) -> image[B, 1, S, S]`` in [-1, 1].

    Linear to ``w0 x 4 x 4``; a SPADE residual block per side 4, 8, ..., S with nearest x2
    upsampling between them; LeakyReLU 0.2, conv 3x3 to one channel, tanh.
    """

    def __init__(self, size: int, latent_dim: int, base_width: int, hidden: int, norm: str):
        super().__init__()
        w = generator_widths(size, base_width)
        self.fc = nn.Linear(latent_dim, w[0] * 16)
        self.blocks = nn.ModuleList(SPADEResBlock(a, b, hidden, norm) for a, b in zip(w[:1] + w[:-1], w))
        self.out = nn.Conv2d(w[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            if i:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, mask)
        # The blocks end on a conv (pre-activation design), so an activation precedes the output conv.
        return torch.tanh(self.out(F.leaky_relu(x, 0.2)))


class PatchDiscriminator(nn.Module):
    """pix2pixHD's patch D: conv 4x4 stride 2 (c), then 2c and 4c (stride 2) and 8c (stride 1) with
    InstanceNorm, LeakyReLU 0.2 throughout, and a conv 4x4 to one logit per patch.

    Padding 2 (pix2pixHD's ``ceil((k - 1) / 2)``) keeps the map positive at the second scale of a
    32^2 image. Biases only where no norm follows (the first and the last conv).
    """

    def __init__(self, channels: int, base_width: int):
        super().__init__()
        c = base_width
        self.layers = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels, c, 4, 2, 2), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Conv2d(c, 2 * c, 4, 2, 2, bias=False), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Conv2d(2 * c, 4 * c, 4, 2, 2, bias=False), nn.InstanceNorm2d(4 * c), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Conv2d(4 * c, 8 * c, 4, 1, 2, bias=False), nn.InstanceNorm2d(8 * c), nn.LeakyReLU(0.2)),
        ])
        self.head = nn.Conv2d(8 * c, 1, 4, 1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x[B, 2, H, W]`` -> (patch logits ``[B, 1, h, w]``, the four hidden feature maps)."""
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return self.head(x), features


class MultiScaleDiscriminator(nn.Module):
    """One :class:`PatchDiscriminator` per scale; scale k sees the input average-pooled k times
    (3x3, stride 2, padding 1, padding left out of the average, as pix2pixHD)."""

    def __init__(self, channels: int, base_width: int, scales: int):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(channels, base_width) for _ in range(scales))

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """``x[B, 2, S, S]`` -> per scale (logits, features)."""
        outputs = []
        for k, net in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(net(x))
        return outputs


def paired_feature_matching(fake: list[tuple[torch.Tensor, list[torch.Tensor]]],
                            real: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> torch.Tensor:
    """pix2pixHD's feature matching: sum over scales and hidden layers of the mean absolute
    difference between D's features of a fake and of the real image with the same mask.

    Pairs are compared sample by sample (not by batch means): each fake has its real counterpart.
    """
    terms = [(f.float() - r.float()).abs().mean()
             for (_, fake_features), (_, real_features) in zip(fake, real)
             for f, r in zip(fake_features, real_features)]
    return torch.stack(terms).sum()


class SPADEModel(ConditionalGANSystem2D):
    """SPADE: ``build("spade", size, norm=..., d_scales=..., fm_l1_weight=...)``.

    Args:
        size: image side S (32, 64, 128, 256).
        base_width: c; G's blocks are 16c ... c wide (the last log2(S) - 1 of 16c, 16c, 16c, 8c, 4c,
            2c, c), the mask embedding 2c, D's layers c, 2c, 4c, 8c (the paper: c = 64).
        latent_dim: length of z (256 in the paper).
        channels: must be 2 (image and mask).
        norm: G's parameter-free normalisation, "batch" (the paper's) or "instance".
        d_scales: discriminator scales (2 in the paper).
        fm_l1_weight: weight of D feature matching in G's loss (10 in the paper).

    Example:
        >>> from medvol.models import build
        >>> system = build("spade", 32, base_width=4, latent_dim=8)
        >>> masks = -torch.ones(2, 1, 32, 32)
        >>> system.generate(system.sample_latent(2), masks=masks).shape
        torch.Size([2, 2, 32, 32])
    """

    name = "spade"
    loss = "hinge"
    lr = {"D": 4e-4, "G": 1e-4}
    betas = (0.0, 0.999)

    def __init__(self, size: int, base_width: int = 64, latent_dim: int = 256, num_classes: int = 0, *,
                 channels: int = 2, norm: str = "batch", d_scales: int = 2, fm_l1_weight: float = 10.0):
        super().__init__(size, base_width, latent_dim, num_classes, channels)
        if norm not in ("batch", "instance"):
            raise MedvolError(f"norm: spade's generator normalisation is batch or instance, not {norm!r}")
        if isinstance(d_scales, bool) or not isinstance(d_scales, int) or not 1 <= d_scales <= 3:
            raise MedvolError(f"d_scales: expected 1, 2 or 3 discriminator scales, got {d_scales!r}")
        if isinstance(fm_l1_weight, bool) or not isinstance(fm_l1_weight, (int, float)) or fm_l1_weight < 0:
            raise MedvolError(f"fm_l1_weight: expected a number >= 0, got {fm_l1_weight!r}")
        self.fm_weight = float(fm_l1_weight)
        self._options = {"channels": channels, "norm": norm, "d_scales": d_scales, "fm_l1_weight": self.fm_weight}
        self.G = SPADEGenerator(size, latent_dim, base_width, 2 * base_width, norm)
        self.D = MultiScaleDiscriminator(channels, base_width, d_scales)
        # On the meta device (parameter counting: medvol info) spectral norm is left off: it adds no
        # parameters, and its 15 initial power iterations on meta tensors take tens of seconds.
        if not next(self.G.parameters()).is_meta:
            apply_spectral_norm(self.G)
            apply_spectral_norm(self.D)

    def options(self) -> dict[str, object]:
        return dict(self._options)

    def _render(self, z: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.G(z, masks)

    def _step_D(self, state: StepState) -> None:
        """D: hinge on the real pairs and on (G(z, mask), mask), summed over the scales."""
        mask = state.real[:, 1:]
        with state.autocast():
            with torch.no_grad():
                fake = self.G(self.sample_latent(state.batch, state.generator, state.device), mask)
            real_out, fake_out = self.D(state.real), self.D(self.pair(fake, mask))
            terms = [discriminator_loss(self.loss, r.flatten(), f.flatten())
                     for (r, _), (f, _) in zip(real_out, fake_out)]
            loss_real, loss_fake = sum(t[0] for t in terms), sum(t[1] for t in terms)
            loss = loss_real + loss_fake
        self._update("D", loss, state.optimizers, state.scaler)
        state.out.update(D=loss.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())

    def _step_G(self, state: StepState) -> None:
        """G: hinge G term over the scales + ``fm_l1_weight`` * feature matching against the reals."""
        mask = state.real[:, 1:]
        z = self.sample_latent(state.batch, state.generator, state.device)
        with state.autocast():
            fake_out = self.D(self.pair(self.G(z, mask), mask))
            loss = sum(generator_loss(self.loss, logits.flatten()) for logits, _ in fake_out)
            if self.fm_weight > 0:
                with torch.no_grad():
                    real_out = self.D(state.real)
                matching = paired_feature_matching(fake_out, real_out)
                loss = loss + self.fm_weight * matching
                state.out["G_fm"] = matching.detach()
        self._update("G", loss, state.optimizers, state.scaler)
        state.out["G"] = loss.detach()
