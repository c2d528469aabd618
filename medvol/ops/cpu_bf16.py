"""A PyTorch CPU bug worked around: bf16 ``Conv3d`` weight gradients at output depth 2.

Measured with torch 2.14.1 on an AVX-512-BF16 CPU (oneDNN's native bf16; docs/diffusion.md):
under CPU bf16 autocast, a ``Conv3d`` whose output has depth 2 and that pads along depth gets a
wrong weight gradient on every call (relative error up to 1e37, often NaN or inf; the input
gradient stays right) when either side has 16 or more channels: kernel 3 / padding 1 on depth 2,
kernel 4 / padding 1 on depth 3, kernel 2 / padding 1 on depth 1 alike. Output depth 1 or 3 and
more, no depth padding, or 8 channels in and out are right; so is the same convolution with
oneDNN switched off. The 3D latent diffusion model meets it twice at 32^3: in the U-Net's lowest
level (latent 8^3, side 2) and in the patch discriminator's last convolution (3^3 -> 2^3). Those
were the NaN losses a few bf16 steps into a CPU run, and, as the garbage changed from call to
call, the stage-1 resume that was not bit-exact. The 3D GANs meet it on their crops: at 32^3 the
encoder's second convolution (4-slice crop -> depth 2) and G^H's first stage (1 embedding slice
upsampled to 2), both in CRF-GAN and HA-GAN; deeper crops meet it wherever a stack halves a depth
down to 2.

Such a convolution is tiny (depth 2), so running it in fp32 costs next to nothing; every other
convolution keeps bf16. :func:`guard_depth_two_convs` makes a module's ``Conv3d`` layers do that,
and only under CPU bf16 autocast; :func:`medvol.models.registry.build` applies it to every model.
:func:`upsample_conv3d_needs_fp32` is the same rule for the functional upsample-conv op, whose
convolution (kernel 2 or 3, padding 1) has output depth 2 on an input of depth 1, and
:func:`conv_forward` for convolutions that bypass a module's ``forward`` (the spectral-normalised
discriminator stacks). The encoder's tiled forward (``Encoder.forward_tiled``) runs without
gradients and pads depth itself, so it cannot meet the bug.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def output_depth(conv: nn.Conv3d, depth: int) -> int:
    """The depth of ``conv``'s output for an input of ``depth``."""
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else None
    if pad is None:  # "same" / "valid"
        return depth if conv.padding == "same" else depth - conv.dilation[0] * (conv.kernel_size[0] - 1)
    return (depth + 2 * pad - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1


def needs_fp32(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``conv`` on ``x`` ``[B, C, D, H, W]`` could meet the bug: CPU, bf16 autocast, an
    output of depth 2 (any padding and width: the guard is wider than the measured failures)."""
    return (x.device.type == "cpu" and x.dim() == 5
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and output_depth(conv, x.shape[2]) == 2)


def cpu_bf16(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` would run in bf16 on the CPU (oneDNN): ``x`` is a CPU
    tensor and either bf16 itself or under CPU bf16 autocast."""
    return x.device.type == "cpu" and (
        x.dtype == torch.bfloat16
        or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))


def upsample_conv3d_needs_fp32(x: torch.Tensor) -> bool:
    """Whether :func:`medvol.ops.upsample_conv3d` on ``x`` ``[B, C, D, H, W]`` could meet the bug:
    bf16 on the CPU (a bf16 input or bf16 autocast) and D = 1, where both backends' convolutions
    have output depth 2 and pad along depth (``torch``: 3^3 on the upsampled depth 2, padding 1;
    ``decomposed``: the 2^3 parity kernels on depth 1, padding 1)."""
    return x.dim() == 5 and x.shape[2] == 1 and cpu_bf16(x)


def conv_forward(conv: nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv._conv_forward(x, weight, bias)`` (a convolution with weights computed outside the
    module, e.g. spectral-normalised ones) in fp32 where :func:`needs_fp32`, as the guarded
    ``forward`` does; such calls bypass the module's ``forward`` and so its guard."""
    if needs_fp32(conv, x):
        with torch.autocast("cpu", enabled=False):
            return conv._conv_forward(x.float(), weight.float(), None if bias is None else bias.float())
    return conv._conv_forward(x, weight, bias)


def _forward(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    if needs_fp32(conv, x):
        with torch.autocast("cpu", enabled=False):
            return type(conv).forward(conv, x.float())
    return type(conv).forward(conv, x)


def guard_depth_two_convs(module: nn.Module) -> int:
    """Make every ``Conv3d`` of ``module`` run in fp32 where :func:`needs_fp32`; returns how many.

    The wrapper replaces the instance's ``forward`` (parameters, state dict and module tree are
    unchanged), so it composes with activation checkpointing, which recomputes under the same
    autocast state.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv3d)]
    for conv in convs:
        conv.forward = functools.partial(_forward, conv)
    return len(convs)
