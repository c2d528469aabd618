"""Nearest x2 upsampling followed by a 3x3x3 convolution, without materialising the upsampled tensor.

Along one axis, output voxel 2d + p of conv(upsample(x)) sees upsampled voxels 2d + p - 1 .. 2d + p + 1,
which are low-resolution voxels:

    parity 0: taps {0} -> x[d-1],  taps {1, 2} -> x[d]
    parity 1: taps {0, 1} -> x[d], taps {2} -> x[d+1]

so each of the 8 output parities (pd, ph, pw) is a 2x2x2 convolution of x whose weights are sums of
the 3x3x3 taps (8 taps per output voxel instead of 27), including the zero padding at both borders:
exact, not an approximation. The weights stay [O, C, 3, 3, 3] (checkpoints are interchangeable with
the plain path); the fold is a small einsum done on the fly, so gradients reach the 3x3x3 weights.

Backends: ``torch`` (interpolate + conv3d, the reference), ``decomposed`` (the parity decomposition
in PyTorch, every device, double backward works). There is no Triton kernel: no measurement on a GPU
has shown one beating ``decomposed`` (whose 8 convolutions run on cuDNN/oneDNN), see docs/kernels.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvol.errors import MedvolError
from medvol.ops import _dispatch

BACKENDS = ("torch", "decomposed", "triton")

# _FOLD[p] maps the 3 taps of one axis to the 2 offsets of output parity p (rows: offset, cols: tap).
_FOLD = ((( 1.0, 0.0, 0.0), (0.0, 1.0, 1.0)),
         (( 1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def upsample_conv3d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv3d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)."""
    return F.conv3d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


def fold_weights(weight: torch.Tensor) -> torch.Tensor:
    """The 8 parity kernels of a 3x3x3 ``weight``.

    Args:
        weight: [O, C, 3, 3, 3].

    Returns:
        [2, 2, 2, O, C, 2, 2, 2]: index (pd, ph, pw) gives the 2x2x2 kernel of that output parity.
    """
    fold = torch.tensor(_FOLD, dtype=weight.dtype, device=weight.device)  # [parity, offset, tap]
    return torch.einsum("pad,qbe,rcf,oidef->pqroiabc", fold, fold, fold, weight)


def _decomposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    B, _, D, H, W = x.shape
    O = weight.shape[0]
    # One convolution with the 8 parity kernels stacked as 8*O output channels: a single GEMM-like
    # call (measured faster than 8 separate ones, forward and backward), and its backward keeps
    # only x, never the 8x larger upsampled tensor.
    kernels = fold_weights(weight).reshape(8 * O, weight.shape[1], 2, 2, 2)
    y = F.conv3d(x, kernels, bias.repeat(8) if bias is not None else None, padding=1)
    memory_format = (torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d)
                     and not x.is_contiguous() else torch.contiguous_format)
    out = torch.empty(B, O, 2 * D, 2 * H, 2 * W, dtype=y.dtype, device=x.device, memory_format=memory_format)
    for p in range(8):
        pd, ph, pw = p >> 2, (p >> 1) & 1, p & 1
        # padding=1 gives D+1 window positions per axis; parity 0 starts at x[d-1], parity 1 at x[d].
        out[:, :, pd::2, ph::2, pw::2] = y[:, p * O:(p + 1) * O, pd:pd + D, ph:ph + H, pw:pw + W]
    return out


def stores_less(x: torch.Tensor, out_channels: int) -> bool:
    """Whether ``decomposed`` allocates less than ``torch`` for this input (in elements).

    ``decomposed``: its stacked parity output, B 8 O (D+1)(H+1)(W+1), plus the folded kernels and
    their gradient, 2 x 64 O C. ``torch``: the upsampled input, B 8 C D H W, which its backward keeps.
    """
    B, C, D, H, W = x.shape
    decomposed = B * 8 * out_channels * (D + 1) * (H + 1) * (W + 1) + 128 * out_channels * C
    return decomposed < B * 8 * C * D * H * W


def _unavailable(backend: str, x: torch.Tensor) -> str | None:
    if backend == "triton":
        return ("upsample_conv3d has no Triton kernel: none was shown to beat the 'decomposed' backend "
                "(docs/kernels.md)")
    return None


def _auto_order(x: torch.Tensor, out_channels: int | None = None) -> tuple[str, ...]:
    if x.device.type == "cpu" and not _dispatch.is_fake(x):
        # Measured on the CPU (docs/kernels.md): the decomposition wins forward+backward only where
        # the upsampled input dwarfs the output (32 -> 1 channels: 1.4x faster, 91% less memory);
        # at C = 2 O oneDNN's 3x3x3 backward is 1.4-5x faster than the stacked 2x2x2 one.
        if out_channels is not None and x.shape[1] >= 8 * out_channels:
            return ("decomposed", "torch")
        return ("torch", "decomposed")
    # CUDA and fake tensors (memory estimates): the decomposition wherever it stores less.
    if out_channels is None or stores_less(x, out_channels):
        return ("decomposed", "torch")
    return ("torch", "decomposed")


_dispatch.register("upsample_conv3d", BACKENDS, _unavailable, _auto_order)


def upsample_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """Nearest x2 upsampling then a 3x3x3 convolution with padding 1, computed exactly.

    Args:
        x: [B, C, D, H, W] (any float dtype; contiguous or channels_last_3d).
        weight: [O, C, 3, 3, 3] (the plain conv3d layout).
        bias: [O] or None.
        backend: ``"auto"`` (on CUDA and fake tensors ``"decomposed"`` where it stores less than
            ``"torch"``, see :func:`stores_less`; on real CPU tensors only where C >= 8 O),
            ``"torch"`` or ``"decomposed"``.

    Returns:
        [B, O, 2D, 2H, 2W], equal to ``conv3d(interpolate(x, scale_factor=2), weight, bias, padding=1)``
        up to float rounding; channels_last_3d when ``x`` is. Differentiable w.r.t. x, weight and bias
        (double backward works).

    Raises:
        MedvolError: bad shapes or an unavailable backend.

    Example:
        >>> upsample_conv3d(torch.randn(1, 8, 4, 4, 4), torch.randn(16, 8, 3, 3, 3)).shape
        torch.Size([1, 16, 8, 8, 8])
    """
    if x.dim() != 5:
        raise MedvolError(f"upsample_conv3d: x must be [B, C, D, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (3, 3, 3) or weight.shape[1] != x.shape[1]:
        raise MedvolError(f"upsample_conv3d: weight must be [O, {x.shape[1]}, 3, 3, 3], got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise MedvolError(f"upsample_conv3d: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    chosen = _dispatch.choose("upsample_conv3d", backend, x, weight.shape[0])
    if chosen == "torch":
        return upsample_conv3d_reference(x, weight, bias)
    return _decomposed(x, weight, bias)
