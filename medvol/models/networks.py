"""The sub-networks of HA-GAN and CRF-GAN, parametrised by volume size S and base width c.

Geometry (all sizes): the generator's embedding has 2c channels at (S/4)^3; a training crop is
S/8 voxel slices (1/8 of the depth), i.e. S/32 embedding slices. At S=256, c=32 the layers are
those of the published models (see docs/models.md for the per-size choices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.blocks import (ConvStage, GroupNorm, ReLU, SNConv3d, SNLinear, full_precision, norm_groups,
                                  sn_conv_stack, to_layout)

#: Which of the five G^A stages upsample (nearest x2) before their conv, per size. The published
#: 256^3 model upsamples before stages 2-5 and the 128^3 one before stages 2-4; 64^3 and 32^3
#: continue that rule, and 512^3 also upsamples before stage 1 so G keeps the same weights.
TRUNK_UPSAMPLE: dict[int, tuple[bool, ...]] = {
    32: (False, True, False, False, False),
    64: (False, True, True, False, False),
    128: (False, True, True, True, False),
    256: (False, True, True, True, True),
    512: (True, True, True, True, True),
}

SIZES = tuple(TRUNK_UPSAMPLE)


@dataclass(frozen=True)
class Geometry:
    """Sizes derived from the volume size S (voxels per side) and the training crop depth.

    ``crop_depth`` 0 is the published crop, S/8 voxels; otherwise a multiple of S/8 up to S
    (:func:`check_crop_depth`).
    """

    size: int
    crop_depth: int = 0

    @property
    def emb(self) -> int:
        """Embedding side (and CRF node count): S/4."""
        return self.size // 4

    @property
    def crop(self) -> int:
        """Training crop depth in voxels: S/8 (published) or ``crop_depth``."""
        return self.crop_depth or self.size // 8

    @property
    def crop_emb(self) -> int:
        """Training crop depth in embedding slices: crop / 4 (S/32 published)."""
        return self.crop // 4

    @property
    def n_down(self) -> int:
        """Stride-2 stages from the embedding side S/4 down to 4 (D^L, sub-encoder)."""
        return int(math.log2(self.size // 16))


def check_crop_depth(size: int, crop_depth: int) -> int:
    """``crop_depth`` if it is 0 (published: S/8) or a multiple of S/8 in [S/8, S], else MedvolError.

    D^H's convolutions reduce a crop's depth by S/8 exactly (to 1 at the published crop), so a
    deeper crop leaves crop / (S/8) depth positions, all kept as features of its first linear.
    """
    step = size // 8
    if isinstance(crop_depth, bool) or not isinstance(crop_depth, int) or crop_depth < 0 or (
            crop_depth and (crop_depth % step or crop_depth > size)):
        raise MedvolError(f"crop_depth: expected 0 (S/8 = {step}) or a multiple of {step} up to {size} "
                          f"at size {size}, got {crop_depth!r}")
    return crop_depth


def minibatch_std(h: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """One feature map of the batch's spread (Karras et al., ICLR 2018): ``h[B, F, ...]`` ->
    ``[B, 1, ...]`` filled with the standard deviation over the batch of each feature, averaged
    over the features and positions.

    Appended to a discriminator's features it lets D see how alike the samples of one batch are,
    which no per-sample score can: a generator that gives one chest for every latent is then
    told apart from real batches (docs/learning.md). Computed in float32.

    Example:
        >>> minibatch_std(torch.tensor([[0.0], [2.0]])).flatten().tolist()
        [1.0, 1.0]
    """
    x = h.float()
    std = (x.var(dim=0, unbiased=False) + eps).sqrt().mean()
    return std.expand(h.shape[0], 1, *h.shape[2:]).to(h.dtype)


class Generator(nn.Module):
    """G^A (latent -> embedding), G^H (embedding slab -> image slab) and, for HA-GAN, G^L.

    Args:
        size: S.
        base_width: c (32 published).
        latent_dim: length of z (1024 published).
        num_classes: K; a one-hot label is concatenated to z when K > 0.
        low_branch: build G^L (HA-GAN): three conv3x3x3 (c, c/2, 1) on the full embedding.
        out_channels: channels of G^H's and G^L's last conv: 1 (published), 1 + K for paired
            image + mask generation (only those two layers change).

    Example:
        >>> g = Generator(32, 4, 16, 0, low_branch=False)
        >>> g.embed(torch.randn(2, 16)).shape
        torch.Size([2, 8, 8, 8, 8])
    """

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int, low_branch: bool,
                 out_channels: int = 1):
        super().__init__()
        c = base_width
        self.num_classes = num_classes
        self.width0 = 16 * c
        self.fc = nn.Linear(latent_dim + num_classes, 4 * 4 * 4 * 16 * c)
        widths = (16 * c, 16 * c, 16 * c, 8 * c, 4 * c, 2 * c)
        self.trunk = nn.ModuleList(
            ConvStage(widths[i], widths[i + 1], upsample=up) for i, up in enumerate(TRUNK_UPSAMPLE[size])
        )
        self.head = nn.ModuleList(
            [ConvStage(2 * c, c, upsample=True), ConvStage(c, out_channels, upsample=True, final=True)]
        )
        self.low = None
        if low_branch:
            self.low = nn.ModuleList(
                [
                    ConvStage(2 * c, c, upsample=False),
                    ConvStage(c, c // 2, upsample=False),
                    ConvStage(c // 2, out_channels, upsample=False, final=True),
                ]
            )
        self.optimized = False
        self.channels_last = False

    def embed(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """G^A: ``z[B, L]`` (+ labels ``[B]`` int) -> embedding ``[B, 2c, S/4, S/4, S/4]``."""
        if self.num_classes > 0:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        h = full_precision(self.fc, z, self.optimized).view(z.shape[0], self.width0, 4, 4, 4)
        h = to_layout(h, self.channels_last)
        for stage in self.trunk:
            h = stage(h)
        return h

    def render(self, emb: torch.Tensor) -> torch.Tensor:
        """G^H: embedding slab ``[B, 2c, d, S/4, S/4]`` -> image slab ``[B, C, 4d, S, S]`` in [-1, 1]
        (C = ``out_channels``)."""
        emb = to_layout(emb, self.channels_last)
        for stage in self.head:
            emb = stage(emb)
        return emb

    def render_low(self, emb: torch.Tensor) -> torch.Tensor:
        """G^L: full embedding -> low-resolution volume ``[B, C, S/4, S/4, S/4]`` (HA-GAN only)."""
        for stage in self.low:
            emb = stage(emb)
        return emb

    def render_tiled(self, emb: torch.Tensor, tile_depth: int) -> torch.Tensor:
        """G^H over depth tiles of ``tile_depth`` embedding slices; equals :meth:`render` on the whole.

        Each tile carries a halo of one embedding slice on each side: the two 3x3x3 convs at 2x and
        4x resolution reach one voxel each, i.e. at most one embedding slice after the nearest
        upsamplings, so the kept core of every tile sees exactly the inputs it sees untiled.
        GroupNorm of the first stage normalises over the whole volume, so its statistics are
        accumulated over all tiles first (float64) and the tiles are then rendered again.

        Args:
            emb: ``[B, 2c, N, N, N]`` embedding, N = S/4.
            tile_depth: embedding slices per tile (>= 1).

        Returns:
            ``[B, C, 4N, 4N, 4N]``.
        """
        stage1, stage2 = self.head
        n = emb.shape[2]
        halo = 1
        tiles = [(a, min(a + tile_depth, n)) for a in range(0, n, tile_depth)]

        def conv1(a: int, b: int) -> tuple[torch.Tensor, int, int]:
            lo, hi = max(a - halo, 0), min(b + halo, n)
            return stage1.pre_norm(emb[:, :, lo:hi]), lo, hi

        groups = stage1.norm.num_groups
        total = torch.zeros(emb.shape[0], groups, dtype=torch.float64, device=emb.device)
        total_sq = torch.zeros_like(total)
        count = 0
        for a, b in tiles:
            y, lo, _ = conv1(a, b)
            core = y[:, :, 2 * (a - lo) : 2 * (b - lo)].double()
            core = core.reshape(core.shape[0], groups, -1)
            total += core.sum(dim=2)
            total_sq += (core * core).sum(dim=2)
            count += core.shape[2]
        scale, shift = group_norm_affine(stage1.norm, total, total_sq, count)

        out = []
        for a, b in tiles:
            y, lo, _ = conv1(a, b)
            h = F.relu(y.float() * scale + shift)
            x = stage2(h)
            out.append(x[:, :, 4 * (a - lo) : 4 * (b - lo)])
        return torch.cat(out, dim=2)


def group_norm_affine(norm: nn.GroupNorm, total: torch.Tensor, total_sq: torch.Tensor,
                      count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` ``[B, C, 1, 1, 1]`` (float32) that reproduce ``norm`` from
    statistics summed over tiles: ``total`` and ``total_sq`` ``[B, groups]`` (float64) over
    ``count`` elements per group."""
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    per_group = norm.num_channels // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1) * norm.weight.double()
    shift = norm.bias.double() - mean.repeat_interleave(per_group, dim=1) * scale
    return scale.float()[:, :, None, None, None], shift.float()[:, :, None, None, None]


class HighResDiscriminator(nn.Module):
    """D^H: SN conv3d stack on a crop ``[B, C, S/8, S, S]`` + the crop position, two SN linears.

    With width w = 16c (512 published) the published 256^3 convs are w/32, w/16, w/8 (4^3 kernels,
    stride 2), w/4, w/2 ((2,4,4) kernels), w ((1,4,4), stride (1,2,2)), w/4 ((1,4,4), valid).
    Smaller sizes drop leading 4^3 layers (128^3 drops one, as published; 64^3 two; 32^3 three);
    512^3 adds one of width w/64. ``in_channels`` C: 1 (published), 1 + K for paired image + mask
    generation (only the first conv changes). A ``crop_depth`` d deeper than S/8 (an option, see
    :func:`check_crop_depth`) leaves d / (S/8) depth positions after the convs: the first linear
    reads all of them (only its input width changes). ``minibatch_std`` (an option) appends
    :func:`minibatch_std` of the conv features to the first linear's input.

    Returns ``(logit[B, 1], class_logits[B, K] or None)``.
    """

    def __init__(self, size: int, base_width: int, num_classes: int, in_channels: int = 1, crop_depth: int = 0,
                 minibatch_std: bool = False):
        super().__init__()
        self.minibatch_std = minibatch_std
        depth_out = check_crop_depth(size, crop_depth) // (size // 8) if crop_depth else 1
        w = 16 * base_width
        lead = {32: 0, 64: 1, 128: 2, 256: 3, 512: 4}[size]
        lead_widths = [max(1, (w // 8) >> (lead - 1 - i)) for i in range(lead)]
        layers = []
        cin = in_channels
        for width in lead_widths:
            layers.append(SNConv3d(cin, width, kernel_size=4, stride=2, padding=1))
            cin = width
        layers += [
            SNConv3d(cin, w // 4, kernel_size=(2, 4, 4), stride=2, padding=(0, 1, 1)),
            SNConv3d(w // 4, w // 2, kernel_size=(2, 4, 4), stride=2, padding=(0, 1, 1)),
            SNConv3d(w // 2, w, kernel_size=(1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)),
            SNConv3d(w, w // 4, kernel_size=(1, 4, 4), stride=1, padding=0),
        ]
        self.convs = nn.ModuleList(layers)
        self.fc1 = SNLinear(w // 4 * depth_out + 1 + int(minibatch_std), w // 8)
        self.fc2 = SNLinear(w // 8, 1)
        self.fc_class = SNLinear(w // 8, num_classes) if num_classes > 0 else None
        self.optimized = False
        self.channels_last = False

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x[B, C, S/8, S, S]`` (or the ``crop_depth``), ``position[B, 1]`` (crop start /
        (S - crop), in [0, 1]; 0 for a crop of the whole depth)."""
        x = to_layout(x, self.channels_last)
        h = sn_conv_stack(self.convs, x, self.optimized).flatten(1)
        h = torch.cat([h, position.to(h.dtype)] + ([minibatch_std(h)] if self.minibatch_std else []), dim=1)
        h = F.leaky_relu(self.fc1(h), 0.2)
        cls = self.fc_class(h) if self.fc_class is not None else None
        return self.fc2(h), cls


class LowResDiscriminator(nn.Module):
    """D^L (HA-GAN): SN convs on the (S/4)^3 volume down to 4^3, then a 4^3 valid conv to 1 + K.

    Widths end at 8c and halve backwards (published 256^3: c, 2c, 4c, 8c; 128^3: 2c, 4c, 8c).
    ``in_channels`` as :class:`HighResDiscriminator`'s. ``minibatch_std`` (an option) adds the
    channel of :func:`minibatch_std` to the last conv's input.
    """

    def __init__(self, size: int, base_width: int, num_classes: int, in_channels: int = 1,
                 minibatch_std: bool = False):
        super().__init__()
        self.minibatch_std = minibatch_std
        n = Geometry(size).n_down
        widths = [max(1, (8 * base_width) >> (n - 1 - i)) for i in range(n)]
        layers = []
        cin = in_channels
        for width in widths:
            layers.append(SNConv3d(cin, width, kernel_size=4, stride=2, padding=1))
            cin = width
        layers.append(SNConv3d(cin + int(minibatch_std), 1 + num_classes, kernel_size=4, stride=1, padding=0))
        self.convs = nn.ModuleList(layers)
        self.num_classes = num_classes
        self.optimized = False
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x[B, C, S/4, S/4, S/4]`` -> ``(logit[B, 1], class_logits[B, K] or None)``."""
        x = to_layout(x, self.channels_last)
        if self.minibatch_std:
            h = sn_conv_stack(self.convs[:-1], x, self.optimized)
            h = sn_conv_stack(self.convs[-1:], torch.cat([h, minibatch_std(h)], dim=1), self.optimized,
                              last_plain=True).flatten(1)
        else:
            h = sn_conv_stack(self.convs, x, self.optimized, last_plain=True).flatten(1)
        return h[:, :1], (h[:, 1:] if self.num_classes > 0 else None)


class Encoder(nn.Module):
    """E: image slab ``[B, C, d, S, S]`` -> embedding slab ``[B, 2c, d/4, S/4, S/4]``.

    Three conv3d with GroupNorm + ReLU: c (4^3, stride 2), c (3^3), 2c (4^3, stride 2). C =
    ``in_channels``: 1 (published), 1 + K for paired image + mask generation (the first conv).
    """

    def __init__(self, base_width: int, in_channels: int = 1):
        super().__init__()
        c = base_width
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, c, kernel_size=4, stride=2, padding=1),
            GroupNorm(norm_groups(c), c),
            ReLU(),
            nn.Conv3d(c, c, kernel_size=3, stride=1, padding=1),
            GroupNorm(norm_groups(c), c),
            ReLU(),
            nn.Conv3d(c, 2 * c, kernel_size=4, stride=2, padding=1),
            GroupNorm(norm_groups(2 * c), 2 * c),
            ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def forward_tiled(self, x: torch.Tensor, tile_depth: int = 8) -> torch.Tensor:
        """:meth:`forward` on the whole ``x`` (GroupNorm statistics over the whole volume), computed
        over depth tiles of ``tile_depth`` output slices; no grad.

        The whole-volume forward holds two activations of ``[B, c, d/2, S/2, S/2]`` at once (256 MiB
        each in bf16 at 256^3, batch 2); this holds only tiles of them and the output. Each block's
        GroupNorm statistics are summed over every tile (float64) before the next block uses
        them, recomputing the blocks below from ``x`` each time: 4 passes, about 2.7x E's
        convolutions, which are tiny beside a G step. Zero padding at the volume's depth borders is
        applied explicitly; inner tiles read their halo from the neighbouring slices.
        """
        if tile_depth < 1:
            raise ValueError(f"tile_depth: must be >= 1, got {tile_depth}")
        blocks = [(self.net[i], self.net[i + 1]) for i in range(0, len(self.net), 3)]
        depths = [x.shape[2]]
        for conv, _ in blocks:
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            depths.append((depths[-1] + 2 * p - k) // s + 1)
        affine: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k, (_, norm) in enumerate(blocks, start=1):
            groups = norm.num_groups
            total = torch.zeros(x.shape[0], groups, dtype=torch.float64, device=x.device)
            total_sq = torch.zeros_like(total)
            count = 0
            for a in range(0, depths[k], tile_depth):
                y = _tiled_level(x, blocks, depths, affine, k, a, min(a + tile_depth, depths[k]))
                y = y.double().reshape(x.shape[0], groups, -1)
                total += y.sum(dim=2)
                total_sq += (y * y).sum(dim=2)
                count += y.shape[2]
            affine.append(group_norm_affine(norm, total, total_sq, count))
        last = len(blocks)
        return torch.cat([_tiled_level(x, blocks, depths, affine, last, a, min(a + tile_depth, depths[last]))
                          for a in range(0, depths[last], tile_depth)], dim=2)


def _tiled_level(x: torch.Tensor, blocks: list, depths: list[int], affine: list, k: int, a: int,
                 b: int) -> torch.Tensor:
    """Depth slices a..b of block k's output in :meth:`Encoder.forward_tiled` (k >= 1): normalised
    and rectified where its statistics are known (k <= len(affine)), the raw convolution otherwise.

    A module function, not a closure: a recursive closure refers to itself through its own cell,
    a reference cycle that kept ``x`` (the whole real volume, 128 MiB at 256^3 batch 2) alive until
    Python's cyclic garbage collector happened to run.
    """
    if k == 0:
        return x[:, :, a:b]
    conv, _ = blocks[k - 1]
    ks, st, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    lo, hi = st * a - pad, st * (b - 1) - pad + ks
    inp = _tiled_level(x, blocks, depths, affine, k - 1, max(lo, 0), min(hi, depths[k - 1]))
    if lo < 0 or hi > depths[k - 1]:
        inp = F.pad(inp, (0, 0, 0, 0, max(-lo, 0), max(hi - depths[k - 1], 0)))
    y = F.conv3d(inp, conv.weight, conv.bias, (st, *conv.stride[1:]), (0, *conv.padding[1:]))
    if k > len(affine):
        return y
    scale, shift = affine[k - 1]
    return F.relu(y.float() * scale + shift).to(y.dtype)


class SubEncoder(nn.Module):
    """HA-GAN sub-encoder: full embedding ``[B, 2c, S/4, S/4, S/4]`` -> latent ``[B, L]``.

    Stride-2 convs (4^3) with GroupNorm + ReLU down to 4^3, widths ending at 8c and halving
    backwards (published 256^3: c, 2c, 4c, 8c; 128^3: 2c, 4c, 8c), then a 4^3 valid conv to L.
    """

    def __init__(self, size: int, base_width: int, latent_dim: int):
        super().__init__()
        c = base_width
        n = Geometry(size).n_down
        widths = [max(1, (8 * c) >> (n - 1 - i)) for i in range(n)]
        layers: list[nn.Module] = []
        cin = 2 * c
        for width in widths:
            layers += [
                nn.Conv3d(cin, width, kernel_size=4, stride=2, padding=1),
                GroupNorm(norm_groups(width), width),
                ReLU(),
            ]
            cin = width
        layers.append(nn.Conv3d(cin, latent_dim, kernel_size=4, stride=1, padding=0))
        self.net = nn.Sequential(*layers)
        self.optimized = False

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        h = self.net[:-1](emb)
        return full_precision(self.net[-1], h, self.optimized).flatten(1)
