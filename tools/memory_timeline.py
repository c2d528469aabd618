"""Where the memory of one training iteration goes, by layer.

On CUDA: records the allocator's history over one iteration (after a warm-up iteration, so the
Adam states exist) and saves ``memory_snapshot.pickle`` — drag it onto https://pytorch.org/memory_viz
for the timeline — plus a summary of the leaf modules whose forward keeps the most memory
allocated (activations saved for backward and outputs).

On the CPU (or with ``--fake``): the same iteration traced on fake tensors
(:mod:`medvol.profile.estimate`); the summary lists what is alive at the estimated peak, by the
module that allocated it, and the largest single tensors.

Usage::

    python tools/memory_timeline.py --model crfgan --size 256 --batch 2 --mode optimized --out tl/
    python tools/memory_timeline.py --model hagan --size 512 --batch 1 --fake --out tl512/

Writes ``memory_timeline.md`` and ``memory_timeline.json`` (and the snapshot on CUDA) into --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

from medvol.profile.cases import Case
from medvol.profile.system import BatchSource, amp_dtype, build_system
from medvol.utils import atomic_path

MIB = 2**20


def fake_summary(case: Case, top: int) -> dict:
    """Live memory at the estimated peak, grouped by the (innermost) module that allocated it."""
    from medvol.profile.estimate import estimate

    result = estimate(case, keep_allocations=True)
    by_module: dict[str, list] = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    for nbytes, op, module, phase in result["allocations_at_peak"]:
        entry = by_module[f"{module} [{phase}]"]
        entry[0] += nbytes
        entry[1] += 1
        entry[2][op] += nbytes
    modules = sorted(by_module.items(), key=lambda item: -item[1][0])[:top]
    return {
        "kind": "estimate (fake tensors)",
        "peak_bytes": result["peak_bytes"],
        "persistent": result["persistent"],
        "phase_at_peak": result["phase_at_peak"],
        "modules": [{"module": name, "bytes": b, "tensors": n, "top_op": ops.most_common(1)[0][0]}
                    for name, (b, n, ops) in modules],
        "largest": [{"bytes": b, "op": op, "module": m, "phase": ph}
                    for b, op, m, ph in result["allocations_at_peak"][:top]],
        "trace_s": result["trace_s"],
    }


def cuda_summary(case: Case, top: int, snapshot: Path) -> dict:
    """One real iteration with the allocator history recorded and per-leaf-module retained bytes."""
    device = torch.device(case.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.device(device):
        system = build_system(case)
    system.train()
    optimizers = system.make_optimizers()
    source = BatchSource(case, device)
    real, _ = source.next()
    system.train_step(real, optimizers, 0, amp_dtype=amp_dtype(case))  # Adam states now exist
    del real
    torch.cuda.synchronize(device)
    names = {id(m): n for n, m in system.named_modules() if not list(m.children())}
    retained: dict[str, list] = collections.defaultdict(lambda: [0, 0])
    starts: dict[int, list[int]] = collections.defaultdict(list)

    def pre(module, _inputs):
        if id(module) in names and torch._C._current_graph_task_id() == -1:
            starts[id(module)].append(torch.cuda.memory_allocated(device))

    def post(module, _inputs, _output):
        if id(module) in names and starts.get(id(module)):
            entry = retained[names[id(module)]]
            entry[0] += torch.cuda.memory_allocated(device) - starts[id(module)].pop()
            entry[1] += 1

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
    real, _ = source.next()
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    try:
        system.train_step(real, optimizers, 1, amp_dtype=amp_dtype(case))
        torch.cuda.synchronize(device)
        with atomic_path(snapshot) as tmp:
            torch.cuda.memory._dump_snapshot(str(tmp))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
        for handle in handles:
            handle.remove()
    modules = sorted(retained.items(), key=lambda item: -item[1][0])[:top]
    return {
        "kind": f"measured on {torch.cuda.get_device_name(device)}",
        "peak_bytes": torch.cuda.max_memory_allocated(device),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        "modules": [{"module": name, "bytes": b, "calls": n} for name, (b, n) in modules],
        "snapshot": snapshot.name,
    }


def markdown(case: Case, summary: dict) -> str:
    lines = [f"# Memory of one iteration: {case.label}", "",
             f"{summary['kind']}; peak {summary['peak_bytes'] / MIB:,.0f} MiB"
             + (f", reserved {summary['peak_reserved_bytes'] / MIB:,.0f} MiB"
                if "peak_reserved_bytes" in summary else "") + ".", ""]
    if "persistent" in summary:
        p = summary["persistent"]
        lines += [f"Persistent: parameters {p['parameters'] / MIB:,.0f} MiB, gradients "
                  f"{p['gradients'] / MIB:,.0f} MiB, Adam states {p['optimizer'] / MIB:,.0f} MiB.", "",
                  "## Alive at the peak, by module [phase that allocated it]", "",
                  "| module | MiB | tensors | largest op |", "|---|---|---|---|"]
        lines += [f"| {m['module']} | {m['bytes'] / MIB:,.1f} | {m['tensors']} | {m['top_op']} |"
                  for m in summary["modules"]]
        lines += ["", "## Largest tensors alive at the peak", "", "| MiB | op | module | phase |",
                  "|---|---|---|---|"]
        lines += [f"| {t['bytes'] / MIB:,.1f} | {t['op']} | {t['module']} | {t['phase']} |"
                  for t in summary["largest"]]
    else:
        lines += [f"Snapshot: `{summary['snapshot']}` (open at https://pytorch.org/memory_viz).", "",
                  "## Leaf modules by memory their forward leaves allocated (saved activations, outputs)", "",
                  "| module | MiB | calls |", "|---|---|---|"]
        lines += [f"| {m['module']} | {m['bytes'] / MIB:,.1f} | {m['calls']} |" for m in summary["modules"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="crfgan")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mode", default="optimized", choices=["reference", "optimized"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fake", action="store_true", help="trace on fake tensors even with a GPU")
    parser.add_argument("--base-width", type=int, default=None)
    parser.add_argument("--factory", default="medvol.models:build")
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fake = args.fake or not args.device.startswith("cuda")
    case = Case(args.model, args.size, args.batch, args.mode, kind="estimate" if fake else "measure",
                device=args.device, base_width=args.base_width, factory=args.factory)
    if fake:
        summary = fake_summary(case, args.top)
    else:
        summary = cuda_summary(case, args.top, out / "memory_snapshot.pickle")
    with atomic_path(out / "memory_timeline.json") as tmp:
        Path(tmp).write_text(json.dumps({"case": case.to_dict(), **summary}, indent=1), encoding="utf-8")
    with atomic_path(out / "memory_timeline.md") as tmp:
        Path(tmp).write_text(markdown(case, summary), encoding="utf-8")
    print(f"peak {summary['peak_bytes'] / MIB:,.0f} MiB; wrote {out}/memory_timeline.md")
    return 0


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())
