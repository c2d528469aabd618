"""What ``tools/downstream_demo.py`` and ``tools/classify_demo.py`` share: writing one stand-in
generator's image and the command line that writes real scans and every stand-in source.

Imported by those two scripts (they put ``tools/`` on ``sys.path``); not a tool itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: Seeds of the stand-in sources: 100, 101, ... in the order of ``--kinds`` (the scans use seed 0).
SOURCE_SEED = 100


def blurred(array: np.ndarray) -> np.ndarray:
    """The ``blurred`` stand-in's image: Gaussian smoothing, sigma 1.5 voxels."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(array, 1.5, mode="nearest").astype(np.float32)


def write_standin(array: np.ndarray, params, path: Path, record: dict, *, mark: bool = True):
    """Write a stand-in's image in [-1, 1] as ``medvol generate`` does: in HU on the phantom
    cache's isotropic S³ grid, marked synthetic with ``record`` (``mark`` False: unmarked, a bad
    input for tests). Returns the written :class:`~medvol.data.io.Volume` (masks go beside it)."""
    from medvol.data.io import Volume, write_volume
    from medvol.data.preprocess import to_intensity
    from medvol.data.provenance import write_synthetic

    spacing = (380.0 / params.size,) * 3  # the phantom cache's isotropic output spacing
    image = Volume(array=to_intensity(array, params).astype(np.float32), spacing=spacing)
    if mark:
        write_synthetic(image, path, record)
    else:
        write_volume(image, path)
    return image


def main(argv: list[str] | None, *, doc: str, kinds: Sequence[str], write_scans: Callable[..., Path],
         write_source: Callable[..., Path], n_synthetic: int, n_synthetic_help: str | None = None,
         what: str) -> int:
    """The demo's command line: ``n_real`` scans (``write_scans``) into ``--out/scans`` and one
    folder per stand-in kind (``write_source``); ``what`` names the scans in the closing line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n-real", type=int, default=24)
    parser.add_argument("--n-synthetic", type=int, default=n_synthetic, help=n_synthetic_help)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--kinds", default=",".join(kinds))
    args = parser.parse_args(argv)
    write_scans(args.out / "scans", args.n_real, args.size, seed=0)
    for offset, kind in enumerate(args.kinds.split(",")):
        write_source(args.out / kind, args.n_synthetic, args.size, seed=SOURCE_SEED + offset, kind=kind)
    print(f"wrote {args.n_real} {what} and {args.kinds} into {args.out}")
    return 0
