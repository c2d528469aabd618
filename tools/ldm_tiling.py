"""Tiled against whole decoding of a latent diffusion checkpoint's autoencoder, on phantoms.

Encodes phantoms (3D volumes, or their axial slices for ``ldm2d``) with the checkpoint's
autoencoder, decodes each latent whole and in tiles (``medvol.models.diffusion.tiling``) and prints
a markdown table of the differences in [-1, 1] units: the maximum and mean absolute difference,
and the mean at the voxels next to a tile cut against the rest (is there a seam?), per
(tile, overlap) setting.

    python tools/ldm_tiling.py --ckpt runs/ldm2d_64_ae --n 8 --tiles 8:0,8:2,8:4,12:4
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch


#: How tiles are normalised: each with its own GroupNorm statistics, or with statistics shared
#: over all tiles after 1 or 2 record sweeps (``decode_tiled(norms=..., refine=...)``).
MODES = (("per tile", 0), ("shared, 1 sweep", 0), ("shared, 2 sweeps", 1))


def _cut_mask(sides, factor, tile, overlap, dims) -> torch.Tensor:
    """True at output voxels within one voxel of a tile start or end (where a seam would show)."""
    from medvol.models.diffusion.tiling import tile_starts

    mask = torch.zeros(tuple(n * factor for n in sides), dtype=torch.bool)
    for axis, n in enumerate(sides):
        for start in tile_starts(n, min(tile, n), overlap):
            for edge in (start, start + min(tile, n)):
                if 0 < edge < n:
                    index = [slice(None)] * dims
                    index[axis] = slice(edge * factor - 1, edge * factor + 1)
                    mask[tuple(index)] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="an ldm / ldm2d checkpoint or run folder (either stage)")
    parser.add_argument("--n", type=int, default=8, help="phantoms")
    parser.add_argument("--tiles", default="8:0,8:2,8:4", help="comma list of TILE:OVERLAP in latent voxels")
    parser.add_argument("--size", type=int, default=None,
                        help="phantom side (default: the model's; larger: the fully convolutional autoencoder "
                             "on images larger than it was trained on, as tiling is for)")
    parser.add_argument("--seed", type=int, default=1000, help="phantom seed (not the training phantoms' 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
    from medvol.models.diffusion.tiling import decode_tiled, tile_starts
    from medvol.train.checkpoint import load_checkpoint

    system, cfg, state = load_checkpoint(args.ckpt)
    system.eval()
    size = args.size or system.size
    data = PhantomVolumeDataset(size, length=args.n, seed=args.seed)
    if system.dims == 2:
        data = SliceDataset(data)
        # n slices from the middle half of the stack (the chest, not the blank ends)
        picks = np.linspace(len(data) * 3 // 8, len(data) * 5 // 8, args.n).round().astype(int)
        images = torch.stack([data[int(i)]["image"] for i in picks])
    else:
        images = torch.stack([data[i]["image"] for i in range(args.n)])
    with torch.no_grad():
        mu, _ = system.autoencoder.encode(images)
        whole = system.autoencoder.decode(mu).float()
    sides = tuple(mu.shape[2:])
    factor = whole.shape[2] // sides[0]
    print(f"{cfg.model.name} trained at {system.size}^{system.dims}, phantoms at {size}^{system.dims}, latent {system.latent_dim} x {sides[0]}^{system.dims}, "
          f"checkpoint iteration {state['iteration']}, {args.n} phantoms (seed {args.seed}); "
          f"reconstruction mean |x - decode(encode(x))| {float((whole - images).abs().mean()):.4f}")
    print()
    norms = [m for m in system.autoencoder.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    print("| tile | overlap | tiles | GroupNorm statistics | max abs diff | mean abs diff | mean at cuts | mean elsewhere |")
    print("|---|---|---|---|---|---|---|---|")
    for item, (mode, refine) in itertools.product(args.tiles.split(","), MODES):
        tile, overlap = (int(v) for v in item.split(":"))
        with torch.no_grad():
            tiled = decode_tiled(system.autoencoder.decode, mu, tile, overlap,
                                 norms=norms if mode != "per tile" else None, refine=refine)
        diff = (tiled - whole).abs()
        cuts = _cut_mask(sides, factor, tile, overlap, system.dims)
        per_voxel = diff.mean(dim=(0, 1))
        count = int(np.prod([len(tile_starts(n, min(tile, n), overlap)) for n in sides]))
        at_cuts = float(per_voxel[cuts].mean()) if cuts.any() else float("nan")
        elsewhere = float(per_voxel[~cuts].mean())
        print(f"| {tile} | {overlap} | {count} | {mode} | {float(diff.max()):.4f} | {float(diff.mean()):.5f} | "
              f"{at_cuts:.5f} | {elsewhere:.5f} |")


if __name__ == "__main__":
    main()
