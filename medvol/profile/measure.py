"""Measuring one configuration for real: peak memory, iterations/s, data-wait, per-sub-step cost.

Runs inside a fresh worker process (see :mod:`medvol.profile.worker`) so that neither the
allocator cache nor the peak counters of one configuration leak into the next.

Peak memory:
    CUDA: ``max_memory_allocated`` (live tensors) and ``max_memory_reserved`` (what the caching
    allocator holds, i.e. what ``nvidia-smi`` minus the context shows), from a reset after the
    system and its optimizers are built, so parameters count and build temporaries do not.
    CPU: the process's peak resident set (``VmHWM``) above its idle baseline, the RSS after imports
    and before the system is built. Linux resets ``VmHWM`` when ``5`` is written to
    ``/proc/self/clear_refs``; that gives per-sub-step peaks too.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Iterator

import torch

from medvol.profile.cases import Case
from medvol.profile.system import BatchSource, amp_dtype, build_system, check_simulated_oom


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


class PeakCounter:
    """Peak memory of the whole run and of named regions, on CUDA or the CPU.

    The device counters have a single high-water mark; a region resets it on entry and exit, and
    every reading is folded into the running maximum of the run and of each open region, so
    nesting regions and the run's own peak stay exact.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.resettable = True
        if not self.cuda:
            try:
                self._clear_refs()
            except OSError:
                self.resettable = False  # not Linux, or no permission: run peak only
        self.baseline = 0 if self.cuda else _proc_status_kb("VmRSS") * 1024
        self.peak = 0
        self.peak_reserved = 0
        self.open: list[list[int]] = []
        self.regions: dict[str, list[int]] = {}

    @staticmethod
    def _clear_refs() -> None:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")

    def current(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return _proc_status_kb("VmRSS") * 1024 - self.baseline

    def _high_water(self) -> int:
        if self.cuda:
            self.peak_reserved = max(self.peak_reserved, torch.cuda.max_memory_reserved(self.device))
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status_kb("VmHWM") * 1024 - self.baseline

    def reset(self) -> None:
        """Start counting from now (call after building, before the first step)."""
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._clear_refs()
        self.peak = self.current()

    def fold(self) -> None:
        value = self._high_water()
        self.peak = max(self.peak, value)
        for frame in self.open:
            frame[0] = max(frame[0], value)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._clear_refs()

    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        self.fold()
        frame = [self.current()]
        self.open.append(frame)
        try:
            yield
        finally:
            self.fold()
            self.open.remove(frame)
            if self.resettable:
                self.regions.setdefault(name, []).append(frame[0])


class StepTimer:
    """Times named regions: CUDA events on the GPU (no synchronisation inside the step),
    ``perf_counter`` on the CPU. ``collect()`` after a synchronise returns seconds per region."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, object, object]] = []

    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self.pending.append((name, start, end))
        else:
            start = time.perf_counter()
            try:
                yield
            finally:
                self.pending.append((name, start, time.perf_counter()))

    def collect(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, start, end in self.pending:
            seconds = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            out[name] = out.get(name, 0.0) + seconds
        self.pending.clear()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_kernels() -> None:
    """Run tiny 3D and 2D convolutions forward and backward, fp32 and bf16, before the CPU
    baseline is taken: oneDNN and friends load their code lazily, and those resident pages are the
    library's, not the training step's."""
    for conv, x in ((torch.nn.Conv3d(1, 2, 3), torch.rand(1, 1, 4, 4, 4, requires_grad=True)),
                    (torch.nn.Conv2d(1, 2, 3), torch.rand(1, 1, 4, 4, requires_grad=True))):
        conv(x).sum().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x).float().sum().backward()


def measure(case: Case, result: dict) -> None:
    """Build, warm up and time ``case``, filling ``result`` as it goes.

    ``result`` is filled in place so that, when an out-of-memory error escapes, the worker still
    reports how far it got (parameter counts, the peak reached before the failure).
    """
    device = torch.device(case.device)
    if device.type == "cuda":
        if device.index is None:  # set_device and the memory-fraction cap need an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        total = torch.cuda.get_device_properties(device).total_memory
        result["device_total_bytes"] = int(total)
        if case.budget_bytes:
            # The cap emulates a smaller card: allocations beyond it raise OutOfMemoryError.
            torch.cuda.set_per_process_memory_fraction(min(1.0, case.budget_bytes / total), device)
    if device.type == "cpu":
        _load_kernels()
    counter = PeakCounter(device)
    result["peak_resettable"] = counter.resettable
    with torch.device(device):
        system = build_system(case)
    system.to(device).train()
    result["params"] = {key: int(value) for key, value in system.param_counts().items()}
    result["dims"] = int(getattr(system, "dims", 3))
    optimizers = system.make_optimizers()
    source = BatchSource(case, device, system)
    timer = StepTimer(device)
    counter.reset()
    result["static_bytes"] = int(counter.current())
    result["amp"] = "bf16" if amp_dtype(case) is torch.bfloat16 else "fp32"
    result["threads"] = torch.get_num_threads()
    step_times, data_times, substeps = [], [], {}

    def substep(name):
        stack = contextlib.ExitStack()
        stack.enter_context(counter.region(name))
        stack.enter_context(timer.region(name))
        return stack

    try:
        check_simulated_oom(case)
        for iteration in range(case.warmup + case.iters):
            real, data_s = source.next()
            _sync(device)
            start = time.perf_counter()
            system.train_step(real, optimizers, iteration, amp_dtype=amp_dtype(case), substep=substep)
            _sync(device)
            elapsed = time.perf_counter() - start
            del real
            per_substep = timer.collect()
            counter.fold()
            if iteration >= case.warmup:
                step_times.append(elapsed)
                data_times.append(data_s)
                for name, seconds in per_substep.items():
                    substeps.setdefault(name, []).append(seconds)
    finally:
        counter.fold()
        result["peak_bytes"] = int(counter.peak)
        if counter.cuda:
            result["peak_allocated_bytes"] = int(counter.peak)
            result["peak_reserved_bytes"] = int(counter.peak_reserved)
        else:
            result["peak_rss_bytes"] = int(counter.peak)
            result["rss_baseline_bytes"] = int(counter.baseline)
    median = statistics.median(step_times)
    result.update({
        "step_s": step_times,
        "step_s_median": median,
        "it_per_s": 1.0 / median,
        "data_wait_s_median": statistics.median(data_times),
        "substeps": {
            name: {"time_s_median": statistics.median(times),
                   "peak_bytes": int(max(counter.regions[name])) if name in counter.regions else None}
            for name, times in substeps.items()
        },
    })
