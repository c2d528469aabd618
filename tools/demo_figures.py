"""The README's demo figures, made from real runs: before/after samples and the score curve.

    python tools/demo_figures.py --real CACHE --run before=RUN_A --run after=RUN_B \\
        --curve EVAL_DIR/curve.csv --out docs/img

``--run LABEL=RUN`` (repeatable): the run's latest checkpoint generates ``--samples`` volumes with
seed 0, exactly as ``tools/demo.py`` does (``medvol.sample.generate.generate_volumes``); one row of
central axial slices per run, below a row of real volumes from ``--real`` (a preprocessing cache),
all in HU, window [-1024, 600]. Written as ``demo_before_after.png``.

``--curve CSV``: a ``curve.csv`` of ``medvol evaluate --run RUN --every K``; its FID, precision,
recall and coverage columns (``volume/fid`` etc.) are plotted against the iteration as ``demo_curve.png``,
with the best checkpoint of the ``best.json`` beside it dotted.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

CURVE_SCORES = ("fid", "precision", "recall", "coverage")


def axial(volume: np.ndarray) -> np.ndarray:
    """The central slice across the first axis (axial: medvol's arrays are [z, y, x])."""
    return volume[volume.shape[0] // 2]


def real_slices(cache: Path, n: int) -> list[np.ndarray]:
    from medvol.data.cache import VOLUME_DIR, load_manifest
    from medvol.data.preprocess import to_intensity

    manifest = load_manifest(cache)
    window = manifest["params"]["window"]
    files = sorted((cache / VOLUME_DIR).glob("[!.]*.npy"))[:n]
    return [axial(to_intensity(np.load(f), tuple(window))) for f in files]


def sample_slices(run: Path, n: int) -> tuple[list[np.ndarray], str]:
    from medvol.data.io import read_volume
    from medvol.train.checkpoint import resolve_checkpoint
    from medvol.sample.generate import generate_volumes

    ckpt = resolve_checkpoint(run)
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_volumes(ckpt, n, tmp, seed=0, device="cpu")
        return [axial(read_volume(p).array) for p in paths], ckpt.name


def before_after(real: Path, runs: list[tuple[str, Path]], n: int, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real phantoms", real_slices(real, n))]
    for label, run in runs:
        slices, ckpt = sample_slices(run, n)
        rows.append((f"{label}\n{ckpt}", slices))
    fig, axes = plt.subplots(len(rows), n, figsize=(2.2 * n, 2.3 * len(rows)), dpi=100, squeeze=False)
    for r, (label, slices) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(slices):
                ax.imshow(slices[c], cmap="gray", vmin=-1024, vmax=600, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("central axial slices, HU [-1024, 600]", fontsize=9)
    fig.tight_layout()
    path = out / "demo_before_after.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def curve(csv_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    its = [int(r["iteration"]) for r in rows]
    # Columns are named extractor-view/score ("volume/fid"); plot the first column of each score.
    names = [next(c for c in rows[0] if c == k or c.endswith("/" + k)) for k in CURVE_SCORES
             if any(c == k or c.endswith("/" + k) for c in rows[0])]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 2.8), dpi=100, squeeze=False)
    best = csv_path.parent / "best.json"
    best_it = json.loads(best.read_text(encoding="utf-8"))["best_iteration"] if best.is_file() else None
    for ax, name in zip(axes[0], names):
        ax.plot(its, [float(r[name]) for r in rows], marker="o")
        if best_it is not None:
            ax.axvline(best_it, color="grey", linestyle=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"domain features, {csv_path.parent.name}", fontsize=9)
    fig.tight_layout()
    path = out / "demo_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, help="preprocessing cache of real volumes (with --run)")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=RUN", help="a labelled run folder")
    parser.add_argument("--curve", type=Path, help="curve.csv of `medvol evaluate --run`")
    parser.add_argument("--samples", type=int, default=2, help="volumes per row (default 2)")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    runs = []
    for item in args.run:
        label, sep, run = item.rpartition("=")  # the label may hold "=", a run path rarely
        if not sep:
            parser.error(f"--run {item}: expected LABEL=RUN")
        runs.append((label, Path(run)))
    if runs and args.real is None:
        parser.error("--run needs --real")
    args.out.mkdir(parents=True, exist_ok=True)
    if runs:
        print(before_after(args.real, runs, args.samples, args.out))
    if args.curve is not None:
        print(curve(args.curve, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
