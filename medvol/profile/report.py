"""Writing profile results: markdown tables shaped like the CRF-GAN paper's, CSV, JSON, a PNG.

Tables have one row per model x mode and one column per size x batch, the way the paper's
Tables 3 and 4 do; every optimized cell carries its ratio to the reference cell beside it.
All memory is in MiB (2^20 bytes). Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import platform
import sys
from pathlib import Path

from medvol.utils import checked_write

MIB = 2**20
_POWER = {2: "²", 3: "³"}
FILES = ("profile.md", "profile.csv", "profile.json", "profile.png")


def model_title(model: str) -> str:
    """The name a report prints for ``model``: its registry title ("CRF-GAN"), else the name itself
    (a custom factory's model)."""
    from medvol.models.registry import REGISTRY

    entry = REGISTRY.get(model)
    return entry.title if entry is not None and entry.title else model


def environment(command: str | None = None) -> dict:
    """Versions and provenance recorded with every report (no CUDA initialisation here: the
    workers, not this process, touch the GPU)."""
    from importlib import metadata

    import torch

    import medvol

    try:
        triton = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = None
    return {
        "command": command or " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton,
                     "medvol": medvol.__version__, "python": platform.python_version()},
        "host": platform.node(),
        "platform": platform.platform(),
    }


def write_json(report: dict, path: Path) -> None:
    """Raises: MedvolError: the write failed (a full disk), naming the file."""
    with checked_write(path, "profile results") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


def write_outputs(report: dict, out: Path) -> list[Path]:
    """Write every output file; returns their paths (the PNG only if matplotlib is present).

    The files take their names only once all of them are written: a failed write (a full disk)
    raises :class:`MedvolError` naming the file and renames none of them.
    """
    out = Path(out)
    texts = {"profile.json": json.dumps(report, indent=1, default=str), "profile.md": markdown(report),
             "profile.csv": to_csv(report)}
    written = []
    with contextlib.ExitStack() as stack:
        for name in FILES[:3]:
            tmp = stack.enter_context(checked_write(out / name, "profile output"))
            Path(tmp).write_text(texts[name], encoding="utf-8")
            written.append(out / name)
        if plot(report, out / "profile.png"):
            written.append(out / "profile.png")
    return written


# -- helpers --------------------------------------------------------------------------------------

def _key(result: dict) -> tuple:
    c = result["case"]
    return c["model"], c["size"], c["batch"], c["mode"], c["kind"]


def _index(report: dict) -> dict[tuple, dict]:
    return {_key(r): r for r in report["results"]}


def _ratio(value, reference) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _axes(results: list[dict]) -> tuple[list, list, list, list]:
    def ordered(values):
        return list(dict.fromkeys(values))

    cases = [r["case"] for r in results]
    return (ordered(c["model"] for c in cases), ordered(c["mode"] for c in cases),
            sorted(set(c["size"] for c in cases)), sorted(set(c["batch"] for c in cases)))


def _dims(result: dict) -> int:
    """2 or 3: recorded by the worker, else the registry's word for the model."""
    from medvol.profile.cases import model_dims

    return int(result.get("dims") or model_dims(result["case"]["model"]))


def _power(results: list[dict]) -> str:
    """"³" or "²" after a size, or nothing where a table mixes 2D and 3D models."""
    dims = {_dims(r) for r in results}
    return _POWER[dims.pop()] if len(dims) == 1 else ""


def _width(case: dict) -> int:
    from medvol.profile.cases import published_width

    return case["base_width"] or published_width(case["model"])


def _mib(value) -> str:
    return "" if value is None else f"{value / MIB:,.0f}"


def _cell(result: dict | None, field: str, fmt, reference: dict | None, extra: str | None = None) -> str:
    if result is None:
        return ""
    if result["status"] != "ok":
        return result["status"] if result["status"] == "OOM" else "error"
    value = result.get(field)
    if value is None:
        return ""
    text = fmt(value)
    if extra and result.get(extra) is not None:
        text += f" / {fmt(result[extra])}"
    if reference is not None:
        if reference["status"] == "OOM":
            text += " (ref OOM)"
        elif reference["status"] == "ok":
            ratio = _ratio(value, reference.get(field))
            if ratio is not None:
                text += f" ({ratio:.2f}×)"
    return text


def _grid_table(report: dict, kind: str, field: str, fmt, extra: str | None = None) -> list[str]:
    results = [r for r in report["results"] if r["case"]["kind"] == kind]
    models, modes, sizes, batches = _axes(results)
    index = _index(report)
    columns = [(s, b) for s in sizes for b in batches
               if any((m, s, b, mode, kind) in index for m in models for mode in modes)]
    power = _power(results)
    lines = ["| model | mode | " + " | ".join(f"{s}{power} b{b}" for s, b in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for model in models:
        for mode in modes:
            cells = []
            for size, batch in columns:
                result = index.get((model, size, batch, mode, kind))
                reference = (index.get((model, size, batch, "reference", kind))
                             if mode != "reference" else None)
                cells.append(_cell(result, field, fmt, reference, extra))
            lines.append(f"| {model_title(model)} | {mode} | " + " | ".join(cells) + " |")
    return lines


def _provenance(report: dict) -> list[str]:
    meta = report["meta"]
    v = meta["versions"]
    return [f"- Device: {meta.get('device', 'unknown')}",
            f"- Versions: torch {v['torch']} (CUDA {v['cuda'] or 'none'}), triton {v['triton'] or 'none'}, "
            f"medvol {v['medvol']}, Python {v['python']}",
            f"- Date: {meta['date']}",
            f"- Command: `{meta['command']}`"]


def _setting(report: dict, kind: str) -> str:
    cases = [r["case"] for r in report["results"] if r["case"]["kind"] == kind]
    widths = sorted({_width(c) for c in cases})
    devices = sorted({c["device"] for c in cases})
    text = f"base width c = {', '.join(map(str, widths))}"
    if kind == "measure":
        iters = sorted({(c["iters"], c["warmup"]) for c in cases})
        text += "; " + ", ".join(f"median of {i} iterations after {w} warm-up" for i, w in iters)
        text += f"; device {', '.join(devices)}; data {', '.join(sorted({c['data'] for c in cases}))}"
    options = sorted({c.get("model_options", "") for c in cases})
    text += "; model options " + ", ".join(o or "published defaults" for o in options)
    budgets = sorted({c["budget_bytes"] for c in cases if c["budget_bytes"]})
    if budgets:
        text += "; budget " + ", ".join(f"{b / MIB:,.0f} MiB" for b in budgets)
    return text


def markdown(report: dict) -> str:
    """The report as markdown: provenance, then one table per quantity."""
    results = report["results"]
    kinds = {r["case"]["kind"] for r in results}
    devices = {r["case"]["device"] for r in results if r["case"]["kind"] == "measure"}
    lines = ["# medvol profile", ""] + _provenance(report) + [""]
    lines += ["Cells: `OOM` = out of memory (the paper's \"—\"); optimized cells show "
              "(optimized / reference) in parentheses. Reference = fp32, no checkpointing; "
              "optimized = bf16 autocast (measured: only where the device computes bf16 natively, else fp32, "
              "as `train.amp auto`), activation checkpointing, fused ops, group norms in the autocast dtype.", ""]
    if any(_dims(r) == 2 for r in results):
        lines += ["2D models (sizes S², batches of [B, C, S, S] images): optimized = bf16 autocast and "
                  "fused Adam; they have no checkpointing and no group norms.", ""]
    if "measure" in kinds:
        what = ("CUDA max allocated / max reserved" if devices == {"cuda"} else
                "peak RSS above the idle process" if devices == {"cpu"} else
                "CUDA max allocated / reserved; CPU peak RSS above idle")
        lines += [f"## Measured peak memory (MiB; {what})", "", f"Setting: {_setting(report, 'measure')}.", ""]
        lines += _grid_table(report, "measure", "peak_bytes", _mib, extra="peak_reserved_bytes") + [""]
        lines += ["## Measured iterations/s (one full training step; data-wait excluded)", ""]
        lines += _grid_table(report, "measure", "it_per_s", lambda v: f"{v:.3g}") + [""]
    if "estimate" in kinds:
        lines += ["## Estimated peak memory (MiB; live tensors on fake tensors, no device used)", "",
                  f"Setting: {_setting(report, 'estimate')}; steady state of 2 traced iterations.", ""]
        lines += _grid_table(report, "estimate", "peak_bytes", _mib) + [""]
        lines += _estimate_breakdown(report)
    if kinds == {"measure", "estimate"}:
        lines += _estimate_vs_measured(report)
    if report.get("max_batch"):
        lines += _max_batch_table(report)
    lines += _substep_table(report)
    lines += _params_table(report)
    failures = [r for r in results if r["status"] == "error"]
    failures += [r for r in results if r["status"] == "OOM" and r.get("error")]
    if failures:
        lines += ["## Failures and OOM details", ""]
        lines += [f"- {_label(r)}: {r['status']}: {r.get('error', '')}" for r in failures] + [""]
    return "\n".join(lines)


def _label(result: dict) -> str:
    c = result["case"]
    return f"{model_title(c['model'])} {c['size']}{_POWER[_dims(result)]} b{c['batch']} {c['mode']} ({c['kind']})"


def _estimate_breakdown(report: dict) -> list[str]:
    rows = [r for r in report["results"] if r["case"]["kind"] == "estimate" and r.get("persistent")]
    if not rows:
        return []
    lines = ["### What the estimate counts (MiB)", "",
             "Persistent: parameters+buffers, gradients and Adam states alive after the step. "
             "At peak: live memory at the peak, by the phase that allocated it (forward = "
             "activations saved for backward, the batch and temporaries; backward = gradients and "
             "temporaries; optimizer = Adam states and the step's temporaries); these four sum to "
             "the peak.", "",
             "| configuration | peak | parameters | gradients | Adam states | at peak: parameters | "
             "at peak: forward | at peak: backward | at peak: optimizer | trace s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, ph = r["persistent"], r["phase_at_peak"]
        lines.append(f"| {_label(r)} | {_mib(r['peak_bytes'])} | {_mib(p['parameters'])} | "
                     f"{_mib(p['gradients'])} | {_mib(p['optimizer'])} | {_mib(ph['parameters'])} | "
                     f"{_mib(ph['forward'])} | {_mib(ph['backward'])} | {_mib(ph['optimizer'])} | "
                     f"{r['trace_s']:.1f} |")
    return lines + [""]


def _estimate_vs_measured(report: dict) -> list[str]:
    index = _index(report)
    lines = ["## Estimate beside measurement (MiB)", "",
             "The difference is what live tensors do not explain: kernel workspaces, the caching "
             "allocator's rounding and fragmentation (reserved), and on the CPU the process's heap.", "",
             "| configuration | estimate | measured | difference | measured reserved | difference |",
             "|---|---|---|---|---|---|"]
    rows = 0
    for key, result in index.items():
        if key[4] != "measure":
            continue
        est = index.get(key[:4] + ("estimate",))
        if est is None:
            continue
        rows += 1
        cells = []
        for r in (est, result):
            cells.append(_mib(r.get("peak_bytes")) if r["status"] == "ok" else r["status"])
        both = est["status"] == "ok" and result["status"] == "ok"
        diff = _mib(result["peak_bytes"] - est["peak_bytes"]) if both else ""
        reserved = result.get("peak_reserved_bytes")
        rdiff = _mib(reserved - est["peak_bytes"]) if both and reserved is not None else ""
        lines.append(f"| {_label(result).replace(' (measure)', '')} | {cells[0]} | {cells[1]} | {diff} | "
                     f"{_mib(reserved)} | {rdiff} |")
    return lines + [""] if rows else []


def _max_batch_table(report: dict) -> list[str]:
    found = report["max_batch"]
    sizes = sorted({f["size"] for f in found})
    power = _power([{"case": {"model": f["model"]}} for f in found])
    rows = list(dict.fromkeys((f["model"], f["mode"], f["kind"]) for f in found))
    lines = ["## Largest batch that fits", "",
             "Doubling then bisection, one warm-up + one timed step per trial; `N+` = the search "
             "limit fit; 0 = batch 1 does not fit.", "",
             "| model | mode | kind | " + " | ".join(f"{s}{power}" for s in sizes) + " |",
             "|---|---|---|" + "---|" * len(sizes)]
    for model, mode, kind in rows:
        cells = []
        for size in sizes:
            match = [f for f in found if (f["model"], f["mode"], f["kind"], f["size"]) == (model, mode, kind, size)]
            if not match:
                cells.append("")
            elif match[0]["error"]:
                cells.append("error")
            else:
                cells.append(f"{match[0]['max_batch']}{'+' if match[0]['at_limit'] else ''}")
        lines.append(f"| {model_title(model)} | {mode} | {kind} | " + " | ".join(cells) + " |")
    return lines + [""]


def _substep_table(report: dict) -> list[str]:
    rows = [r for r in report["results"] if r["status"] == "ok" and r.get("substeps")]
    if not rows:
        return []
    names = list(dict.fromkeys(n for r in rows for n in r["substeps"]))
    lines = ["## Per sub-step (median ms / peak MiB)", "",
             "| configuration | " + " | ".join(names) + " | data-wait ms |",
             "|---|" + "---|" * (len(names) + 1)]
    for r in rows:
        cells = []
        for name in names:
            s = r["substeps"].get(name)
            if s is None:
                cells.append("")
                continue
            parts = []
            if s.get("time_s_median") is not None:
                parts.append(f"{s['time_s_median'] * 1e3:,.0f} ms")
            if s.get("peak_bytes") is not None:
                parts.append(f"{_mib(s['peak_bytes'])} MiB")
            cells.append(" / ".join(parts))
        wait = r.get("data_wait_s_median")
        lines.append(f"| {_label(r)} | " + " | ".join(cells) + f" | {'' if wait is None else f'{wait * 1e3:.1f}'} |")
    return lines + [""]


def _params_table(report: dict) -> list[str]:
    seen: dict[tuple, dict] = {}
    for r in report["results"]:
        if r.get("params"):
            c = r["case"]
            seen.setdefault((c["model"], c["size"], _width(c)), r["params"])
    if not seen:
        return []
    names = list(dict.fromkeys(n for p in seen.values() for n in p if n != "total")) + ["total"]
    lines = ["## Trainable parameters (millions)", "",
             "| model | size | width | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (model, size, width), params in seen.items():
        cells = [f"{params[n] / 1e6:.2f}" if n in params else "" for n in names]
        power = _power([{"case": {"model": model}}])
        lines.append(f"| {model_title(model)} | {size}{power} | {width} | " + " | ".join(cells) + " |")
    return lines + [""]


CSV_FIELDS = ["model", "model_options", "size", "batch", "mode", "kind", "device", "device_name", "base_width", "status",
              "peak_mib", "peak_reserved_mib", "it_per_s", "step_ms_median", "data_wait_ms_median",
              "mem_ratio_vs_reference", "its_ratio_vs_reference", "params_total",
              "persistent_parameters_mib", "persistent_gradients_mib", "persistent_optimizer_mib",
              "substeps", "error"]


def to_csv(report: dict) -> str:
    """One row per result; sub-steps as ``name:ms:MiB`` joined by ``;``."""
    index = _index(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in report["results"]:
        c = r["case"]
        ok = r["status"] == "ok"
        ref = index.get((c["model"], c["size"], c["batch"], "reference", c["kind"]))
        ref_ok = ref is not None and ref["status"] == "ok" and c["mode"] != "reference"
        mem_ratio = _ratio(r.get("peak_bytes"), ref.get("peak_bytes")) if ok and ref_ok else None
        its_ratio = _ratio(r.get("it_per_s"), ref.get("it_per_s")) if ok and ref_ok else None
        persistent = r.get("persistent") or {}
        subs = ";".join(
            f"{name}:{'' if s.get('time_s_median') is None else round(s['time_s_median'] * 1e3, 3)}:"
            f"{'' if s.get('peak_bytes') is None else round(s['peak_bytes'] / MIB, 1)}"
            for name, s in (r.get("substeps") or {}).items()) if ok else ""

        def mib(value):
            return None if value is None or not ok else round(value / MIB, 1)

        writer.writerow({
            "model": c["model"], "model_options": c.get("model_options", ""), "size": c["size"],
            "batch": c["batch"], "mode": c["mode"],
            "kind": c["kind"], "device": c["device"], "device_name": r.get("device_name"),
            "base_width": _width(c), "status": r["status"],
            "peak_mib": mib(r.get("peak_bytes")), "peak_reserved_mib": mib(r.get("peak_reserved_bytes")),
            "it_per_s": r.get("it_per_s") if ok else None,
            "step_ms_median": r["step_s_median"] * 1e3 if ok and r.get("step_s_median") else None,
            "data_wait_ms_median": (r["data_wait_s_median"] * 1e3
                                    if ok and r.get("data_wait_s_median") is not None else None),
            "mem_ratio_vs_reference": None if mem_ratio is None else round(mem_ratio, 4),
            "its_ratio_vs_reference": None if its_ratio is None else round(its_ratio, 4),
            "params_total": (r.get("params") or {}).get("total"),
            "persistent_parameters_mib": mib(persistent.get("parameters")),
            "persistent_gradients_mib": mib(persistent.get("gradients")),
            "persistent_optimizer_mib": mib(persistent.get("optimizer")),
            "substeps": subs, "error": r.get("error"),
        })
    return buffer.getvalue()


def plot(report: dict, path: Path) -> bool:
    """Bar charts of peak memory (measured and estimated) and iterations/s per configuration.

    Returns False (and writes nothing) where matplotlib is not installed, e.g. on a bare GPU image.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("medvol profile: matplotlib is not installed; no profile.png (pip install 'medvol[plot]')",
              file=sys.stderr)
        return False
    panels = [("measure", "peak_bytes", "measured peak memory (MiB)", MIB),
              ("estimate", "peak_bytes", "estimated peak memory (MiB)", MIB),
              ("measure", "it_per_s", "iterations/s", 1)]
    panels = [p for p in panels if any(r["case"]["kind"] == p[0] for r in report["results"])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (kind, field, title, scale) in zip(axes[:, 0], panels):
        results = [r for r in report["results"] if r["case"]["kind"] == kind]
        models, modes, sizes, batches = _axes(results)
        index = _index(report)
        columns = [(s, b) for s in sizes for b in batches]
        series = [(m, mode) for m in models for mode in modes]
        width = 0.8 / max(1, len(series))
        for i, (model, mode) in enumerate(series):
            xs, ys, oom = [], [], []
            for j, (size, batch) in enumerate(columns):
                r = index.get((model, size, batch, mode, kind))
                x = j + (i - (len(series) - 1) / 2) * width
                if r is not None and r["status"] == "ok" and r.get(field) is not None:
                    xs.append(x)
                    ys.append(r[field] / scale)
                elif r is not None and r["status"] == "OOM":
                    oom.append(x)
            bars = ax.bar(xs, ys, width, label=f"{model_title(model)} {mode}")
            for x in oom:
                ax.text(x, 0.02, "OOM", rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform(),
                        color=bars.patches[0].get_facecolor() if bars.patches else "black")
        power = _power(results)
        ax.set_xticks(range(len(columns)), [f"{s}{power} b{b}" for s, b in columns], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"medvol profile — {report['meta'].get('device', '')}", fontsize=10)
    fig.tight_layout()
    try:
        with checked_write(path, "profile plot") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return True
