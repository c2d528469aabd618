"""Error of the slice factor measurements (``measure_slice_factors``) on real phantom slices.

Renders fresh phantoms (seeds (SEED, i), every other one with nodules) as a 2D model's training
data sees them (preprocessed at SIZE, aspect kept, window [-1024, 600], in [-1, 1]), measures
every non-blank axial slice and compares with the slice's ground truth:

- body width / depth: the rendered ellipse, ``2 body_a`` / ``2 body_b`` times the shoulder
  widening ``1 + taper z / 170`` at the slice's z (medvol.data.phantom);
- lung fraction: the label map's lung and nodule pixels over the ellipse's area;
- lung left share: the label map's lung pixels left of the recorded body centre over all;
- habitus: the volume's class; lungs: "no_lungs" where the label map's lung fraction is below
  ``SLICE_LUNG_MIN``, else the volume's asymmetry class (a slice need not show it: near the domes
  and the apices a normal chest shows one lung).

Prints a markdown table: mean absolute error (max in brackets) or the fraction exact.

Usage: python tools/phantom_slice_factor_errors.py [--n 24] [--size 64] [--seed 1000]
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def errors(n: int, size: int, seed: int) -> dict[str, list]:
    from medvol.data.datasets import PhantomVolumeDataset
    from medvol.data.phantom import draw_factors
    from medvol.data.phantom_factors import SLICE_LUNG_MIN, measure_slice_factors

    table: dict[str, list] = {}
    ds = PhantomVolumeDataset(size, n, seed=seed, nodules=True)
    s = ds.spacing[0]
    centre = (np.arange(size) + 0.5 - size / 2.0) * s  # mm from the volume's centre, x left+
    for i in range(n):
        f = draw_factors((seed, i), nodules=i % 2 == 1)
        volume, labels = ds.volume_and_labels(i)
        for k in range(size):
            if (volume[k] <= -1.0).all():
                continue
            m = measure_slice_factors(volume[k], (s, s), window=ds.window)
            widen = 1.0 + f["taper"] * centre[k] / 170.0
            area = math.pi * f["body_a"] * f["body_b"] * widen ** 2 / s ** 2
            lung = labels[k] > 0
            left, right = float(lung[:, centre > f["body_cx"]].sum()), float(lung[:, centre <= f["body_cx"]].sum())
            fraction = (left + right) / area
            rows = {"body_width_mm": abs(m["body_width_mm"] - 2 * f["body_a"] * widen),
                    "body_depth_mm": abs(m["body_depth_mm"] - 2 * f["body_b"] * widen),
                    "lung_fraction": abs(m["lung_fraction"] - fraction),
                    "habitus": m["habitus"] == f["habitus"],
                    "lungs": m["lungs"] == ("no_lungs" if fraction < SLICE_LUNG_MIN else f["asymmetry"])}
            if left + right > 0 and math.isfinite(m["lung_left_share"]):
                rows["lung_left_share"] = abs(m["lung_left_share"] - left / (left + right))
            for key, value in rows.items():
                table.setdefault(key, []).append(value)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    table = errors(args.n, args.size, args.seed)
    print(f"{args.n} phantoms at {args.size}^3 (seeds ({args.seed}, i)), their {len(table['habitus'])} non-blank "
          "axial slices; mean absolute error (max), or the fraction exact\n")
    print("| factor | error | slices |\n|---|---|---|")
    for key, values in table.items():
        v = np.asarray(values, dtype=float)
        cell = f"{v.mean():.2f}" if key in ("habitus", "lungs") else f"{v.mean():.3g} ({v.max():.3g})"
        print(f"| {key} | {cell} | {v.size} |")


if __name__ == "__main__":
    main()
