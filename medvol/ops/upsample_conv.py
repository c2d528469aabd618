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
from medvol.ops.cpu_bf16 import upsample_conv3d_needs_fp32

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
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return _Interleave.apply(y, O, channels_last)


def _parity_view(y: torch.Tensor, out_channels: int) -> torch.Tensor:
    """The stacked parity output ``y`` [B, 8 O, D+1, H+1, W+1] (any strides) seen as
    [B, O, D, 2, H, 2, W, 2], i.e. in output voxel order.

    Output voxel (2d + pd, 2h + ph, 2w + pw) of channel o is ``y[p O + o, d + pd, h + ph, w + pw]``
    with p = 4 pd + 2 ph + pw: an address linear in (d, pd, h, ph, w, pw), hence one strided view
    (non-overlapping: each element of ``y`` appears at most once).
    """
    B, _, D1, H1, W1 = y.shape
    sb, sc, sd, sh, sw = y.stride()
    O = out_channels
    return y.as_strided(
        (B, O, D1 - 1, 2, H1 - 1, 2, W1 - 1, 2),
        (sb, sc, sd, 4 * O * sc + sd, sh, 2 * O * sc + sh, sw, O * sc + sw),
        y.storage_offset(),
    )


class _Interleave(torch.autograd.Function):
    """Stacked parity output ``y`` -> upsampled output ``[B, O, 2D, 2H, 2W]`` in one copy.

    Written as a Function because autograd's own backward of the strided view (or of eight slice
    assignments) materialises several y-sized gradients and index tensors; this backward writes
    one y-sized gradient (:class:`_Deinterleave`, whose backward is this again: double backward).
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, out_channels: int, channels_last: bool) -> torch.Tensor:
        B, _, D1, H1, W1 = y.shape
        ctx.geometry = (tuple(y.shape), tuple(y.stride()), out_channels)
        ctx.channels_last = channels_last
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        out = torch.empty(B, out_channels, 2 * (D1 - 1), 2 * (H1 - 1), 2 * (W1 - 1),
                          dtype=y.dtype, device=y.device, memory_format=fmt)
        out.view(B, out_channels, D1 - 1, 2, H1 - 1, 2, W1 - 1, 2).copy_(_parity_view(y, out_channels))
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        shape, stride, out_channels = ctx.geometry
        return _Deinterleave.apply(grad_out, shape, stride, out_channels, ctx.channels_last), None, None


class _Deinterleave(torch.autograd.Function):
    """Gradient of :class:`_Interleave`: scatter ``[B, O, 2D, 2H, 2W]`` back into y's geometry
    (zeros where y holds the unused border window positions)."""

    @staticmethod
    def forward(ctx, grad_out: torch.Tensor, shape, stride, out_channels: int, channels_last: bool):
        ctx.out_channels, ctx.channels_last = out_channels, channels_last
        grad_y = torch.empty_strided(shape, stride, dtype=grad_out.dtype, device=grad_out.device).zero_()
        B, O, D2, H2, W2 = grad_out.shape
        # Splitting single dimensions is a view in any layout.
        source = grad_out.view(B, O, D2 // 2, 2, H2 // 2, 2, W2 // 2, 2)
        _parity_view(grad_y, out_channels).copy_(source)
        return grad_y

    @staticmethod
    def backward(ctx, grad_grad_y: torch.Tensor):
        return _Interleave.apply(grad_grad_y, ctx.out_channels, ctx.channels_last), None, None, None, None


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
    # Every device: the decomposition wherever it stores less (every generator stage but the two
    # smallest trunk ones). On the CPU it is also the faster one there, 1.3-17x forward+backward
    # (docs/kernels.md); on CUDA speed is to be measured.
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
        backend: ``"auto"`` (``"decomposed"`` where it stores less than ``"torch"``, see
            :func:`stores_less`), ``"torch"`` or ``"decomposed"``.

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
    if upsample_conv3d_needs_fp32(x):
        # A torch CPU bug gives bf16 weight gradients of depth-2 outputs garbage (cpu_bf16.py): this
        # small convolution runs in fp32 and returns the dtype it would have returned.
        dtype = x.dtype if x.dtype == torch.bfloat16 else torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            x32, w32 = x.float(), weight.float()
            b32 = None if bias is None else bias.float()
            y = upsample_conv3d_reference(x32, w32, b32) if chosen == "torch" else _decomposed(x32, w32, b32)
        return y.to(dtype)
    if chosen == "torch":
        return upsample_conv3d_reference(x, weight, bias)
    return _decomposed(x, weight, bias)
