"""Reference vs optimized mode on this CPU, in fp32 (what ``train.amp auto`` picks where the CPU has
no native bf16) and in bf16, as CPU seconds per training step.

    OMP_NUM_THREADS=1 python tools/bench_amp_cpu.py --model crfgan,hagan --size 32,64 --rounds 3

CPU time (``time.thread_time`` of the one compute thread) is what a step costs whatever else the
machine runs, where wall time on a shared machine mostly measures the neighbours. The settings are
interleaved round by round (reference, optimized fp32, optimized bf16, reference, ...) so that a
drift in the machine's state touches all of them alike. Prints a markdown table; the medians over
rounds of the per-round medians over ``--iters`` steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

SETTINGS = (("reference", "reference", None), ("optimized fp32", "optimized", None),
            ("optimized bf16", "optimized", torch.bfloat16))


def step_seconds(model: str, size: int, batch: int, width: int, mode: str, amp, iters: int) -> list[float]:
    """CPU seconds of each of ``iters`` training steps after one warm-up step."""
    from medvol.profile.cases import Case
    from medvol.profile.system import BatchSource, build_system

    case = Case(model, size, batch, mode, base_width=width)
    torch.manual_seed(0)
    system = build_system(case).train()
    optimizers = system.make_optimizers()
    source = BatchSource(case, torch.device("cpu"), system)
    times = []
    for iteration in range(iters + 1):
        real, _ = source.next()
        start = time.thread_time()
        system.train_step(real, optimizers, iteration, amp_dtype=amp)
        if iteration:
            times.append(time.thread_time() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crfgan,hagan")
    parser.add_argument("--size", default="32,64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base-width", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if torch.get_num_threads() != 1:
        raise SystemExit("run with OMP_NUM_THREADS=1: thread_time counts the one compute thread")
    from medvol.utils import cpu_has_native_bf16, cpu_model_name

    print(f"device: CPU {cpu_model_name()}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_native_bf16()}, "
          f"1 thread, load {os.getloadavg()[0]:.1f}; torch {torch.__version__}")
    print()
    print("| model | size | " + " | ".join(name for name, _, _ in SETTINGS) + " | fp32 opt / ref |")
    print("|---|---|" + "---|" * (len(SETTINGS) + 1))
    for model in args.model.split(","):
        for size in (int(s) for s in args.size.split(",")):
            rounds: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
            for _ in range(args.rounds):
                for name, mode, amp in SETTINGS:
                    times = step_seconds(model, size, args.batch, args.base_width, mode, amp, args.iters)
                    rounds[name].append(statistics.median(times))
            cells = {name: statistics.median(values) for name, values in rounds.items()}
            ratio = cells["optimized fp32"] / cells["reference"]
            print(f"| {model} | {size}³ b{args.batch} | "
                  + " | ".join(f"{cells[name]:.3f} s" for name, _, _ in SETTINGS) + f" | {ratio:.2f}× |",
                  flush=True)


if __name__ == "__main__":
    main()
