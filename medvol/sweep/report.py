"""A sweep's outputs: ``sweep.csv``, ``report.md`` and ``boxplot.png``.

Runs are grouped by the loss (``model.loss`` when the grid varies it; otherwise the base
config's loss, or one group ``all``): the best run of each group, the spread of the selected
score within it (min, quartiles, max over its evaluated runs), and a box plot of the selected
score per group with every run drawn as a point — the empirical study's central figure.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from medvol.sweep.grid import read_yaml

GROUP_KEY = "model.loss"


def group_of(record: dict, default: str) -> str:
    return str(record["values"].get(GROUP_KEY, default))


def _default_group(out: Path) -> str:
    base = read_yaml(out / "base.yaml", "config file")
    loss = (base.get("model") or {}).get("loss")
    return str(loss) if loss is not None else "all"


def spread(values: list[float]) -> dict[str, float]:
    """min, first quartile, median, third quartile, max (numpy's linear quantiles)."""
    q = np.quantile(np.asarray(values, dtype=np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q1", "median", "q3", "max"), map(float, q)))


def summarize(state: dict, default_group: str) -> dict[str, dict]:
    """Per group: the evaluated runs' scores, the best run and the spread."""
    groups: dict[str, dict] = {}
    for record in state["runs"]:
        g = groups.setdefault(group_of(record, default_group), {"runs": 0, "failed": 0, "scores": [], "ids": []})
        g["runs"] += 1
        if record.get("status") == "evaluated":
            g["scores"].append(record["score"]["value"])
            g["ids"].append(record["id"])
        elif record.get("status") in ("failed", "eval_failed"):
            g["failed"] += 1
    for g in groups.values():
        if g["scores"]:
            direction = next(r["score"]["direction"] for r in state["runs"] if r["id"] == g["ids"][0])
            pick = int(np.argmin(g["scores"]) if direction == "lower" else np.argmax(g["scores"]))
            g["best"] = g["ids"][pick]
            g["spread"] = spread(g["scores"])
    return groups


def csv_text(state: dict, keys: list[str]) -> str:
    """One row per run: id, status, every grid key, the score with its interval, times, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "status", *keys, "score", "value", "ci_low", "ci_high", "iteration",
                     "train_seconds", "eval_seconds", "checkpoint_sha256", "error"])
    for r in state["runs"]:
        s = r.get("score") or {}
        p = r.get("provenance") or {}
        writer.writerow([r["id"], r["status"], *[r["values"].get(k, "") for k in keys],
                         s.get("name", ""), _num(s.get("value")), _num(s.get("ci_low")),
                         _num(s.get("ci_high")), p.get("iteration", ""), r.get("train_seconds", ""),
                         r.get("eval_seconds", ""), p.get("checkpoint_sha256", ""), r.get("error", "")])
    return buffer.getvalue()


def _num(value) -> str:
    return "" if value is None else f"{value:.6g}"


def markdown(state: dict, groups: dict, keys: list[str], select: str, figure: bool) -> str:
    runs = state["runs"]
    counts = {s: sum(r["status"] == s for r in runs) for s in dict.fromkeys(r["status"] for r in runs)}
    first = next((r for r in runs if r.get("score")), None)
    name = first["score"]["name"] if first else select
    direction = first["score"]["direction"] if first else ""
    prov = (first or {}).get("provenance", {})
    lines = [f"# medvol sweep — {state.get('updated', '')}", "",
             f"- config `{state['config']}`, grid `{state['grid']}`, {len(runs)} runs: "
             + ", ".join(f"{v} {k}" for k, v in counts.items()),
             f"- selected score: {name} ({direction} is better)"
             + (f"; extractor {prov.get('extractor')}, N = {prov.get('n_real')} real / "
                f"{prov.get('n_fake')} generated images, seed {prov.get('seed')}" if prov else ""),
             "", f"## Best run per {GROUP_KEY}", "",
             "| loss | runs | failed | best run | " + name + " | 95% interval | configuration |",
             "|---|---|---|---|---|---|---|"]
    by_id = {r["id"]: r for r in runs}
    for g, info in groups.items():
        if "best" in info:
            r = by_id[info["best"]]
            s = r["score"]
            ci = f"{s['ci_low']:.4g} .. {s['ci_high']:.4g}" if s.get("ci_low") is not None else ""
            config = ", ".join(f"{k}={v}" for k, v in r["values"].items() if k != GROUP_KEY)
            lines.append(f"| {g} | {info['runs']} | {info['failed']} | {r['id']} | {s['value']:.5g} | {ci} | {config} |")
        else:
            lines.append(f"| {g} | {info['runs']} | {info['failed']} | — | — | | |")
    lines += ["", f"## Spread of {name} across the sweep", "",
              "| loss | evaluated | min | q1 | median | q3 | max |", "|---|---|---|---|---|---|---|"]
    for g, info in groups.items():
        if "spread" in info:
            sp = info["spread"]
            lines.append(f"| {g} | {len(info['scores'])} | " + " | ".join(f"{sp[k]:.5g}" for k in
                                                                          ("min", "q1", "median", "q3", "max")) + " |")
    if figure:
        lines += ["", f"![{name} per loss](boxplot.png)"]
    failed = [r for r in runs if r["status"] in ("failed", "eval_failed", "interrupted")]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        for r in failed:
            lines.append(f"- {r['id']} ({r['status']}): {r.get('error', '')}")
    lines += ["", "## All runs", "", "| id | status | " + " | ".join(keys) + f" | {name} |",
              "|---|---|" + "---|" * len(keys) + "---|"]
    for r in runs:
        value = f"{r['score']['value']:.5g}" if r.get("score") else ""
        lines.append(f"| {r['id']} | {r['status']} | "
                     + " | ".join(str(r["values"].get(k, "")) for k in keys) + f" | {value} |")
    return "\n".join(lines) + "\n"


def boxplot(path: Path, groups: dict, name: str, direction: str) -> bool:
    """Box plot of the selected score per group, each run a point; False without matplotlib."""
    from medvol.eval.evaluate import _pyplot, _save

    plt = _pyplot()
    shown = [(g, info["scores"]) for g, info in groups.items() if info["scores"]]
    if plt is None or not shown:
        return False
    fig, ax = plt.subplots(figsize=(1.3 * len(shown) + 2.5, 4.0), dpi=120)
    ax.boxplot([s for _, s in shown], showfliers=False)
    rng = np.random.default_rng(0)  # horizontal jitter of the points only
    for i, (_, scores) in enumerate(shown, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(scores)), scores, s=14, alpha=0.7, zorder=3)
    ax.set_xticks(range(1, len(shown) + 1), [f"{g}\n(n={len(s)})" for g, s in shown])
    ax.set_ylabel(f"{name} ({direction} is better)")
    ax.set_title(f"{name} of every run, per loss")
    fig.tight_layout()
    ok = _save(fig, path)
    plt.close(fig)
    return ok


def write_report(out: Path, state: dict, grid, select: str) -> None:
    """Write ``sweep.csv``, ``report.md`` and ``boxplot.png`` (when matplotlib is installed)."""
    from medvol.eval.evaluate import _write_text

    keys = list(grid.keys)
    groups = summarize(state, _default_group(out))
    _write_text(out / "sweep.csv", csv_text(state, keys))
    first = next((r for r in state["runs"] if r.get("score")), None)
    name = first["score"]["name"] if first else select
    direction = first["score"]["direction"] if first else "lower"
    figure = boxplot(out / "boxplot.png", groups, name, direction)
    _write_text(out / "report.md", markdown(state, groups, keys, select, figure))
