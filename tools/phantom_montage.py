"""Central axial / coronal / sagittal slices of several phantoms in one PNG (docs/img/).

Usage: python tools/phantom_montage.py --out docs/img/phantom_montage.png [--size 128] [--n 6]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodules", action="store_true")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medvol.data.phantom import FOV_XY_MM, FOV_Z_MM, render_phantom

    fig, axes = plt.subplots(3, args.n, figsize=(2.2 * args.n, 6.6), dpi=110)
    for j in range(args.n):
        p = render_phantom(args.size, (args.seed, j), nodules=args.nodules or j % 2 == 1)
        f = p.factors
        hu = np.clip(p.hu, -1024, 600)
        s = args.size
        def index(mm: float, fov: float) -> int:
            return int(np.clip(round((mm + fov / 2) / fov * s - 0.5), 0, s - 1))

        # Axial 40 mm above the heart's centre, coronal through the lungs' centre (the cavity's
        # middle), sagittal through the right lung.
        axial = hu[index(f["heart_z_mm"] + 40.0, FOV_Z_MM)]
        coronal = hu[::-1, index(f["body_cy"] - 4.0, FOV_XY_MM)]
        right_lung_x = f["body_cx"] - 0.5 * (f["body_a"] - 2.0 - f["fat_mm"] - f["muscle_mm"])
        sagittal = hu[::-1, :, index(right_lung_x, FOV_XY_MM)]
        views = [(axial, 1.0), (coronal, FOV_Z_MM / FOV_XY_MM), (sagittal, FOV_Z_MM / FOV_XY_MM)]
        for i, (img, aspect) in enumerate(views):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=-1024, vmax=600,
                      extent=(0, 1, 0, aspect), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{f['mode']}\nnodules {f['nodule_count']}", fontsize=7)
    for i, name in enumerate(("axial", "coronal", "sagittal")):
        axes[i, 0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
