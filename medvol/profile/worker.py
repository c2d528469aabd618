"""The fresh process that profiles one configuration.

Usage (the runner does this; by hand it is handy for debugging one case)::

    python -m medvol.profile.worker --case case.json --result result.json

The case is a :class:`~medvol.profile.cases.Case` as JSON. The result JSON always gets written:
``status`` is ``"ok"``, ``"OOM"`` (out of memory is a result: CUDA ``OutOfMemoryError``, a CPU
``MemoryError`` or allocator failure, a simulated failure, or a peak above ``budget_bytes`` where
no cap can be set) or ``"error"`` (with the traceback). Exit status 0 unless ``"error"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from medvol.utils import atomic_path

#: Messages of allocation failures that surface as plain RuntimeErrors (CPU allocator, cuDNN).
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory",
                 "CUDNN_STATUS_ALLOC_FAILED", "failed to allocate")


def device_name(device: str) -> str:
    """Human name of the device: the GPU's name, or the CPU model and core count."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {model} ({os.cpu_count()} cores)"


def is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)


def run_case(case_dict: dict) -> dict:
    """Profile one case in this process; never raises for OOM (it is a result)."""
    import torch

    from medvol.profile.cases import Case

    case = Case.from_dict(case_dict)
    torch.manual_seed(case.seed)
    estimate_device = "cpu"  # fake tensors are traced on the CPU (see medvol.profile.estimate)
    result: dict = {"case": case.to_dict(), "status": "ok", "pid": os.getpid(),
                    "device_name": device_name(case.device if case.kind == "measure" else estimate_device)}
    start = time.perf_counter()
    try:
        if case.device.startswith("cuda") and case.kind == "measure" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: CUDA is not available in this process")
        if case.kind == "estimate":
            from medvol.profile.estimate import estimate

            result.update(estimate(case))
        else:
            from medvol.profile.measure import measure

            measure(case, result)
        budget = case.budget_bytes
        capped = case.kind == "measure" and case.device.startswith("cuda")
        if budget and not capped and result["peak_bytes"] > budget:
            result["status"] = "OOM"
            result["error"] = (f"peak {result['peak_bytes'] / 1e6:,.0f} MB exceeds the budget "
                               f"{budget / 1e6:,.0f} MB (checked after the run)")
    except BaseException as error:  # noqa: BLE001 - the worker reports everything as a result
        if isinstance(error, KeyboardInterrupt):
            raise
        result["status"] = "OOM" if is_oom(error) else "error"
        result["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        if result["status"] == "error":
            result["traceback"] = traceback.format_exc()[-4000:]
    result["wall_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medvol.profile.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--case", required=True, help="case JSON file")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    result = run_case(json.loads(Path(args.case).read_text(encoding="utf-8")))
    with atomic_path(args.result) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1), encoding="utf-8")
    summary = {k: result.get(k) for k in ("status", "peak_bytes", "it_per_s", "error")}
    print(json.dumps(summary), flush=True)
    return 1 if result["status"] == "error" else 0


if __name__ == "__main__":
    sys.exit(main())
