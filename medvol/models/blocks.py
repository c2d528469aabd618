"""Building blocks shared by HA-GAN and CRF-GAN: spectral-norm layers, conv stages, mode switches.

Every block that behaves differently in the two execution modes carries ``optimized`` and
``channels_last`` flags that :meth:`medvol.models.system.GANSystem.set_mode` sets; the weights never
change between modes.

- reference: ``F.interpolate(nearest, x2)`` + ``conv3d``, no activation checkpointing.
- optimized: :func:`medvol.ops.upsample_conv3d` (the fused nearest-x2 + 3x3x3 conv, same
  3x3x3 weights) and ``torch.utils.checkpoint`` around each stage while gradients are recorded.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medvol.ops.cpu_bf16 import conv_forward


def norm_groups(channels: int) -> int:
    """GroupNorm group count: 8 as published, fewer for the narrow test/demo widths.

    Example:
        >>> norm_groups(64), norm_groups(4)
        (8, 4)
    """
    return math.gcd(8, channels)


def run_stage(fn: Callable[..., torch.Tensor], x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Run ``fn(x)``, checkpointed (non-reentrant) when ``enabled`` and autograd is recording.

    Checkpointing keeps only the stage input; the stage is recomputed in backward. Without grad
    (generation, frozen sub-networks) there is nothing to save, so it runs plainly.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in ``channels_last_3d`` when asked (a no-op when it already is), else unchanged."""
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def upsample_conv(
    x: torch.Tensor, conv: nn.Conv3d, optimized: bool, channels_last: bool = False
) -> torch.Tensor:
    """Nearest x2 upsampling followed by ``conv`` (3x3x3, padding 1).

    Args:
        x: ``[B, C, D, H, W]``.
        conv: the stage's ``nn.Conv3d(C, O, 3, padding=1)``; its 3x3x3 weights are used in both modes.
        optimized: use the fused :func:`medvol.ops.upsample_conv3d` (never stores the x2 tensor).
        channels_last: hand the op a ``channels_last_3d`` input.

    Returns:
        ``[B, O, 2D, 2H, 2W]``.
    """
    if not optimized:
        return conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    from medvol.ops import upsample_conv3d

    x = to_layout(x, channels_last)
    weight, bias = conv.weight, conv.bias
    # A custom op is not covered by autocast: cast like autocast would cast conv3d.
    dtype = _autocast_dtype(x.device.type)
    if dtype is not None:
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return upsample_conv3d(x, weight, bias, backend="auto")


def full_precision(layer: nn.Module, x: torch.Tensor, optimized: bool) -> torch.Tensor:
    """``layer(x)``, in float32 with autocast off when ``optimized``.

    For the layers that map a few vectors through a large weight (G's latent linear, 33.6M
    weights at c = 32; the sub-encoder's last 4^3 conv, 16.8M): their cost is reading the weight,
    and under autocast a bf16 copy of it would be written, kept for backward and read again, more
    memory and traffic than the float32 product itself.
    """
    if not optimized:
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) that keeps the activation dtype in
    optimized mode.

    Under autocast CUDA runs group_norm in float32, so a bf16 convolution output comes back as a
    float32 tensor twice its size, which the ReLU after it copies and the next convolution casts
    back to bf16. In optimized mode under autocast this runs the norm in the input's dtype
    instead; the kernels accumulate the statistics in float32 either way. Reference mode and
    runs without autocast are plain ``nn.GroupNorm``.
    """

    optimized = False
    channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _autocast_dtype(x.device.type) if self.optimized else None
        if dtype is None or x.dtype != dtype:
            y = super().forward(x)
        else:
            with torch.autocast(x.device.type, enabled=False):
                y = F.group_norm(x, self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        if self.channels_last:
            # CUDA's kernel returns the contiguous layout; the next convolution wants channels_last,
            # and converting here, once, keeps the converted tensor the one a checkpoint saves.
            y = to_layout(y, True)
        return y


class ReLU(nn.ReLU):
    """``nn.ReLU`` that works in place in optimized mode (after a norm, whose backward needs only
    its input, the norm's output is then never a second live tensor)."""

    optimized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=self.optimized)


class ConvStage(nn.Module):
    """[nearest x2] -> conv3x3x3 -> GroupNorm + ReLU (or tanh for an output stage).

    Args:
        in_channels: C.
        out_channels: O.
        upsample: nearest x2 before the conv.
        final: no norm, ``tanh`` output (the image stages).

    Shapes: ``[B, C, D, H, W] -> [B, O, sD, sH, sW]`` with s = 2 if ``upsample`` else 1.
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: bool, final: bool = False):
        super().__init__()
        self.upsample = upsample
        self.final = final
        self.optimized = False
        self.channels_last = False
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = None if final else GroupNorm(norm_groups(out_channels), out_channels)
        self.relu = None if final else ReLU()

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution part only (tiled generation normalises with global statistics)."""
        if self.upsample:
            return upsample_conv(x, self.conv, self.optimized, self.channels_last)
        return self.conv(x)

    def post_conv(self, y: torch.Tensor) -> torch.Tensor:
        if self.final:
            return torch.tanh(y)
        return self.relu(self.norm(y))

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_conv(self.pre_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stage(self._body, x, self.optimized)


def _power_iteration(weight: torch.Tensor, u: torch.Tensor, update: bool) -> torch.Tensor:
    """One power-iteration step on ``weight`` viewed as [out, -1]; returns sigma (grad flows to W)."""
    with torch.autocast(weight.device.type, enabled=False):
        w = weight.float().reshape(weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
            u_new = F.normalize(w @ v, dim=0, eps=1e-12)
            if update:
                u.copy_(u_new)
        return torch.dot(u_new, w @ v)


class _SpectralNorm:
    """Mixin: ``sn_weight()`` = W / sigma(W), one power iteration per call while training.

    Written here rather than with ``torch.nn.utils.parametrizations.spectral_norm`` so that the
    normalised weight is computed once per forward, outside checkpointed regions: recomputation in
    backward must not advance the power iteration a second time.
    """

    weight: torch.Tensor
    u: torch.Tensor
    training: bool

    def _init_u(self, out_features: int) -> None:
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))

    def sn_weight(self) -> torch.Tensor:
        sigma = _power_iteration(self.weight, self.u, update=self.training)
        return self.weight / sigma.to(self.weight.dtype)


class SNConv3d(_SpectralNorm, nn.Conv3d):
    """Spectral-normalised ``nn.Conv3d`` (trainable parameters: weight and bias only)."""

    def __init__(self, *args, **kwargs):
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._init_u(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.sn_weight(), self.bias)


class SNLinear(_SpectralNorm, nn.Linear):
    """Spectral-normalised ``nn.Linear``."""

    def __init__(self, *args, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_u(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sn_weight(), self.bias)


def sn_conv_stack(
    layers: nn.ModuleList, x: torch.Tensor, optimized: bool, last_plain: bool = False
) -> torch.Tensor:
    """Apply SN convs each followed by LeakyReLU(0.2), checkpointing each stage when optimized.

    The normalised weights are computed before the checkpointed region (see :class:`_SpectralNorm`).
    ``last_plain`` leaves the last conv without activation (a logit layer).
    """
    for i, layer in enumerate(layers):
        weight = layer.sn_weight()
        plain = last_plain and i == len(layers) - 1

        def stage(h, layer=layer, weight=weight, plain=plain):
            # Not layer(h): the normalised weight comes from outside; fp32 where the torch CPU bf16
            # bug of depth-2 outputs could strike (medvol/ops/cpu_bf16.py).
            h = conv_forward(layer, h, weight, layer.bias)
            return h if plain else F.leaky_relu(h, 0.2)

        x = run_stage(stage, x, optimized)
    return x
