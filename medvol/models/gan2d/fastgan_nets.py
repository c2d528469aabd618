"""FastGAN's networks (Liu et al., 2021, "Towards Faster and Stabilized GAN Training for
High-fidelity Few-shot Image Synthesis"), written from the paper's text and figures.

- G: z as a 1x1 map, a 4x4 transposed conv to 4x4, then one upsampling block per doubling
  (nearest x2, conv 3x3, BatchNorm, GLU), skip-layer excitation (SLE) from a low-resolution map onto
  a high-resolution one, conv 3x3 and tanh to the image.
- D: a conv stem, residual downsampling blocks to 8x8, a head giving a 5x5 map of real/fake logits;
  two small decoders reconstruct the (downsampled) input from D's 8x8 map and one quadrant of the
  input from the matching quadrant of D's 16x16 map (the self-supervision).

Widths are ``c * clamp(64 / r, 1/2, 16)`` at resolution r (c: ``base_width``), in G, D and the
decoders: 16c at 4x4, halving per doubling, never below c/2. The paper's figures omit the widths;
this rule and the other choices the paper leaves open are listed in docs/models2d.md.

Shapes: G maps ``z[B, latent]`` to ``x[B, C, S, S]`` in [-1, 1]; D maps ``x`` to
``(logits[B, 25], features[B, F])`` (a patch of 5x5 logits per image).
"""

from __future__ import annotations

import torch
from torch import nn


def width(resolution: int, base_width: int) -> int:
    """Channels at a ``resolution`` x ``resolution`` map: ``c * clamp(64 / r, 1/2, 16)``."""
    return min(16 * base_width, max(base_width // 2, 64 * base_width // resolution))


def sle_pairs(size: int) -> list[tuple[int, int]]:
    """``(low, high)`` resolutions joined by an SLE module in G at image side ``size``.

    The paper's pairs (at 1024^2) are 8 -> 128, 16 -> 256, 32 -> 512: the low map is 16x smaller.
    Those that fit are kept (128: 8 -> 128; 256: 8 -> 128, 16 -> 256). The tiny sizes have no such
    pair; there the one SLE joins G's first map to its last (32: 4 -> 32; 64: 4 -> 64).
    """
    pairs = [(r, 16 * r) for r in (8, 16, 32) if 16 * r <= size]
    return pairs or [(4, size)]


def decoder_sides(size: int) -> tuple[int, int]:
    """Output sides of the whole-image and the quadrant decoder: ``min(128, S)``, ``min(128, S/2)``.

    The paper decodes to 128x128 at 1024^2; capping at the target's own side means a target is
    only ever area-downsampled, never interpolated upwards.
    """
    return min(128, size), min(128, size // 2)


class UpBlock(nn.Sequential):
    """Nearest x2, conv 3x3 to ``2 * out`` channels (no bias: BatchNorm follows), BatchNorm, GLU.

    ``[B, in, r, r] -> [B, out, 2r, 2r]``; GLU halves the channels: ``a * sigmoid(b)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(in_channels, 2 * out_channels, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(2 * out_channels), nn.GLU(dim=1))


class SkipLayerExcitation(nn.Module):
    """SLE: ``y = x_high * sigmoid(conv1x1(LeakyReLU_0.1(conv4x4(pool_4x4(x_low)))))``.

    ``x_low[B, C_low, r, r]`` (r >= 4) is average-pooled to 4x4, a 4x4 conv (valid) takes it to
    1x1 with ``C_high`` channels, LeakyReLU 0.1, a 1x1 conv to ``C_high``, and the sigmoid gate
    ``[B, C_high, 1, 1]`` in (0, 1) multiplies ``x_high[B, C_high, R, R]`` channel-wise.
    """

    def __init__(self, low_channels: int, high_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.squeeze = nn.Conv2d(low_channels, high_channels, 4, 1, 0)
        self.act = nn.LeakyReLU(0.1)
        self.excite = nn.Conv2d(high_channels, high_channels, 1)

    def gate(self, x_low: torch.Tensor) -> torch.Tensor:
        """The channel gate ``[B, C_high, 1, 1]``, each entry in (0, 1)."""
        return torch.sigmoid(self.excite(self.act(self.squeeze(self.pool(x_low)))))

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        return x_high * self.gate(x_low)


class FastGANGenerator(nn.Module):
    """z -> 4x4 -> ... -> S x S with SLE at :func:`sle_pairs`; one conv per resolution (the paper)."""

    def __init__(self, size: int, latent_dim: int, base_width: int, channels: int):
        super().__init__()
        c = base_width
        self.size = size
        # The 4x4 transposed conv feeds BatchNorm + GLU like every upsampling block.
        self.stem = nn.Sequential(nn.ConvTranspose2d(latent_dim, 2 * width(4, c), 4, 1, 0, bias=False),
                                  nn.BatchNorm2d(2 * width(4, c)), nn.GLU(dim=1))
        self.resolutions = [2 ** k for k in range(3, size.bit_length())]  # 8, 16, ..., S
        self.blocks = nn.ModuleList(UpBlock(width(r // 2, c), width(r, c)) for r in self.resolutions)
        self.pairs = sle_pairs(size)
        self.sle = nn.ModuleDict({str(high): SkipLayerExcitation(width(low, c), width(high, c))
                                  for low, high in self.pairs})
        self.to_image = nn.Sequential(nn.Conv2d(width(size, c), channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z.reshape(z.shape[0], -1, 1, 1))
        low_of = {high: low for low, high in self.pairs}
        kept = {4: x} if 4 in low_of.values() else {}
        for r, block in zip(self.resolutions, self.blocks):
            x = block(x)
            if r in low_of:
                x = self.sle[str(r)](kept.pop(low_of[r]), x)
            if r in low_of.values():
                kept[r] = x
        return self.to_image(x)


class DownBlock(nn.Module):
    """Residual halving ``[B, a, r, r] -> [B, b, r/2, r/2]``, the mean of two paths:

    main: conv 4x4 stride 2, BatchNorm, LeakyReLU 0.2, conv 3x3, BatchNorm, LeakyReLU 0.2;
    shortcut: average-pool 2x2, conv 1x1, BatchNorm, LeakyReLU 0.2. The mean (not the sum) keeps
    the activations' scale from growing over the five blocks at 256^2.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2), nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.main(x) + self.shortcut(x))


class SimpleDecoder(nn.Sequential):
    """``[B, in, 8, 8] -> [B, C, side, side]`` in [-1, 1]: an :class:`UpBlock` per doubling from 8
    (four to 128, as the paper), then conv 3x3 to the image channels and tanh."""

    def __init__(self, in_channels: int, side: int, base_width: int, channels: int):
        sides = [2 ** k for k in range(4, side.bit_length())]  # 16, ..., side
        ins = [in_channels] + [width(r, base_width) for r in sides[:-1]]
        super().__init__(*(UpBlock(a, width(r, base_width)) for a, r in zip(ins, sides)),
                         nn.Conv2d(width(side, base_width), channels, 3, 1, 1), nn.Tanh())


def quadrant(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Quadrant ``index[b]`` of each ``x[b]`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).

    ``x[B, C, H, W]`` (H, W even), ``index[B]`` long -> ``[B, C, H/2, W/2]``; differentiable in x.
    """
    b, c, h, w = x.shape
    tiles = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, c, h // 2, w // 2)
    return tiles[torch.arange(b, device=x.device), index.to(x.device)]


class FastGANDiscriminator(nn.Module):
    """Stem, residual halvings to 8x8, a 5x5 logit map; decoders on the 8x8 and 16x16 maps.

    Stem: conv 3x3 (stride 1, bias) and LeakyReLU 0.2 at full resolution: the paper's strided stem
    brings 1024^2 down to 256^2 before the residual blocks, which at S <= 256 start at once.
    Head on the 8x8 map: conv 1x1, BatchNorm, LeakyReLU 0.2, conv 4x4 (valid) -> 5x5 logits.
    """

    def __init__(self, size: int, base_width: int, channels: int):
        super().__init__()
        c = base_width
        self.size = size
        self.stem = nn.Sequential(nn.Conv2d(channels, width(size, c), 3, 1, 1), nn.LeakyReLU(0.2))
        sides = [2 ** k for k in range(size.bit_length() - 1, 3, -1)]  # S, S/2, ..., 16
        self.blocks = nn.ModuleList(DownBlock(width(r, c), width(r // 2, c)) for r in sides)
        w8 = width(8, c)
        self.head = nn.Sequential(nn.Conv2d(w8, w8, 1, bias=False), nn.BatchNorm2d(w8), nn.LeakyReLU(0.2),
                                  nn.Conv2d(w8, 1, 4, 1, 0))
        whole, part = decoder_sides(size)
        self.decoder_whole = SimpleDecoder(w8, whole, c, channels)
        self.decoder_part = SimpleDecoder(width(16, c), part, c, channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x[B, C, S, S]`` -> ``(logits[B, 25], f16[B, 4c, 16, 16], f8[B, 8c, 8, 8])``."""
        h = self.stem(x)
        f16 = h
        for block in self.blocks:  # S >= 32: the last two blocks end at 16x16 and 8x8
            f16, h = h, block(h)
        return self.head(h).flatten(1), f16, h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits[B, 25], features[B, 64 * 8c])``: the logit patch and the flattened 8x8 map."""
        logits, _, f8 = self.encode(x)
        return logits, f8.flatten(1)

    def decode(self, f16: torch.Tensor, f8: torch.Tensor,
               index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The self-supervision's reconstructions from :meth:`encode`'s maps.

        Returns:
            ``whole[B, C, R, R]`` from ``f8`` (R = min(128, S)), the input downsampled; and
            ``part[B, C, R', R']`` from quadrant ``index[b]`` of ``f16`` (R' = min(128, S/2)), the
            same quadrant of the input, downsampled.
        """
        return self.decoder_whole(f8), self.decoder_part(quadrant(f16, index))
