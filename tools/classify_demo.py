"""Phantom inputs for ``medvol study downstream --task classify``: scans with factors and stand-in
"generators" per class.

Writes into ``--out``:

- ``scans/``: ``phantom_NNNN.nii.gz`` as ``medvol data phantom`` writes them (HU, with the
  ``.factors.json`` sidecar that names each volume's lung asymmetry); ``medvol preprocess`` keeps the
  factors in the cache, and ``--classify-by asymmetry`` makes "asymmetric" (a small left or right
  lung) the positive class and "none" the negative one;
- one folder per stand-in generator with ``negative/`` and ``positive/`` inside, laid out as
  ``medvol generate`` writes images (HU on the cache's S³ grid, marked synthetic):

  - ``ideal``: preprocessed phantoms of other seeds, filed under their true class;
  - ``blurred``: the same images smoothed (Gaussian, sigma 1.5 voxels);
  - ``swapped``: ideal images filed under the wrong class (a class-conditional generator that
    mixes up its classes: FID cannot see it, accuracy can);
  - ``noise``: uniform noise.

None of them is a trained model: they place known points on the accuracy-against-FID plot.

Usage::

    python tools/classify_demo.py --out cdemo --n-real 24 --n-synthetic 12 --size 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

KINDS = ("ideal", "blurred", "swapped", "noise")
CLASSES = ("negative", "positive")


def write_scans(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` phantoms with factor sidecars (``medvol data phantom``'s files)."""
    from medvol.data.phantom import write_phantoms

    write_phantoms(n, size, folder, seed=seed)
    return folder


def is_positive(factors: dict) -> bool:
    """The demo's class rule: any lung asymmetry is positive."""
    return factors["asymmetry"] != "none"


def write_class_source(folder: Path, n: int, size: int, *, seed: int, kind: str = "ideal", mark: bool = True) -> Path:
    """A stand-in source: ``n`` images per class in ``folder/negative`` and ``folder/positive``.

    ``mark`` False leaves out the synthetic marks (a bad input for tests).
    """
    from scipy.ndimage import gaussian_filter

    from medvol.data.io import Volume, write_volume
    from medvol.data.phantom import draw_factors, make_phantom
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info, to_intensity
    from medvol.data.provenance import write_synthetic

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    params = PreprocessParams(size=size)
    spacing = (380.0 / size,) * 3  # the phantom cache's isotropic output spacing
    rng = np.random.default_rng(seed)
    counts = [0, 0]
    i = 0
    while min(counts) < n:
        label = int(is_positive(draw_factors((seed, i))))
        if counts[label] < n:
            if kind == "noise":
                array = rng.uniform(-1.0, 1.0, (size,) * 3).astype(np.float32)
            else:
                volume, _ = make_phantom(size, (seed, i))
                array, _ = preprocess_with_info(volume, params)
                if kind == "blurred":
                    array = gaussian_filter(array, 1.5, mode="nearest").astype(np.float32)
            filed = 1 - label if kind == "swapped" else label
            target = folder / CLASSES[filed]
            target.mkdir(parents=True, exist_ok=True)
            image = Volume(array=to_intensity(array, params).astype(np.float32), spacing=spacing)
            path = target / f"sample_{counts[label]:04d}_{'ab'[label]}.nii.gz"
            record = {"model": f"stand-in {kind}", "seed": seed, "index": i}
            if mark:
                write_synthetic(image, path, record)
            else:
                write_volume(image, path)
            counts[label] += 1
        i += 1
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n-real", type=int, default=24)
    parser.add_argument("--n-synthetic", type=int, default=12, help="images per class and source")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    write_scans(args.out / "scans", args.n_real, args.size, seed=0)
    for offset, kind in enumerate(args.kinds.split(",")):
        write_class_source(args.out / kind, args.n_synthetic, args.size, seed=100 + offset, kind=kind)
    print(f"wrote {args.n_real} scans with factors and {args.kinds} into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
