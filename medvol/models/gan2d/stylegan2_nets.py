"""StyleGAN2's networks: mapping network, skip-architecture synthesis network, residual discriminator.

Widths: ``width(r) = min(c * 256 / r, 4c)`` channels at resolution r, with c = ``base_width``. This
is the paper's config-f rule (``min(32768 / r, 512)``) for c = 128, a function of the absolute
resolution as in the paper, and narrower by default for one-channel medical slices (c = 64:
256 channels up to 64^2, 128 at 128^2, 64 at 256^2). docs/models2d.md lists every choice.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medvol.models.gan2d.stylegan2_layers import (EqualConv2d, EqualLinear, ModulatedConv, downsample2d,
                                                  minibatch_stddev, upsample2d, wide)

#: The mapping network's learning-rate multiplier (the paper: 0.01).
MAPPING_LR_MULT = 0.01
#: Decay of the running mean of w kept for truncation (per G step).
W_AVG_DECAY = 0.995


def width(resolution: int, base_width: int) -> int:
    """Channels at ``resolution``: ``min(base_width * 256 / resolution, 4 * base_width)``."""
    return min(base_width * 256 // resolution, 4 * base_width)


def resolutions(size: int) -> list[int]:
    """4, 8, ..., size."""
    return [2 ** k for k in range(2, int(math.log2(size)) + 1)]


class MappingNetwork(nn.Module):
    """z -> w: pixel norm of z, then ``layers`` fully connected layers (lr multiplier 0.01, leaky ReLU).

    Keeps ``w_avg``, the running mean of w during training (decay :data:`W_AVG_DECAY` per
    :meth:`update_w_avg`), the centre towards which truncation pulls.

    Shapes: ``[B, z_dim] -> [B, w_dim]`` (z_dim = w_dim = latent_dim).
    """

    def __init__(self, latent_dim: int, layers: int = 8):
        super().__init__()
        self.net = nn.Sequential(*[EqualLinear(latent_dim, latent_dim, lr_mult=MAPPING_LR_MULT, activation=True)
                                   for _ in range(layers)])
        self.register_buffer("w_avg", torch.zeros(latent_dim))

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        z = z * (wide(z).square().mean(dim=1, keepdim=True) + 1e-8).rsqrt().to(z.dtype)
        w = self.net(z)
        if truncation != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation)
        return w

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor) -> None:
        self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, W_AVG_DECAY))


class SynthesisNetwork(nn.Module):
    """ws -> image: a learned constant 4x4 input, two modulated 3x3 convolutions per resolution
    (the first after x2 FIR upsampling; one at 4x4), and the skip architecture: a toRGB (modulated
    1x1, no demodulation) at every resolution whose outputs are upsampled and summed.

    Layer i uses ``ws[:, i]``; a toRGB uses the w of the next convolution, so there are
    ``num_ws = 2 log2(S) - 2`` ws (8 at 32^2, 12 at 128^2).

    Shapes: ``ws [B, num_ws, w_dim] -> [B, channels, S, S]`` (no output nonlinearity).
    """

    def __init__(self, size: int, latent_dim: int, base_width: int, channels: int):
        super().__init__()
        res = resolutions(size)
        self.const = nn.Parameter(torch.randn(width(4, base_width), 4, 4))
        self.convs = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        self.ws_index: list[int] = []  # index of the w of each conv; toRGB r uses ws_index[conv after it]
        cin = width(4, base_width)
        for r in res:
            cout = width(r, base_width)
            if r == 4:
                self.convs.append(ModulatedConv(latent_dim, cin, cout, 3, r))
            else:
                self.convs.append(ModulatedConv(latent_dim, cin, cout, 3, r, up=True))
                self.convs.append(ModulatedConv(latent_dim, cout, cout, 3, r))
            self.to_rgb.append(ModulatedConv(latent_dim, cout, channels, 1, r, demodulate=False,
                                             activation=False, noise=False))
            cin = cout
        self.num_ws = len(self.convs) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", generator: torch.Generator | None = None,
                impl: str = "grouped") -> torch.Tensor:
        b = ws.shape[0]
        x = self.const.unsqueeze(0).expand(b, -1, -1, -1).to(ws.dtype)
        image = None
        layer = 0
        for stage, to_rgb in enumerate(self.to_rgb):
            for _ in range(1 if stage == 0 else 2):
                x = self.convs[layer](x, ws[:, layer], noise_mode, generator, impl)
                layer += 1
            rgb = to_rgb(x, ws[:, layer], impl=impl)
            image = rgb if image is None else upsample2d(image) + rgb
        return image


class StyleGenerator(nn.Module):
    """G = synthesis(mapping(z)): ``z [B, latent_dim] -> [B, channels, S, S]``.

    ``G(z)`` broadcasts one w to every layer (no style mixing; the training step mixes, see
    :meth:`medvol.models.gan2d.StyleGAN2._ws`).
    """

    def __init__(self, size: int, latent_dim: int, base_width: int, channels: int, mapping_layers: int = 8):
        super().__init__()
        self.mapping = MappingNetwork(latent_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(size, latent_dim, base_width, channels)
        self.num_ws = self.synthesis.num_ws

    def forward(self, z: torch.Tensor, truncation: float = 1.0, noise_mode: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        w = self.mapping(z, truncation)
        return self.synthesis(w.unsqueeze(1).expand(-1, self.num_ws, -1), noise_mode, generator)


class ResidualBlock(nn.Module):
    """D block: conv 3x3 + conv 3x3 down (FIR blur, stride 2) and a skip (FIR downsample, 1x1 conv
    without bias), summed and divided by sqrt(2). ``[B, cin, R, R] -> [B, cout, R/2, R/2]``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqualConv2d(cin, cin, 3, activation=True)
        self.conv1 = EqualConv2d(cin, cout, 3, activation=True, down=True)
        self.skip = EqualConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(downsample2d(x)) + self.conv1(self.conv0(x))) * (1.0 / math.sqrt(2.0))


class ResidualDiscriminator(nn.Module):
    """D: fromRGB (1x1 conv, leaky ReLU) at S, residual blocks down to 4x4, then the epilogue:
    minibatch standard deviation (groups of up to 4, one feature), conv 3x3, FC, FC to one logit.

    Returns ``(logit [B], features [B, width(4)])`` (the last hidden layer), as the 2D D's do.
    """

    def __init__(self, size: int, base_width: int, channels: int):
        super().__init__()
        res = resolutions(size)[::-1]  # S, S/2, ..., 4
        self.from_rgb = EqualConv2d(channels, width(size, base_width), 1, activation=True)
        self.blocks = nn.Sequential(*[ResidualBlock(width(r, base_width), width(r // 2, base_width))
                                      for r in res[:-1]])
        c4 = width(4, base_width)
        self.conv = EqualConv2d(c4 + 1, c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.blocks(self.from_rgb(x))
        features = self.fc(self.conv(minibatch_stddev(x)).flatten(1))
        return self.out(features).reshape(-1), features
