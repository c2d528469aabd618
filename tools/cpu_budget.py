"""Run a command for a fixed budget of CPU time, and log the CPU time at which each checkpoint appeared.

    python tools/cpu_budget.py --budget 300 --watch RUN/checkpoints --out RUN_cpu.json -- \\
        medvol train --config configs/demo.yaml --train.out RUN

On a machine shared with other jobs, wall time says little about what a training costs; the CPU
time of the training process does. This wrapper starts the command, polls the CPU time (user +
system) of its whole process tree (the command, its data-loader workers and their reaped
children), and sends it SIGTERM once that reaches ``--budget`` seconds; medvol's trainer then saves
a checkpoint at the end of the current iteration and exits 143. Two trainings given the same
budget have thus run for the same CPU time, whatever else the machine was doing.

While it runs, every new ``ckpt_*.pt`` in ``--watch`` whose ``.sha256`` sidecar is written (the
checkpoint is complete then) is logged with the tree's CPU time at that moment (polled every
``--poll`` seconds, so up to one poll late). At the end, ``--out`` (JSON) records the command, the
budget, the exact user and system CPU seconds of the command and its descendants
(``os.wait4``), their peak resident memory (the largest of any one process), the wall time, the
exit status and the checkpoints with their CPU times. Without ``--budget`` the command runs to its
end and is only measured.

Linux only (it reads ``/proc``). The exit status is the command's, except that a command stopped by
the budget with 143 (SIGTERM handled) or -15 (killed by it) counts as success (0).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_CKPT = re.compile(r"^ckpt_(\d+)\.pt$")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime + cutime + cstime in seconds) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ")".
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); ppid is field 4; utime..cstime are fields 14..17.
    ppid = int(fields[1])
    ticks = sum(int(x) for x in fields[11:15])
    return ppid, ticks / _TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and all its live descendants, including the children
    each of them has already reaped (``cutime``/``cstime``); a live child's time is not yet in its
    parent's ``cutime``, so nothing is counted twice."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _stat(int(entry))
            if got is not None:
                table[int(entry)] = got
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total


def complete_checkpoints(folder: Path) -> dict[int, Path]:
    """Iteration -> path of every ``ckpt_*.pt`` in ``folder`` whose ``.sha256`` sidecar exists."""
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            m = _CKPT.match(path.name)
            if m and Path(f"{path}.sha256").is_file():
                found[int(m.group(1))] = path
    return found


def run(command: list[str], *, budget: float | None, watch: Path | None, poll: float = 0.5,
        stdout=None) -> dict:
    """Run ``command``; stop it with SIGTERM at ``budget`` CPU seconds; return the measurements.

    ``stdout``: where the command's output and errors go (a file object), or None to inherit ours.
    """
    seen = complete_checkpoints(watch) if watch is not None else {}
    log = []
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=stdout, stderr=None if stdout is None else subprocess.STDOUT)
    stopped_at = None
    status = rusage = None
    while status is None:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            status, rusage = st, ru
            break
        cpu = tree_cpu_seconds(proc.pid)
        if watch is not None:
            for it, path in sorted(complete_checkpoints(watch).items()):
                if it not in seen:
                    seen[it] = path
                    log.append({"iteration": it, "file": path.name, "cpu_s": round(cpu, 2),
                                "wall_s": round(time.perf_counter() - started, 2)})
        if budget is not None and stopped_at is None and cpu >= budget:
            stopped_at = cpu
            proc.send_signal(signal.SIGTERM)
        time.sleep(poll)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = rusage.ru_utime + rusage.ru_stime
    if watch is not None:  # the checkpoint written on SIGTERM (or at the very end) is logged at the total
        for it, path in sorted(complete_checkpoints(watch).items()):
            if it not in seen:
                log.append({"iteration": it, "file": path.name, "cpu_s": round(cpu, 2),
                            "wall_s": round(wall, 2)})
    # wait4's ru_maxrss is the largest resident set of the command or any descendant it reaped (KiB).
    return {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "budget_cpu_s": budget,
        "stopped_by_budget": stopped_at is not None,
        "cpu_at_stop_signal_s": None if stopped_at is None else round(stopped_at, 2),
        "user_s": round(rusage.ru_utime, 2),
        "sys_s": round(rusage.ru_stime, 2),
        "cpu_s": round(cpu, 2),
        "max_rss_mib": round(rusage.ru_maxrss / 1024, 1),
        "wall_s": round(wall, 2),
        "returncode": proc.returncode,
        "checkpoints": log,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, help="CPU seconds after which the command gets SIGTERM")
    parser.add_argument("--watch", type=Path, help="folder of ckpt_*.pt files to log with their CPU time")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the measurements")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between two looks (default 0.5)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget {args.budget}: must be positive")
    if args.out.exists():
        parser.error(f"--out {args.out}: exists; choose another name")
    result = run(command, budget=args.budget, watch=args.watch, poll=args.poll)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"cpu {result['cpu_s']} s (user {result['user_s']}, sys {result['sys_s']}), wall {result['wall_s']} s, "
          f"peak RSS {result['max_rss_mib']} MiB, exit {result['returncode']}, "
          f"{len(result['checkpoints'])} checkpoints -> {args.out}")
    rc = result["returncode"]
    return 0 if result["stopped_by_budget"] and rc in (143, -15) else (rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    sys.exit(main())
