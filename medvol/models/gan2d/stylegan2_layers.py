"""StyleGAN2's layers (Karras et al. 2020): equalised learning rate, the [1, 3, 3, 1] FIR resampling
filters, the modulated / demodulated convolution and the minibatch standard deviation.

Written from the paper's equations. Equalised learning rate (StyleGAN, sec. 4.1 of ProGAN): weights
are stored as ``N(0, 1) / lr_mult`` and multiplied at run time by ``lr_mult / sqrt(fan_in)``, so Adam's
step is the same relative size for every layer; biases are stored divided by ``lr_mult`` and
multiplied back. Activations are leaky ReLU (slope 0.2) times sqrt(2), which keeps unit variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Leaky ReLU slope and the gain that keeps the variance of a unit-variance input.
SLOPE = 0.2
ACT_GAIN = math.sqrt(2.0)
_FIR = (1.0, 3.0, 3.0, 1.0)


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a narrower type (bf16, fp16); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU 0.2 times sqrt(2)."""
    return F.leaky_relu(x, SLOPE) * ACT_GAIN


def _fir_2d(x: torch.Tensor, gain: float) -> torch.Tensor:
    """The separable [1, 3, 3, 1] filter as a depthwise kernel ``[C, 1, 4, 4]``, summing to ``gain``."""
    taps = torch.tensor(_FIR, dtype=x.dtype, device=x.device)
    kernel = torch.outer(taps, taps)
    kernel = kernel * (gain / kernel.sum())
    return kernel.expand(x.shape[1], 1, 4, 4)


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    """x2 upsampling with the [1, 3, 3, 1] FIR filter: ``[B, C, H, W] -> [B, C, 2H, 2W]``.

    A depthwise transposed convolution (stride 2, padding 1) with the filter's 2D outer product
    normalised to a gain of 4 (one input pixel spreads over four output pixels). Each output is
    3/4 of its nearest input plus 1/4 of the next one per axis: inside the image this is exactly
    bilinear upsampling (``align_corners=False``); at the border the filter sees zero padding.
    """
    return F.conv_transpose2d(x, _fir_2d(x, 4.0), stride=2, padding=1, groups=x.shape[1])


def blur2d(x: torch.Tensor, pad: int) -> torch.Tensor:
    """The [1, 3, 3, 1] low-pass (gain 1), zero padding ``pad``: ``[B, C, H, W] -> [B, C, H+2pad-3, ...]``."""
    return F.conv2d(x, _fir_2d(x, 1.0), padding=pad, groups=x.shape[1])


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    """x2 downsampling: the [1, 3, 3, 1] low-pass evaluated at every other pixel, ``-> [B, C, H/2, W/2]``."""
    return F.conv2d(x, _fir_2d(x, 1.0), stride=2, padding=1, groups=x.shape[1])


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate: ``y = x (g W)^T + lr_mult b``.

    Args:
        fan_in, fan_out: sizes.
        lr_mult: learning-rate multiplier (0.01 in the mapping network).
        bias_init: initial value of the effective bias (1 for the style affines: styles start at 1).
        activation: apply :func:`lrelu`.

    Shapes: ``[B, fan_in] -> [B, fan_out]``.
    """

    def __init__(self, fan_in: int, fan_out: int, lr_mult: float = 1.0, bias_init: float = 0.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / lr_mult)
        self.bias = nn.Parameter(torch.full((fan_out,), bias_init / lr_mult))
        self.gain = lr_mult / math.sqrt(fan_in)
        self.lr_mult = lr_mult
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.gain, self.bias * self.lr_mult)
        return lrelu(y) if self.activation else y


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate (the discriminator's layers).

    Args:
        cin, cout, kernel: channels and odd kernel size.
        bias: learned bias (zero at init).
        activation: apply :func:`lrelu`.
        down: halve the resolution: blur with the FIR filter (padding 2), then the convolution with
            stride 2 and no padding, so ``[B, cin, H, W] -> [B, cout, H/2, W/2]`` (a 3x3 kernel),
            the filtered strided convolution of the paper's residual D.

    Shapes: ``[B, cin, H, W] -> [B, cout, H, W]`` (or ``H/2, W/2`` with ``down``).
    """

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True, activation: bool = False,
                 down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.activation, self.down, self.kernel = activation, down, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.gain
        if self.down:
            # Blur output H + 1, then a valid stride-2 kxk convolution: (H + 1 - k) // 2 + 1 = H / 2 for k = 3.
            x = F.conv2d(blur2d(x, 2), w, self.bias, stride=2)
        else:
            x = F.conv2d(x, w, self.bias, padding=self.kernel // 2)
        return lrelu(x) if self.activation else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     impl: str = "grouped", eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's modulated convolution (eqs. 1 and 3 of the paper), padding ``k // 2``.

    ``w'_ijk = s_i w_ijk`` scales input channel i of every sample's own copy of the weights; with
    ``demodulate`` each output channel j is then divided by ``sqrt(sum_{i,k} w'_ijk^2 + eps)``, so a
    unit-variance input gives (statistically) unit-variance outputs.

    Args:
        x: ``[B, Cin, H, W]``.
        weight: ``[Cout, Cin, k, k]``, the effective weights (any equalised-lr gain applied).
        styles: ``[B, Cin]``, the per-sample scales s.
        demodulate: divide by the per-sample output-channel norm.
        impl: "grouped" (the batch folded into the channels, one grouped convolution with
            ``groups=B``: the fast path) or "reference" (a Python loop of one convolution per sample).
        eps: added under the square root.

    Returns:
        ``[B, Cout, H, W]``. Both impls are differentiable to any order in every argument.
    """
    b, cin, h, w_ = x.shape
    cout, _, k, _ = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(b, 1, cin, 1, 1)  # [B, Cout, Cin, k, k]
    if demodulate:
        # The norm in float32 at least: a bf16 sum of Cin*k*k squares loses most of its digits.
        norm = wide(w).square().sum(dim=(2, 3, 4), keepdim=True).add(eps).rsqrt()
        w = w * norm.to(w.dtype)
    if impl == "grouped":
        out = F.conv2d(x.reshape(1, b * cin, h, w_), w.reshape(b * cout, cin, k, k), padding=k // 2, groups=b)
        return out.reshape(b, cout, h, w_)
    if impl == "reference":
        return torch.cat([F.conv2d(x[i : i + 1], w[i], padding=k // 2) for i in range(b)])
    raise ValueError(f"impl: 'grouped' or 'reference', not {impl!r}")


class ModulatedConv(nn.Module):
    """A synthesis layer: style affine, [x2 FIR upsampling], modulated conv, noise, bias, activation.

    Args:
        w_dim: length of w.
        cin, cout, kernel: channels and kernel size.
        resolution: the output side (the size of the noise maps).
        up: upsample the input x2 with :func:`upsample2d` before the convolution.
        demodulate, activation, noise: off for toRGB (1x1, no demodulation, no noise, linear).

    The noise strength is learned per output channel and starts at 0 (the StyleGAN papers). Each
    noise layer also holds a fixed noise map (buffer ``noise_const``) for deterministic generation.

    Shapes: ``x [B, cin, R/2 or R, ...], w [B, w_dim] -> [B, cout, R, R]``.
    """

    def __init__(self, w_dim: int, cin: int, cout: int, kernel: int, resolution: int, up: bool = False,
                 demodulate: bool = True, activation: bool = True, noise: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.up, self.demodulate, self.activation, self.resolution = up, demodulate, activation, resolution
        if noise:
            self.noise_strength = nn.Parameter(torch.zeros(cout))
            self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        else:
            self.noise_strength = None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                generator: torch.Generator | None = None, impl: str = "grouped") -> torch.Tensor:
        styles = self.affine(w)
        if self.up:
            x = upsample2d(x)
        x = modulated_conv2d(x, self.weight * self.gain, styles, self.demodulate, impl)
        if self.noise_strength is not None and noise_mode != "none":
            if noise_mode == "const":
                noise = self.noise_const
            else:
                noise = randn((x.shape[0], 1, self.resolution, self.resolution), generator, x.device)
            x = x + self.noise_strength.reshape(1, -1, 1, 1) * noise.to(x.dtype)
        x = x + self.bias.reshape(1, -1, 1, 1).to(x.dtype)
        return lrelu(x) if self.activation else x


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal samples drawn on the generator's device (so CPU and CUDA draws reproduce), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def minibatch_stddev(x: torch.Tensor, group: int = 4, eps: float = 1e-8) -> torch.Tensor:
    """Append the minibatch standard deviation as one more channel: ``[B, C, H, W] -> [B, C+1, H, W]``.

    Samples are split into groups of ``g`` consecutive ones, g the largest divisor of B that is at
    most ``group``; within a group the standard deviation of every feature over the g samples is
    averaged over features and pixels, and that scalar fills the extra channel of each member.
    """
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = wide(x).reshape(b // g, g, c, h, w)
    std = (y.var(dim=1, unbiased=False) + eps).sqrt().mean(dim=(1, 2, 3))  # [B/g]
    feature = std.repeat_interleave(g).reshape(b, 1, 1, 1).expand(b, 1, h, w)
    return torch.cat([x, feature.to(x.dtype)], dim=1)
