"""Do a paired model's label maps sit on its anatomy? Statistics of generated vs phantom label maps.

Generates ``--n`` samples of a paired image + mask checkpoint trained on phantoms and prints, for
them and for the first ``--n`` training phantoms, per class the median HU under the label (mean
over volumes), the lung share of voxels and the nodule voxels per volume; optionally draws mid
planes of one phantom and two samples beside their label maps (docs/models.md, "Paired image +
mask generation").

Usage:
    python tools/paired_label_stats.py RUN_DIR --out DIR [--n 8] [--seed 0] [--figure PNG]
"""

from __future__ import annotations

import argparse

import numpy as np


def label_stats(hu: np.ndarray, labels: np.ndarray) -> list[float]:
    """[median HU under lungs (1), background (0), nodules (2) or nan, lung share, nodule voxels]."""
    nodules = labels == 2
    return [float(np.median(hu[labels == 1])) if (labels == 1).any() else float("nan"),
            float(np.median(hu[labels == 0])), float(np.median(hu[nodules])) if nodules.any() else float("nan"),
            float((labels == 1).mean()), float(nodules.sum())]


def main() -> None:
    import SimpleITK as sitk

    from medvol.data.datasets import PhantomVolumeDataset
    from medvol.data.preprocess import to_intensity
    from medvol.train.checkpoint import load_checkpoint
    from medvol.sample.generate import generate_volumes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder or checkpoint of a paired model trained on phantoms")
    parser.add_argument("--out", required=True, help="folder for the generated samples")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", help="PNG of mid planes (needs matplotlib)")
    args = parser.parse_args()

    _, cfg, state = load_checkpoint(args.run)
    window = tuple(state["data"]["window"])
    data = cfg.data
    phantoms = PhantomVolumeDataset(cfg.model.size, data.phantom_n, seed=data.phantom_seed,
                                    nodules=data.phantom_nodules)
    real = [phantoms.volume_and_labels(i) for i in range(min(args.n, len(phantoms)))]
    real = [(to_intensity(x, window), labels) for x, labels in real]
    fake = []
    for path in generate_volumes(args.run, args.n, args.out, seed=args.seed, device="cpu"):
        mask = path.with_name(path.name.replace(".nii.gz", "_mask.nii.gz"))
        fake.append((sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                     sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))))
    print("| | median HU under lungs (1) | under background (0) | under nodules (2) | lung share | nodule voxels |")
    print("|---|---|---|---|---|---|")
    for name, pairs in (("phantoms", real), (f"generated, iteration {state['iteration']}", fake)):
        rows = np.array([label_stats(hu, labels) for hu, labels in pairs])
        means = [np.nanmean(rows[:, k]) if np.isfinite(rows[:, k]).any() else float("nan") for k in range(5)]
        with_nodules = int((rows[:, 4] > 0).sum())
        print(f"| {name} | {means[0]:.0f} | {means[1]:.0f} | {means[2]:.0f} | {means[3]:.3f} | "
              f"{means[4]:.1f} ({with_nodules} of {len(rows)}) |")
    if args.figure:
        _figure(args.figure, [real[min(1, len(real) - 1)], *fake[:2]])


def _figure(path: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 4, figsize=(8, 2 * len(pairs)))
    titles = ["phantom (training)"] + [f"generated #{i}" for i in range(len(pairs) - 1)]
    for row, (hu, labels) in enumerate(pairs):
        mid = hu.shape[0] // 2
        views = [(hu[mid], "gray", -1024, 600), (labels[mid], "viridis", 0, 2),
                 (hu[:, mid][::-1], "gray", -1024, 600), (labels[:, mid][::-1], "viridis", 0, 2)]
        for ax, (image, cmap, low, high) in zip(axes[row], views):
            ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(titles[row])
    for ax, title in zip(axes[0], ["axial", "label map", "coronal", "label map"]):
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


if __name__ == "__main__":
    main()
