"""DiffAugment (Zhao et al., 2020): differentiable augmentations applied to every image D sees.

The same kind of random transform is applied to real and fake batches, in D's and in G's step,
and gradients flow through it to G. Written from the paper's description:

- ``color``: brightness (add U[-0.5, 0.5]), saturation (scale the deviation from the channel mean by
  U[0, 2]; the identity for one channel), contrast (scale the deviation from the image mean by
  U[0.5, 1.5]), each drawn per sample;
- ``translation``: shift by an integer in [-S/8, S/8] along each axis per sample, filling with 0;
- ``cutout``: zero one square of side S/2 per sample, its centre anywhere in the image.

All draws come from the given ``torch.Generator``, so a training step is reproducible.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""`` -> ``()``.

    Raises:
        ValueError: an unknown or repeated policy name.
    """
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r} (choose from {', '.join(POLICIES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated DiffAugment policy in {text!r}")
    return names


def _uniform(x: torch.Tensor, generator: torch.Generator | None, low: float, high: float) -> torch.Tensor:
    gen_device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=gen_device).to(x.device, x.dtype)
    return low + (high - low) * u


def _randint(n: int, low: int, high: int, generator: torch.Generator | None, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(low, high, (n,), generator=generator, device=gen_device).to(device)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    x = x + _uniform(x, generator, -0.5, 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(x, generator, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, generator, 0.5, 1.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> torch.Tensor:
    """Output pixel (i, j) of sample b is input pixel (i + dy_b, j + dx_b), 0 where that is outside."""
    b, c, h, w = x.shape
    ry, rx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(b, -ry, ry + 1, generator, x.device).view(b, 1, 1)
    dx = _randint(b, -rx, rx + 1, generator, x.device).view(b, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).to(x.dtype)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w) * inside[:, None]


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> torch.Tensor:
    """Zero rows [cy - s/2, cy - s/2 + s) x cols [cx - s/2, ...) of each sample, clipped to the image."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = (_randint(b, 0, h, generator, x.device) - sh // 2).view(b, 1, 1)
    left = (_randint(b, 0, w, generator, x.device) - sw // 2).view(b, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    cut = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)
    return x * (~cut).to(x.dtype)[:, None]


_FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the transforms of ``policy`` in order to ``x[B, C, H, W]`` (differentiable in ``x``)."""
    for name in policy:
        x = _FUNCTIONS[name](x, generator)
    return x
