"""Running configurations, each in a fresh worker process, and searching for the largest batch.

Example:
    >>> from medvol.profile import Case, run_profile, grid          # doctest: +SKIP
    >>> cases = grid(["crfgan"], [64], [1, 2], ["reference", "optimized"], device="cpu")
    >>> report = run_profile(cases, "out/")                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from medvol.errors import MedvolError
from medvol.profile.cases import DEFAULT_MAX_BATCH_LIMIT, Case, model_dims
from medvol.utils import write_failure


def run_in_subprocess(case: Case, *, timeout: float | None = None) -> dict:
    """Profile ``case`` in a fresh ``python -m medvol.profile.worker`` and return its result.

    A worker killed by SIGKILL (the kernel's OOM killer) is an ``"OOM"`` result; a timeout or a
    crash without a result is an ``"error"`` result with the tail of its stderr.
    """
    with contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="medvol-profile-"))
            case_file, result_file = Path(tmp, "case.json"), Path(tmp, "result.json")
            case_file.write_text(json.dumps(case.to_dict()), encoding="utf-8")
        except OSError as error:  # the temporary folder's disk is full
            raise MedvolError(f"cannot write the profile worker's case file in {tempfile.gettempdir()}: "
                              f"{write_failure(error, tempfile.gettempdir())}") from None
        command = [sys.executable, "-m", "medvol.profile.worker", "--case", str(case_file),
                   "--result", str(result_file)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=os.environ.copy())
        except subprocess.TimeoutExpired:
            return {"case": case.to_dict(), "status": "error",
                    "error": f"timed out after {timeout:g} s"}
        if result_file.exists():
            return json.loads(result_file.read_text(encoding="utf-8"))
        killed = proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        return {"case": case.to_dict(), "status": "OOM" if killed else "error",
                "error": ("worker killed by SIGKILL (the kernel's out-of-memory killer?)" if killed
                          else f"worker exited {proc.returncode} without a result: " + " | ".join(tail))}


def find_max_batch(base: Case, *, limit: int = 64,
                   run: Callable[[Case], dict] = run_in_subprocess) -> dict:
    """Largest batch of ``base`` that does not run out of memory: doubling, then bisection.

    Each trial is one warm-up and one timed iteration (the second step already holds the Adam
    states, so it is the steady state).

    Returns:
        ``{"model", "size", "mode", "kind", "max_batch", "at_limit", "trials": [...], "error"}``;
        ``max_batch`` 0 when even batch 1 does not fit, ``at_limit`` when ``limit`` fit (the true
        maximum may be larger), ``error`` set when a trial failed for another reason.
    """
    trials: list[dict] = []
    outcome = {"model": base.model, "size": base.size, "mode": base.mode, "kind": base.kind,
               "max_batch": 0, "at_limit": False, "trials": trials, "error": None}

    def fits(batch: int) -> bool | None:
        case = dataclasses.replace(base, batch=batch, warmup=1, iters=1)
        result = run(case)
        trials.append({"batch": batch, "status": result["status"],
                       "peak_bytes": result.get("peak_bytes"), "error": result.get("error")})
        if result["status"] == "error":
            outcome["error"] = f"batch {batch}: {result.get('error')}"
            return None
        return result["status"] == "ok"

    good, bad, batch = 0, None, 1
    while batch <= limit:
        ok = fits(batch)
        if ok is None:
            return outcome
        if not ok:
            bad = batch
            break
        good, batch = batch, batch * 2
    if bad is None and good < limit:
        # Doubling overshot the limit with everything fitting: try the limit itself.
        ok = fits(limit)
        if ok is None:
            return outcome
        if ok:
            good = limit
        else:
            bad = limit
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        ok = fits(middle)
        if ok is None:
            return outcome
        good, bad = (middle, bad) if ok else (good, middle)
    outcome["max_batch"] = good
    outcome["at_limit"] = bad is None
    return outcome


def run_profile(cases: list[Case], out: str | os.PathLike, *, max_batch: bool = False,
                max_batch_limit: int | None = None, command: str | None = None, timeout: float | None = None,
                log: Callable[[str], None] = print,
                run: Callable[[Case], dict] | None = None) -> dict:
    """Profile every case (fresh process each), optionally search the largest batch, and write
    ``profile.md``, ``profile.csv``, ``profile.json`` and ``profile.png`` into ``out``.

    ``profile.json`` is rewritten (atomically) after every case, so a long sweep that is stopped
    keeps what it measured. ``max_batch_limit`` None searches up to 64 for 3D models and 1024
    for 2D ones (:data:`medvol.profile.cases.DEFAULT_MAX_BATCH_LIMIT`).

    Returns:
        The report dict written to ``profile.json``: ``meta``, ``results``, ``max_batch``.
    """
    from medvol.profile.report import environment, write_json, write_outputs

    run = run or (lambda case: run_in_subprocess(case, timeout=timeout))
    out = Path(out)
    try:  # checked before any case runs: a folder that cannot be made fails in a second, not after an hour
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"cannot create output folder {out}: {write_failure(error, out.parent)}") from None
    report = {"meta": environment(command), "results": [], "max_batch": []}
    for index, case in enumerate(cases, 1):
        result = run(case)
        report["results"].append(result)
        log(f"[{index}/{len(cases)}] {case.label}: {_summary(result)}")
        write_json(report, out / "profile.json")
    if max_batch:
        seen = set()
        for case in cases:
            key = (case.model, case.size, case.mode, case.kind)
            # Nothing runs out of memory on fake tensors unless a budget says where the card ends.
            if key in seen or (case.kind == "estimate" and not case.budget_bytes):
                continue
            seen.add(key)
            dims = model_dims(case.model)
            limit = max_batch_limit or DEFAULT_MAX_BATCH_LIMIT[dims]
            found = find_max_batch(case, limit=limit, run=run)
            report["max_batch"].append(found)
            text = found["error"] or f"{found['max_batch']}{'+' if found['at_limit'] else ''}"
            log(f"largest batch {case.model} {case.size}^{dims} {case.mode} ({case.kind}): {text}")
            write_json(report, out / "profile.json")
    names = {r.get("device_name") for r in report["results"] if r.get("device_name")}
    report["meta"]["device"] = " + ".join(sorted(names)) or "unknown"
    write_outputs(report, out)
    return report


def _summary(result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['status']} ({result.get('error', '')})"
    text = f"peak {result['peak_bytes'] / 2**20:,.0f} MiB"
    if result.get("it_per_s"):
        text += f", {result['it_per_s']:.3g} it/s"
    if result.get("trace_s") is not None:
        text += f" (traced in {result['trace_s']:.1f} s)"
    return text
