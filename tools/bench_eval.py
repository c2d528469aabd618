"""Figures for docs/evaluation.md: FID's sample-size bias, and the eigen form against scipy's sqrtm.

    python tools/bench_eval.py [--dim 256] [--big-dim 2048] [--reps 3]

Prints markdown tables: (1) the Fréchet distance between two samples of one standard Gaussian
at several N (it is pure bias: the true distance is 0), (2) seconds per Fréchet distance at
D = --big-dim by medvol's eigen form and by pytorch-fid's scipy.linalg.sqrtm path, and their
difference.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medvol.eval.metrics import frechet_distance_from_stats, gaussian_stats  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--ns", default="500,1000,2000,8000")
    ap.add_argument("--big-dim", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"CPU: {cpu_name()}; numpy {np.__version__}; command: python tools/bench_eval.py "
          + " ".join(sys.argv[1:]))
    print()
    print(f"| N | FID of two samples of one Gaussian, D = {args.dim} (mean of {args.reps}) | D^2 / 2N |")
    print("|---|---|---|")
    for n in (int(x) for x in args.ns.split(",")):
        vals = [frechet_distance_from_stats(*gaussian_stats(rng.standard_normal((n, args.dim))),
                                            *gaussian_stats(rng.standard_normal((n, args.dim))))
                for _ in range(args.reps)]
        print(f"| {n} | {statistics.mean(vals):.2f} | {args.dim ** 2 / (2 * n):.2f} |")
    print()
    from pytorch_fid.fid_score import calculate_frechet_distance

    d = args.big_dim
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    a = rng.standard_normal((3 * d, d)) @ mix
    b = (rng.standard_normal((3 * d, d)) + 0.1) @ (mix + 0.05 * np.eye(d))
    s1, s2 = gaussian_stats(a), gaussian_stats(b)
    t_eig, t_sqrtm = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        ours = frechet_distance_from_stats(*s1, *s2)
        t_eig.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = calculate_frechet_distance(*s1, *s2)
        t_sqrtm.append(time.perf_counter() - t)
    print(f"| D = {d} | seconds (median of {args.reps}) | value |")
    print("|---|---|---|")
    print(f"| medvol eigen form | {statistics.median(t_eig):.2f} | {ours:.6f} |")
    print(f"| pytorch-fid (scipy sqrtm) | {statistics.median(t_sqrtm):.2f} | {float(theirs):.6f} |")
    print(f"\nrelative difference {abs(ours - theirs) / abs(theirs):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
