"""Do a paired model's lung labels lie on the lungs of its own images? Dice against a threshold segmentation.

    python tools/paired_agreement.py RUN --n 64 --out DIR [--seed 0] [--eval-seed 1000]

For a checkpoint trained on phantoms with ``model.mask_channels`` K >= 1 (class 1: lungs), 2D or
3D (docs/diffusion.md "Paired image + mask generation"). The agreement is the Dice between a
sample's generated lung label and a threshold segmentation of the lungs in the sample's own image:
:func:`lung_threshold` (below -500 HU, not connected to the image border in its axial slice,
holes filled, so that the vessels inside a lung count as lung). Three numbers, mean over items:

- ``real``: the phantoms' true lung labels against the threshold segmentation of the phantom
  images (held-out phantoms of ``--eval-seed``): the most a sample can reach, since the
  threshold segmentation is not the phantom's labelling (it takes the trachea, leaves thin edges);
- ``fake``: each sample's label against its own image's segmentation;
- ``fake_shuffled``: each sample's label against another sample's image (the next one): what a
  label that fits the population but not its image gets.

``OUT/agreement.json`` holds them (and the per-item values), ``OUT/samples.png`` shows samples
(axial slices through the middle in 3D) with the generated lung label's outline (green) and the
threshold segmentation's (red), beside real items drawn the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

THRESHOLD_HU = -500.0


def lung_threshold(hu: np.ndarray, threshold: float = THRESHOLD_HU) -> np.ndarray:
    """Lungs by threshold: per axial slice (the last two axes) the voxels below ``threshold`` not
    connected to the slice border (outside air), holes filled. ``hu``: (H, W) or (D, H, W)."""
    from scipy import ndimage

    slices = hu[None] if hu.ndim == 2 else hu
    out = np.zeros(slices.shape, dtype=bool)
    for i, plane in enumerate(slices):
        dark = plane < threshold
        parts, _ = ndimage.label(dark)
        border = np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]))
        inside = dark & ~np.isin(parts, border[border > 0])
        out[i] = ndimage.binary_fill_holes(inside)
    return out[0] if hu.ndim == 2 else out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def agreement(hu: np.ndarray, labels: np.ndarray) -> dict:
    """``hu`` [N, ...] images, ``labels`` [N, ...] label maps (1 = lungs): per-item Dice of the label
    against its own image's threshold segmentation, and against the next item's (shuffled)."""
    seg = [lung_threshold(x) for x in hu]
    own = [dice(labels[i] == 1, seg[i]) for i in range(len(hu))]
    shuffled = [dice(labels[i] == 1, seg[(i + 1) % len(hu)]) for i in range(len(hu))] if len(hu) > 1 else []
    return {"mean": float(np.mean(own)), "shuffled_mean": float(np.mean(shuffled)) if shuffled else None,
            "per_item": [round(v, 4) for v in own]}


def to_hu(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return (np.clip(x, -1, 1) + 1) / 2 * (hi - lo) + lo


def _mid(x: np.ndarray) -> np.ndarray:
    return x[x.shape[0] // 2] if x.ndim == 3 else x


def figure(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray]], window) -> None:
    """One panel per item: the image (display window) with the label's outline (green) and the
    threshold segmentation's (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 8
    n = len(rows)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(cols * 1.6, ((n + cols - 1) // cols) * 1.75),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, hu, labels) in zip(axes.ravel(), rows):
        image = _mid(hu)
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        ax.contour(_mid(labels) == 1, levels=[0.5], colors="lime", linewidths=0.7)
        ax.contour(lung_threshold(image), levels=[0.5], colors="red", linewidths=0.5)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    import torch

    from medvol.data.paired import labels_from_channels
    from medvol.models import spec
    from medvol.train.checkpoint import load_checkpoint
    from medvol.train.data import build_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder or checkpoint of a paired model trained on phantoms")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="latent seed of the samples")
    parser.add_argument("--eval-seed", type=int, default=1000, help="phantom seed of the real items")
    parser.add_argument("--steps", type=int, help="denoising steps (diffusion models; default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT's agreement.json and samples.png")
    args = parser.parse_args()
    out = Path(args.out)
    taken = [out / name for name in ("agreement.json", "samples.png") if (out / name).exists()]
    if taken and not args.overwrite:
        raise SystemExit(f"paired_agreement: {taken[0]} exists; give another --out or --overwrite")
    if args.n < 2:
        raise SystemExit(f"paired_agreement: --n must be at least 2 (the shuffled pairs), got {args.n}")

    torch.set_num_threads(1)
    system, cfg, state = load_checkpoint(args.run)
    if int(getattr(system, "mask_channels", 0)) < 1 or cfg.data.source != "phantom":
        raise SystemExit("paired_agreement: needs a model with model.mask_channels >= 1 trained on phantoms")
    system.set_mode("reference")
    window = tuple(state["data"]["window"])
    z = system.sample_latent(args.n, generator=torch.Generator().manual_seed(args.seed), device=torch.device("cpu"))
    extra = {"steps": args.steps} if args.steps else {}
    fake = torch.cat([system.generate(z[i:i + 8], **extra).float() for i in range(0, args.n, 8)]).numpy()

    dims = spec(cfg.model.name).dims
    data = dataclasses.replace(cfg.data, phantom_seed=args.eval_seed, phantom_n=max(args.n, 16) if dims == 3 else 16)
    dataset = build_dataset(data, cfg.model.size, dims=dims, channels=1 + cfg.model.mask_channels,
                            mask_channels=cfg.model.mask_channels)
    index = np.linspace(0, len(dataset) - 1, min(args.n, len(dataset))).round().astype(int)
    real = np.stack([np.asarray(dataset[int(i)]["image"], dtype=np.float32) for i in index])

    results, shown = {}, []
    for name, items in (("real", real), ("fake", fake)):
        hu = to_hu(items[:, 0], window)
        labels = np.stack([labels_from_channels(x[1:]) for x in items])
        results[name] = agreement(hu, labels)
        shown += [(f"{name} {i}", hu[i], labels[i]) for i in range(min(8, len(hu)))]
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(state.get("path", args.run)), "iteration": int(state["iteration"]),
               "n": [len(real), len(fake)], "threshold_hu": THRESHOLD_HU, "seed": args.seed,
               "eval_seed": args.eval_seed, "dice_real": round(results["real"]["mean"], 4),
               "dice_fake": round(results["fake"]["mean"], 4),
               "dice_fake_shuffled": round(results["fake"]["shuffled_mean"], 4), "per_item": results}
    (out / "agreement.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    figure(out / "samples.png", shown, window)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_item"}))


if __name__ == "__main__":
    main()
