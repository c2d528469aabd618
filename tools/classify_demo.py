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

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_standins  # noqa: E402

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
    from medvol.data.phantom import draw_factors, make_phantom
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    params = PreprocessParams(size=size)
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
                    array = demo_standins.blurred(array)
            filed = 1 - label if kind == "swapped" else label
            target = folder / CLASSES[filed]
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"sample_{counts[label]:04d}_{'ab'[label]}.nii.gz"
            demo_standins.write_standin(array, params, path, {"model": f"stand-in {kind}", "seed": seed, "index": i},
                                        mark=mark)
            counts[label] += 1
        i += 1
    return folder


def main(argv: list[str] | None = None) -> int:
    return demo_standins.main(argv, doc=__doc__, kinds=KINDS, write_scans=write_scans, write_source=write_class_source,
                              n_synthetic=12, n_synthetic_help="images per class and source",
                              what="scans with factors")


if __name__ == "__main__":
    raise SystemExit(main())
