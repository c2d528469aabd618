"""Several runs' checkpoint evaluations side by side: one CSV of curves, a table, a figure.

    python tools/eval_table.py --run CRF-GAN eval_crf crf_cpu.json --run HA-GAN eval_ha ha_cpu.json \\
        --out table_dir --figure docs/img/crfgan_vs_hagan.png

``--run LABEL EVAL_DIR CPU_JSON`` (repeatable): ``EVAL_DIR`` is the output of
``medvol evaluate --run RUN --every K`` (its ``iter_<N>/scores.json``, one per checkpoint) and
``CPU_JSON`` the measurements of ``tools/cpu_budget.py`` for the training (``-`` if there are none),
which give every checkpoint the CPU time the training had spent when it appeared.

Writes into ``--out``:

- ``curves.csv``: one row per run and checkpoint: label, iteration, training CPU seconds, then for
  every extractor and score (``domain:volume/fid``, ``inception2.5d:mean/mmd``, ...) its value and,
  where the evaluation has them, its 95% bootstrap interval (``...:lo``, ``...:hi``) or, for KID,
  its std over subsets (``...:std``);
- ``table.md``: the last evaluated checkpoint of each run, shaped like Table 1 of the CRF-GAN
  paper (FID and MMD per feature set), then KID and precision / recall / density / coverage per
  feature set, with the training's CPU time, CPU seconds per iteration and peak memory.

``--figure PNG`` draws the curves from ``curves.csv`` (as read back from the file): per
extractor FID, MMD and KID, and the first extractor's precision, recall and coverage, against the
training CPU time (or the iteration when a run has no CPU log), with the bootstrap intervals shaded.

The runs must have been scored alike (the same extractors with the same weights, the same real
set, the same N real and N fake, the same seed); anything else is refused, as ``medvol compare``
refuses it, since FID and its kin only compare at equal N and equal features.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from pathlib import Path

_ITER = re.compile(r"^iter_(\d+)$")
#: Scores drawn per extractor, and those drawn for the first extractor only.
PER_EXTRACTOR = ("fid", "mmd", "kid")
FIRST_ONLY = ("precision", "recall", "coverage")
PRDC = ("precision", "recall", "density", "coverage")


class TableError(ValueError):
    """An evaluation folder that is missing, incomplete or not comparable with the others."""


def load_evaluation(folder: Path) -> list[dict]:
    """The ``scores.json`` of every ``iter_<N>/`` in ``folder``, by iteration, each with ``iteration`` set."""
    reports = []
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _ITER.match(sub.name)
        if m and (sub / "scores.json").is_file():
            rep = json.loads((sub / "scores.json").read_text(encoding="utf-8"))
            rep["iteration"] = int(m.group(1))
            reports.append(rep)
    if not reports:
        raise TableError(f"{folder}: no iter_<N>/scores.json (the output of medvol evaluate --run)")
    return sorted(reports, key=lambda r: r["iteration"])


def signature(rep: dict) -> dict:
    """What must be equal for two evaluations to compare."""
    return {
        "extractors": [(e["info"]["extractor"], e["info"].get("weights_sha256")) for e in rep["extractors"]],
        "real": (rep["real"]["source"], rep["real"].get("split")),
        "n": (rep["real"]["n_volumes"], rep["fake"]["n_volumes"]),
        "seed": rep["seed"],
    }


def summary_view(scores: dict, name: str) -> str | None:
    """The key of score ``name`` that sums up an extractor: its ``mean/`` over views, else its only view."""
    if f"mean/{name}" in scores:
        return f"mean/{name}"
    keys = [k for k in scores if k.rsplit("/", 1)[-1] == name]
    return keys[0] if len(keys) == 1 else None


def cpu_times(path: str) -> tuple[dict[int, float], dict]:
    """(iteration -> training CPU seconds, the whole record) from a ``tools/cpu_budget.py`` JSON."""
    if path == "-":
        return {}, {}
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return {int(c["iteration"]): float(c["cpu_s"]) for c in record.get("checkpoints", [])}, record


def rows_of(label: str, reports: list[dict], cpu: dict[int, float]) -> list[dict]:
    """One flat row per checkpoint: label, iteration, cpu_s and ``extractor:score[:lo|:hi|:std]``."""
    rows = []
    for rep in reports:
        row = {"run": label, "iteration": rep["iteration"], "cpu_s": cpu.get(rep["iteration"], "")}
        for ext in rep["extractors"]:
            name = ext["info"]["extractor"]
            for key, s in ext["scores"].items():
                row[f"{name}:{key}"] = s["value"]
                if "ci_low" in s:
                    row[f"{name}:{key}:lo"] = s["ci_low"]
                    row[f"{name}:{key}:hi"] = s["ci_high"]
                elif "std" in s:
                    row[f"{name}:{key}:std"] = s["std"]
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fmt(value) -> str:
    """Four significant digits; thousands separated and no exponent from 1,000 on."""
    if value in ("", None):
        return "–"
    v = float(value)
    if math.isnan(v):
        return "nan"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def cell(scores: dict, key: str | None) -> str:
    """``value (lo..hi)``, ``value ± std`` or ``value`` of one score."""
    if key is None or key not in scores:
        return "–"
    s = scores[key]
    if "ci_low" in s:
        return f"{fmt(s['value'])} ({fmt(s['ci_low'])}..{fmt(s['ci_high'])})"
    if "std" in s:
        return f"{fmt(s['value'])} ± {fmt(s['std'])}"
    return fmt(s["value"])


def table(runs: list[tuple[str, list[dict], dict]]) -> str:
    """Markdown: the last checkpoint of each run (Table 1 shape), then KID and PRDC per extractor."""
    names = [e["info"]["extractor"] for e in runs[0][1][-1]["extractors"]]
    sig = signature(runs[0][1][-1])
    head = ["model", "iterations", "training CPU s", "CPU s / it", "peak RSS MiB"]
    for n in names:
        head += [f"FID ({n})", f"MMD ({n})"]
    lines = [f"N = {sig['n'][0]} real / {sig['n'][1]} generated volumes (real: `{sig['real'][0]}`, "
             f"split {sig['real'][1]}), seed {sig['seed']}; last checkpoint of each run; "
             "95% bootstrap intervals over volumes in parentheses.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, reports, record in runs:
        last = reports[-1]
        it = last["iteration"]
        cpu = record.get("cpu_s")
        row = [label, str(it), fmt(cpu), f"{cpu / it:.2f}" if cpu and it else "–", fmt(record.get("max_rss_mib"))]
        for ext in last["extractors"]:
            row += [cell(ext["scores"], summary_view(ext["scores"], "fid")),
                    cell(ext["scores"], summary_view(ext["scores"], "mmd"))]
        lines.append("| " + " | ".join(row) + " |")
    head = ["model", "features", "KID (± std over subsets)", *PRDC]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, reports, _ in runs:
        for ext in reports[-1]["extractors"]:
            sc = ext["scores"]
            kid = summary_view(sc, "kid")
            views = [k for k in sc if k.endswith("/kid") and "subset_size" in sc[k]]
            if kid is not None and views and all(sc[k]["subset_size"] >= min(ext["rows"][k.split("/")[0]])
                                                  for k in views):
                # Every KID subset was the whole set: the std over subsets is round-off, not spread.
                kid_cell = f"{fmt(sc[kid]['value'])} (one subset: the whole set)"
            elif kid is not None and "std" not in sc[kid]:
                # A mean over views has no std of its own: show the per-view stds' largest, said so.
                stds = [sc[k]["std"] for k in views if "std" in sc[k]]
                kid_cell = f"{fmt(sc[kid]['value'])} (views' std ≤ {fmt(max(stds))})" if stds else cell(sc, kid)
            else:
                kid_cell = cell(sc, kid)
            lines.append("| " + " | ".join([label, ext["info"]["extractor"], kid_cell,
                                            *(cell(sc, summary_view(sc, p)) for p in PRDC)]) + " |")
    return "\n".join(lines) + "\n"


def figure(csv_path: Path, out: Path) -> Path:
    """The curves of every run in ``csv_path`` (written by :func:`write_csv`), one panel per score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    columns = list(rows[0])
    extractors = list(dict.fromkeys(c.split(":", 1)[0] for c in columns[3:]))
    panels = []
    for i, ext in enumerate(extractors):
        for name in PER_EXTRACTOR + (FIRST_ONLY if i == 0 else ()):
            keys = [c for c in columns if c.startswith(f"{ext}:") and c.count(":") == 1
                    and c.endswith("/" + name)]
            key = f"{ext}:mean/{name}" if f"{ext}:mean/{name}" in keys else (keys[0] if len(keys) == 1 else None)
            if key is not None:
                panels.append(key)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    use_cpu = all(r["cpu_s"] != "" for r in rows)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.9 * nrows), dpi=100, squeeze=False)
    for ax, key in zip(axes.flat, panels):
        for label in runs:
            mine = [r for r in rows if r["run"] == label and r[key] != ""]
            x = [float(r["cpu_s"]) if use_cpu else int(r["iteration"]) for r in mine]
            line, = ax.plot(x, [float(r[key]) for r in mine], marker="o", markersize=3, label=label)
            if f"{key}:lo" in columns:
                ax.fill_between(x, [float(r[f"{key}:lo"]) for r in mine], [float(r[f"{key}:hi"]) for r in mine],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("training CPU seconds" if use_cpu else "iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def build(runs_spec: list[tuple[str, str, str]], out: Path, figure_path: Path | None = None) -> dict:
    """Load, check and write everything; returns the paths written."""
    runs, rows = [], []
    for label, folder, cpu_json in runs_spec:
        reports = load_evaluation(Path(folder))
        cpu, record = cpu_times(cpu_json)
        runs.append((label, reports, record))
        rows += rows_of(label, reports, cpu)
    first = signature(runs[0][1][0])
    for label, reports, _ in runs:
        for rep in reports:
            got = signature(rep)
            for key in first:
                if got[key] != first[key]:
                    raise TableError(f"{label} iteration {rep['iteration']}: {key} {got[key]} differs from "
                                     f"{runs[0][0]}'s {first[key]}; scores compare only when computed alike")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "curves.csv", rows)
    tmp = out / ".table.md.tmp"
    tmp.write_text(table(runs), encoding="utf-8")
    os.replace(tmp, out / "table.md")
    written = {"csv": out / "curves.csv", "table": out / "table.md"}
    if figure_path is not None:
        written["figure"] = figure(out / "curves.csv", figure_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=3, action="append", required=True, metavar=("LABEL", "EVAL_DIR", "CPU_JSON"))
    parser.add_argument("--out", type=Path, required=True, help="folder for curves.csv and table.md")
    parser.add_argument("--figure", type=Path, help="PNG of the curves")
    args = parser.parse_args(argv)
    try:
        written = build([tuple(r) for r in args.run], args.out, args.figure)
    except (TableError, OSError, KeyError, json.JSONDecodeError) as error:
        print(f"eval_table: error: {error}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
