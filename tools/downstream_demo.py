"""Phantom inputs for ``medvol study downstream``: labelled scans and stand-in "generators".

Writes into ``--out``:

- ``scans/``: ``scan_NNNN.nii.gz`` phantoms (HU, int16) with ``scan_NNNN_mask.nii.gz`` label maps,
  lungs 1 and nodules 2 (painted over the lungs), from the phantom's own tissue map and nodule
  mask; ``medvol preprocess --mask-labels lungs,nodules`` makes the real cache of them;
- one folder per stand-in generator, laid out as ``medvol generate`` writes a model with mask
  channels (``sample_NNNN.nii.gz`` in HU on the cache's S³ grid, ``sample_NNNN_mask.nii.gz``, both
  marked synthetic, ``mask_labels`` in each sidecar):

  - ``ideal``: preprocessed phantoms of other seeds with their true labels (a perfect generator);
  - ``blurred``: the same images smoothed (Gaussian, sigma 1.5 voxels), true labels;
  - ``misaligned``: ideal images whose masks are shifted by 3 voxels (a generator whose masks do
    not match its images: FID cannot see it, Dice can);
  - ``noise``: uniform noise images with random spheres as masks.

None of them is a trained model: they place known points on the Dice-against-FID plot.

Usage::

    python tools/downstream_demo.py --out demo --n-real 24 --n-synthetic 24 --size 32
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_standins  # noqa: E402

LABELS = ["lungs", "nodules"]
KINDS = ("ideal", "blurred", "misaligned", "noise")


def phantom_labels(size: int, seed) -> tuple:
    """``(volume in HU, uint8 labels)`` of a phantom with nodules: lungs 1, nodules 2 painted over."""
    from medvol.data.io import Volume
    from medvol.data.phantom import TISSUES, render_phantom

    phantom = render_phantom(size, seed, nodules=True)
    labels = np.zeros(phantom.hu.shape, np.uint8)
    labels[phantom.tissues == TISSUES["lung"]] = 1
    labels[phantom.mask > 0] = 2
    return Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin), labels


def write_scans(folder: Path, n: int, size: int, seed: int) -> Path:
    """``scan_NNNN.nii.gz`` phantoms with ``scan_NNNN_mask.nii.gz`` label maps (not marked synthetic)."""
    from medvol.data.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        volume, labels = phantom_labels(size, (seed, i))
        write_volume(volume, folder / f"scan_{i:04d}.nii.gz", dtype=np.int16)
        write_volume(dataclasses.replace(volume, array=labels), folder / f"scan_{i:04d}_mask.nii.gz", dtype=np.uint8)
    return folder


def _noise_item(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    array = rng.uniform(-1.0, 1.0, (size,) * 3).astype(np.float32)
    labels = np.zeros((size,) * 3, np.uint8)
    for value in (1, 2):
        centre, radius = rng.integers(4, size - 4, 3), 2 + 4 * (value == 1)
        grid = np.indices(labels.shape) - centre[:, None, None, None]
        labels[(grid ** 2).sum(axis=0) <= radius ** 2] = value
    return array, labels


def write_generated(folder: Path, n: int, size: int, *, seed: int, kind: str = "ideal", masks: bool = True,
                    mark: bool = True, names=LABELS) -> Path:
    """A stand-in generator's output (module docstring); ``masks``/``mark`` False leave out the
    masks or the synthetic marks (bad inputs for tests); ``names`` are the recorded mask_labels."""
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info
    from medvol.data.provenance import write_synthetic

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    params = PreprocessParams(size=size)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if kind == "noise":
            array, labels = _noise_item(rng, size)
        else:
            volume, raw = phantom_labels(size, (seed, i))
            array, info = preprocess_with_info(volume, params, labels=dataclasses.replace(volume, array=raw))
            labels = info["labels"]
            if kind == "blurred":
                array = demo_standins.blurred(array)
            elif kind == "misaligned":
                labels = np.roll(labels, (3, 3, 3), axis=(0, 1, 2))
        record = {"model": f"stand-in {kind}", "seed": seed, "index": i, "mask_labels": list(names)}
        image = demo_standins.write_standin(array, params, folder / f"sample_{i:04d}.nii.gz", record, mark=mark)
        if masks:
            write_synthetic(dataclasses.replace(image, array=labels), folder / f"sample_{i:04d}_mask.nii.gz", record,
                            dtype=np.uint8)
    return folder


def main(argv: list[str] | None = None) -> int:
    return demo_standins.main(argv, doc=__doc__, kinds=KINDS, write_scans=write_scans, write_source=write_generated,
                              n_synthetic=24, what="labelled scans")


if __name__ == "__main__":
    raise SystemExit(main())
