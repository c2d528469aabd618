"""CPU time of one training step of a mask-conditioned 2D model (spade, pix2pix) at its published widths.

Usage:
    OMP_NUM_THREADS=1 python tools/bench_cond2d_step.py MODEL SIZE BATCH [ITERS]

Reference mode, float32, on the CPU; a synthetic batch (uniform image, one square mask). One
untimed step first (Adam's states). Prints the median process CPU time and wall time per step,
with the thread count and the load average: on a shared machine the CPU time is the figure to
compare (docs/models2d.md quotes it).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch

from medvol.models import build


def main(argv: list[str]) -> None:
    if len(argv) not in (3, 4):
        raise SystemExit(__doc__)
    name, size, batch = argv[0], int(argv[1]), int(argv[2])
    iters = int(argv[3]) if len(argv) == 4 else 3
    torch.manual_seed(0)
    system = build(name, size)
    optimizers = system.make_optimizers()
    mask = -torch.ones(batch, 1, size, size)
    mask[:, :, size // 3: size // 2, size // 3: size // 2] = 1
    real = torch.cat([torch.rand(batch, 1, size, size) * 2 - 1, mask], dim=1)
    generator = torch.Generator().manual_seed(0)
    system.train_step(real, optimizers, 0, generator=generator)
    wall, cpu = [], []
    for i in range(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        system.train_step(real, optimizers, i + 1, generator=generator)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(f"{name} {size}^2 batch {batch}: {statistics.median(cpu):.2f} CPU-s/step, "
          f"{statistics.median(wall):.2f} s wall (median of {iters}; cpu {platform.machine()}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main(sys.argv[1:])
