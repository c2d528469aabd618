"""Measure a cyclegan run on held-out phantom domains and draw its A, A->B, A->B->A grid.

    python tools/cyclegan_check.py --run RUN --a TEST_CACHE_A --b TEST_CACHE_B --out DIR

Translates the non-blank images of the held-out domain-A cache through the Sampler (A -> B, then
that back to A), and writes into ``DIR`` (a new folder):

- ``check.json``: the noise std (HU, :func:`cyclegan_domains.noise_std`) of the real A and B test
  images and of the translations, and the cycle error |A->B->A - A| (mean, HU);
- ``grid.png``: 8 images (columns), rows A, A->B, A->B->A, then a real B image per column (an
  unrelated one: the sets are unpaired), in the training window.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cyclegan_domains import noise_std  # noqa: E402

COLUMNS = 8


def _images(cache: str) -> tuple[np.ndarray, list[str], tuple[float, float]]:
    from medvol.data.image_datasets import CachedImageDataset

    data = CachedImageDataset(cache, split="all", content_only=True)
    return np.stack([data[i]["image"][0].numpy() for i in range(len(data))]), data.names, data.window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--a", required=True, help="held-out 2D image cache of domain A")
    parser.add_argument("--b", required=True, help="held-out 2D image cache of domain B")
    parser.add_argument("--out", required=True, help="new folder")
    args = parser.parse_args()
    from medvol.data.preprocess import to_intensity
    from medvol.sample.images import GRID_GAP, to_grey, write_png
    from medvol.sample.sampler import Sampler

    out = Path(args.out)
    if out.exists():
        parser.error(f"--out {out}: exists; give a new folder")
    torch.set_num_threads(1)
    sampler = Sampler.load(args.run, device="cpu")
    a, _, window = _images(args.a)
    b, _, window_b = _images(args.b)
    z = sampler.system.sample_latent(len(a))

    def translate(x: np.ndarray, direction: str) -> np.ndarray:
        return np.concatenate([sampler.draw(z[i:i + 32], images=torch.from_numpy(x[i:i + 32, None]),
                                            direction=direction)[:, 0] for i in range(0, len(x), 32)])

    ab = translate(a, "AB")
    aba = translate(ab, "BA")
    hu = {name: to_intensity(x, window) for name, x in (("A", a), ("B", b), ("A->B", ab), ("A->B->A", aba))}
    out.mkdir(parents=True)
    record = {
        "run": str(Path(args.run).resolve()), "iteration": int(sampler.state["iteration"]),
        "images_a": int(len(a)), "images_b": int(len(b)), "window": list(window),
        "noise_std_hu": {name: round(noise_std(x), 2) for name, x in hu.items()},
        "cycle_l1_hu": round(float(np.abs(hu["A->B->A"] - hu["A"]).mean()), 2),
        "change_l1_hu": round(float(np.abs(hu["A->B"] - hu["A"]).mean()), 2),
    }
    (out / "check.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    picks = np.linspace(0, len(a) - 1, COLUMNS + 2)[1:-1].round().astype(int)
    picks_b = np.linspace(0, len(b) - 1, COLUMNS + 2)[1:-1].round().astype(int)
    rows = [hu["A"][picks], hu["A->B"][picks], hu["A->B->A"][picks], hu["B"][picks_b]]
    side = a.shape[-1]
    grid = np.full((4 * side + 3 * GRID_GAP, COLUMNS * side + (COLUMNS - 1) * GRID_GAP), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            y, x = r * (side + GRID_GAP), c * (side + GRID_GAP)
            grid[y:y + side, x:x + side] = to_grey(image, (-300.0, 300.0))
    write_png(np.kron(grid, np.ones((2, 2), np.uint8)), out / "grid.png")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
