"""Decoding a latent larger than fits: overlapping tiles, blended with linear ramps.

The latent is cut into tiles of ``tile`` voxels per side that overlap their neighbours by
``overlap`` voxels; each tile is decoded alone and written into the output weighted by a window
that is 1 inside the tile and falls linearly to 0 across each overlap shared with a neighbour (not
at the volume's border); the weighted sum is divided by the summed weights.

What it avoids and what it leaves (docs/diffusion.md has the measurements): a tile decoded alone
sees zero padding at its cut faces and computes its GroupNorm statistics over itself, not over
the whole latent, so its voxels near a cut and its overall intensity differ slightly from a whole
decode. The ramps hide the cut faces (no step at a tile border: neighbours cross-fade over the
overlap), but the per-tile normalisation remains as a smooth low-frequency difference; more
overlap and larger tiles make it smaller, and ``tile`` >= the latent side decodes whole.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``[0, length)`` with at least ``overlap`` shared;
    the last tile ends at ``length`` exactly."""
    if tile >= length:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(size: int, ramp: int, left: bool, right: bool, device) -> torch.Tensor:
    """1-D window of ``size``: linear from ~0 to 1 over ``ramp`` voxels at each cut side."""
    w = torch.ones(size, device=device)
    if ramp > 0:
        up = (torch.arange(ramp, device=device, dtype=torch.float32) + 0.5) / ramp
        if left:
            w[:ramp] = torch.minimum(w[:ramp], up)
        if right:
            w[size - ramp:] = torch.minimum(w[size - ramp:], up.flip(0))
    return w


class _SharedNorms:
    """GroupNorms that normalise every tile with statistics of the whole latent's decode.

    A record sweep decodes every tile with its own statistics and sums each norm's per-group
    moments over all tiles; the next sweep normalises with those sums (one mean and variance per
    sample and group, as a whole decode has). The moments of a layer are recorded on inputs that
    earlier layers normalised per tile, so they approximate the whole decode's; each further
    ``refine`` sweep records again under the shared statistics.
    """

    def __init__(self, norms: Iterable[nn.GroupNorm]):
        self.norms = list(norms)
        self.record = True
        self.sums: dict[int, list[torch.Tensor]] = {}
        self.shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        b, g = x.shape[0], module.num_groups
        flat = x.float().reshape(b, g, -1)
        if self.record:
            moments = [flat.sum(-1), flat.pow(2).sum(-1), torch.full((b, g), flat.shape[-1], device=x.device)]
            old = self.sums.get(id(module))
            self.sums[id(module)] = moments if old is None else [o + m for o, m in zip(old, moments)]
        if id(module) not in self.shared:
            return F.group_norm(x, g, module.weight, module.bias, module.eps)
        mean, var = self.shared[id(module)]
        out = ((flat - mean[..., None]) / torch.sqrt(var[..., None] + module.eps)).reshape(x.shape)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if module.affine:
            out = out * module.weight.float().view(shape) + module.bias.float().view(shape)
        return out.to(x.dtype)

    def share(self) -> None:
        """Turn the recorded sums into the statistics the next sweep uses; start a new record."""
        for key, (total, squares, count) in self.sums.items():
            mean = total / count
            self.shared[key] = (mean, (squares / count - mean.pow(2)).clamp_min(0))
        self.sums = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        for module in self.norms:
            module.forward = lambda x, m=module: self.forward(m, x)
        try:
            yield
        finally:
            for module in self.norms:
                module.__dict__.pop("forward", None)


def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int,
                 overlap: int | None = None, norms: Iterable[nn.GroupNorm] | None = None,
                 refine: int = 1) -> torch.Tensor:
    """``decode(z)`` computed tile by tile (see the module's docstring).

    Args:
        decode: latent ``[B, Cl, *L]`` -> image ``[B, C, *(f L)]`` for a fixed integer factor f.
        z: the latent; 2 or 3 spatial dimensions.
        tile: latent voxels per tile side (>= 2).
        overlap: latent voxels shared by neighbouring tiles, 0 .. tile - 1; None: tile // 4.
        norms: the decoder's GroupNorms: given, every tile is normalised with statistics shared
            over all tiles (:class:`_SharedNorms`; costs 1 + ``refine`` extra decodes of every
            tile); None: each tile with its own.
        refine: with ``norms``, record sweeps after the first.

    Returns:
        The blended image, float32; only one tile's decode is alive at a time.
    """
    overlap = tile // 4 if overlap is None else overlap
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 2:
        raise MedvolError(f"tile_depth: expected an integer >= 2 latent voxels, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise MedvolError(f"overlap: expected an integer in 0 .. {tile - 1}, got {overlap!r}")
    if norms is None:
        return _blend(decode, z, tile, overlap)
    shared = _SharedNorms(norms)
    with shared.installed():
        for _ in range(1 + refine):
            for starts in itertools.product(*[tile_starts(n, min(tile, n), overlap) for n in z.shape[2:]]):
                decode(z[(slice(None), slice(None)) + tuple(slice(s, s + min(tile, n))
                                                            for s, n in zip(starts, z.shape[2:]))])
            shared.share()
        shared.record = False
        return _blend(decode, z, tile, overlap)


def _blend(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Every tile decoded and written into the output with its ramp window; the weighted mean."""
    sides = tuple(z.shape[2:])
    per_axis = [tile_starts(n, min(tile, n), overlap) for n in sides]
    out = weight = None
    factor = 1
    for starts in itertools.product(*per_axis):
        window = tuple(slice(s, s + min(tile, n)) for s, n in zip(starts, sides))
        piece = decode(z[(slice(None), slice(None)) + window]).float()
        if out is None:
            factor = piece.shape[2] // min(tile, sides[0])
            out = piece.new_zeros(piece.shape[:2] + tuple(n * factor for n in sides))
            weight = piece.new_zeros((1, 1) + tuple(n * factor for n in sides))
        w = None
        for axis, (s, n) in enumerate(zip(starts, sides)):
            size = min(tile, n)
            ramp = _ramp(size * factor, overlap * factor, s > 0, s + size < n, piece.device)
            shape = [1] * (2 + len(sides))
            shape[2 + axis] = -1
            w = ramp.view(shape) if w is None else w * ramp.view(shape)
        target = (slice(None), slice(None)) + tuple(slice(s * factor, (s + min(tile, n)) * factor)
                                                     for s, n in zip(starts, sides))
        out[target] += piece * w
        weight[target] += w
        del piece
    return out / weight
