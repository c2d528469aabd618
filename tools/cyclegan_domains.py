"""Two unpaired phantom domains for CycleGAN: standard-dose CT (A) and low-dose CT (B).

Domain A: the phantom population as rendered (its own acquisition noise, 6-24 HU). Domain B: the
same population from other seeds with added white Gaussian noise of ``--noise-hu`` HU per voxel,
the look of a low-dose acquisition. Each domain is written as NIfTI volumes (HU) into its own
folder, ready for ``medvol preprocess --images slices``; ``domains.json`` records the seeds and
the added noise (the ground truth the translations are measured against, docs/models.md "CycleGAN").

    python tools/cyclegan_domains.py --out /tmp/cg --n 8 --size 64 --noise-hu 80

The noise measure used on the images, :func:`noise_std`, is here too: the robust (MAD) standard
deviation of horizontal neighbour differences inside the body, divided by sqrt(2) (for white
noise it is the per-pixel noise std; edges hardly move a median).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: Pixels counted as body in :func:`noise_std`: soft tissue in HU, clear of air and bone.
BODY_HU = (-300.0, 300.0)


def noise_std(images_hu: np.ndarray) -> float:
    """Robust noise std (HU) of 2D images ``[N, H, W]`` in HU: MAD of horizontal neighbour
    differences where both pixels lie in :data:`BODY_HU`, times 1.4826 / sqrt(2)."""
    left, right = images_hu[:, :, :-1], images_hu[:, :, 1:]
    inside = (left > BODY_HU[0]) & (left < BODY_HU[1]) & (right > BODY_HU[0]) & (right < BODY_HU[1])
    diff = (right - left)[inside]
    if diff.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def write_domain(out: Path, n: int, size: int, seed: int, noise_hu: float) -> list[str]:
    """Phantoms ``(seed, i)``, i < n, with ``noise_hu`` of added white noise, as ``out/*.nii.gz``."""
    from medvol.data.io import Volume, write_volume
    from medvol.data.phantom import render_phantom

    out.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng([seed, 7])
    names = []
    for i in range(n):
        phantom = render_phantom(size, (seed, i))
        hu = phantom.hu + rng.normal(0.0, noise_hu, phantom.hu.shape).astype(np.float32) if noise_hu else phantom.hu
        path = out / f"phantom_{i:04d}.nii.gz"
        write_volume(Volume(array=hu.astype(np.float32), spacing=phantom.spacing, origin=phantom.origin), path)
        names.append(path.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="new folder: A/ and B/ and domains.json go there")
    parser.add_argument("--n", type=int, default=8, help="volumes per domain")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed-a", type=int, default=101)
    parser.add_argument("--seed-b", type=int, default=202)
    parser.add_argument("--noise-hu", type=float, default=80.0, help="white noise added to domain B (HU)")
    args = parser.parse_args()
    if args.seed_a == args.seed_b:
        parser.error("--seed-a and --seed-b must differ: the domains are unpaired")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    record = {"size": args.size, "n": args.n,
              "A": {"seed": args.seed_a, "added_noise_hu": 0.0,
                    "files": write_domain(out / "A", args.n, args.size, args.seed_a, 0.0)},
              "B": {"seed": args.seed_b, "added_noise_hu": args.noise_hu,
                    "files": write_domain(out / "B", args.n, args.size, args.seed_b, args.noise_hu)}}
    (out / "domains.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.n} volumes per domain to {out}/A and {out}/B")


if __name__ == "__main__":
    main()
