"""Timing and peak-memory measurement shared by ``tools/bench_*.py`` (scripts, not tests).

Each configuration runs in a fresh process (:func:`run_isolated`) so that peak memory starts clean:
on CUDA the peak of ``torch.cuda.max_memory_allocated`` above what the inputs hold; on the CPU the
peak resident set size above the RSS after the inputs were made (Linux: VmHWM reset through
``/proc/self/clear_refs``).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """Theoretical DRAM bandwidth of a CUDA device in GB/s (DDR: two transfers per clock)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def median_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call above what is live before it, in MB (1e6 bytes)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")  # resets VmHWM to the current RSS
    fn()
    return (_rss_kb("VmHWM") - base) * 1024 / 1e6


# glibc returns large blocks to the OS on free only above its mmap threshold, which it raises
# dynamically; a fixed threshold keeps RSS tracking live tensor memory on the CPU.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_isolated(script: str, config: dict, timeout: float = 1800) -> dict:
    """Runs ``script --worker JSON`` in a fresh interpreter and returns the JSON line it prints."""
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(config)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **_MALLOC_ENV})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {**config, "error": last}
    return {**config, **json.loads(proc.stdout.strip().splitlines()[-1])}


def write_csv(path: Path, rows: list[dict], keys: tuple[str, ...]) -> None:
    """Merges ``rows`` into the CSV at ``path``: a new row replaces the old one with the same
    ``keys`` (device name first), so other devices and configurations are kept."""

    def key(row):
        return tuple(str(row.get(k)) for k in keys)

    new = {key(r) for r in rows}
    old = []
    if path.exists():
        with path.open(newline="", encoding="utf-8") as fh:
            old = [r for r in csv.DictReader(fh) if key(r) not in new]
    fields = list(dict.fromkeys([k for r in old + rows for k in r]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(old + rows)
    tmp.replace(path)


def fmt(value, digits: int = 2) -> str:
    if value is None or value == "":
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
