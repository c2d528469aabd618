"""A sweep's outputs, written from its study: ``sweep.json``, ``sweep.csv``, ``report.md``,
``boxplot.png``, ``d_filters.png`` and ``params/<grid key>.png``.

:func:`study_state` turns the study (the record) into one entry per run: its latest trial's state
and results, and every trial number it took (a run retried after its worker died has several).
Runs are grouped by the loss (``model.loss`` when the grid varies it; otherwise the base
config's loss, or one group ``all``): the best run of each group, the spread of the selected
score within it (min, quartiles, max over its evaluated runs), a box plot of the selected
score per group with every run drawn as a point — the empirical study's central figure — and, per
grid key, the score of every run against that key's value; and the study's Fig. 4, the score
against D's filters with one series per loss (:func:`d_filters_series`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
from pathlib import Path

import numpy as np

import medvol

from medvol.sweep.grid import read_yaml

GROUP_KEY = "model.loss"
#: The same option in the spelling of ``model.options`` (a grid or base config may use either).
OPTION_KEYS = {GROUP_KEY: "model.options.loss", "model.d_base_width": "model.options.d_base_width"}
FAILED = ("failed", "eval_failed", "lost")
NOT_FINISHED = ("failed", "eval_failed", "lost", "interrupted", "pruned")
#: Run results kept in a trial's user attributes (medvol.sweep.trial), copied into the record.
RESULT_KEYS = ("score", "scores", "provenance", "error", "log_tail", "returncode", "train_seconds",
               "eval_seconds", "pruned_at", "started", "finished", "worker", "command")


def study_state(study, grid, out: Path, *, config: str, grid_path: str, storage: str) -> dict:
    """The sweep record: one entry per run (id, index, values, status, its trials, results).

    A run's status is its latest trial's: ``pending`` (waiting), ``running``, ``evaluated``,
    ``pruned``, or the failure the trial recorded (``failed``, ``eval_failed``, ``interrupted``);
    ``lost`` when its worker died before recording anything (stale heartbeat).
    """
    import optuna

    state_names = {optuna.trial.TrialState.WAITING: "pending", optuna.trial.TrialState.RUNNING: "running",
                   optuna.trial.TrialState.COMPLETE: "evaluated", optuna.trial.TrialState.PRUNED: "pruned"}
    runs: dict[int, list] = {}
    for t in study.get_trials(deepcopy=False):
        if isinstance(t.user_attrs.get("run"), int):
            runs.setdefault(t.user_attrs["run"], []).append(t)
    records = []
    for index in sorted(runs):
        trials = sorted(runs[index], key=lambda t: t.number)
        latest = trials[-1]
        attrs = latest.user_attrs
        status = state_names.get(latest.state) or attrs.get("status") or "lost"
        record = {"id": str(attrs.get("run_id")), "index": index, "values": attrs.get("values") or {},
                  "status": status, "trials": [t.number for t in trials],
                  "retries": attrs.get("retries", 0)}
        record.update({k: attrs[k] for k in RESULT_KEYS if k in attrs})
        if status == "lost":
            record["error"] = f"trial {latest.number}: its worker stopped sending heartbeats"
        if len(trials) > 1:  # what happened to the trial before (a retry, a resumption)
            before = trials[-2]
            record["previous"] = state_names.get(before.state) or before.user_attrs.get("status") or "lost"
        if latest.intermediate_values:
            record["intermediate"] = {str(k): v for k, v in sorted(latest.intermediate_values.items())}
        records.append(record)
    return {"medvol_version": medvol.__version__,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": config, "grid": grid_path, "storage": storage, "study": study.study_name,
            "identity": study.user_attrs.get("medvol_identity"), "runs": records}


def _drawn(values: dict, key: str):
    """A run's drawn value of ``key`` in either spelling (``model.loss``, ``model.options.loss``)."""
    return values.get(key, values.get(OPTION_KEYS.get(key, key)))


def _base_option(model: dict, key: str):
    """An option of the base config's model section, flat or under ``options``."""
    options = model.get("options") if isinstance(model.get("options"), dict) else {}
    return model[key] if key in model else options.get(key)


def group_of(record: dict, default: str) -> str:
    value = _drawn(record["values"], GROUP_KEY)
    return str(default if value is None else value)


def _default_group(out: Path) -> str:
    base = read_yaml(out / "base.yaml", "config file")
    loss = _base_option(base.get("model") or {}, "loss")
    return str(loss) if loss is not None else "all"


def spread(values: list[float]) -> dict[str, float]:
    """min, first quartile, median, third quartile, max (numpy's linear quantiles)."""
    q = np.quantile(np.asarray(values, dtype=np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q1", "median", "q3", "max"), map(float, q)))


def summarize(state: dict, default_group: str) -> dict[str, dict]:
    """Per group: the evaluated runs' scores, the best run and the spread."""
    groups: dict[str, dict] = {}
    for record in state["runs"]:
        g = groups.setdefault(group_of(record, default_group),
                              {"runs": 0, "failed": 0, "pruned": 0, "scores": [], "ids": []})
        g["runs"] += 1
        if record.get("status") == "evaluated":
            g["scores"].append(record["score"]["value"])
            g["ids"].append(record["id"])
        elif record.get("status") in FAILED:
            g["failed"] += 1
        elif record.get("status") == "pruned":
            g["pruned"] += 1
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
    writer.writerow(["id", "status", "trials", *keys, "score", "value", "ci_low", "ci_high", "iteration",
                     "train_seconds", "eval_seconds", "checkpoint_sha256", "error"])
    for r in state["runs"]:
        s = r.get("score") or {}
        p = r.get("provenance") or {}
        writer.writerow([r["id"], r["status"], " ".join(map(str, r.get("trials", []))),
                         *[r["values"].get(k, "") for k in keys],
                         s.get("name", ""), _num(s.get("value")), _num(s.get("ci_low")),
                         _num(s.get("ci_high")), p.get("iteration", ""), r.get("train_seconds", ""),
                         r.get("eval_seconds", ""), p.get("checkpoint_sha256", ""), r.get("error", "")])
    return buffer.getvalue()


def _num(value) -> str:
    return "" if value is None else f"{value:.6g}"


def better(score: str) -> str:
    from medvol.eval.evaluate import better as direction

    return direction(score)


def markdown(state: dict, groups: dict, keys: list[str], select: str, figure: bool,
             param_figures: list[tuple[str, str]] = (), d_filters: bool = False) -> str:
    runs = state["runs"]
    counts = {s: sum(r["status"] == s for r in runs) for s in dict.fromkeys(r["status"] for r in runs)}
    first = next((r for r in runs if r.get("score")), None)
    name = first["score"]["name"] if first else select
    direction = first["score"]["direction"] if first else better(select)
    prov = (first or {}).get("provenance", {})
    lines = [f"# medvol sweep — {state.get('updated', '')}", "",
             f"- study `{state.get('study')}` in `{state.get('storage')}`",
             f"- config `{state['config']}`, grid `{state['grid']}`, {len(runs)} runs: "
             + ", ".join(f"{v} {k}" for k, v in counts.items()),
             f"- selected score: {name} ({direction} is better)"
             + (f"; extractor {prov.get('extractor')}, N = {prov.get('n_real')} real / "
                f"{prov.get('n_fake')} generated images, seed {prov.get('seed')}" if prov else ""),
             "", f"## Best run per {GROUP_KEY}", "",
             "| loss | runs | failed | pruned | best run | " + name + " | 95% interval | configuration |",
             "|---|---|---|---|---|---|---|---|"]
    by_id = {r["id"]: r for r in runs}
    for g, info in groups.items():
        if "best" in info:
            r = by_id[info["best"]]
            s = r["score"]
            ci = f"{s['ci_low']:.4g} .. {s['ci_high']:.4g}" if s.get("ci_low") is not None else ""
            config = ", ".join(f"{k}={v}" for k, v in r["values"].items()
                               if k not in (GROUP_KEY, OPTION_KEYS[GROUP_KEY]))
            lines.append(f"| {g} | {info['runs']} | {info['failed']} | {info['pruned']} | {r['id']} | "
                         f"{s['value']:.5g} | {ci} | {config} |")
        else:
            lines.append(f"| {g} | {info['runs']} | {info['failed']} | {info['pruned']} | — | — | | |")
    lines += ["", f"## Spread of {name} across the sweep", "",
              "| loss | evaluated | min | q1 | median | q3 | max |", "|---|---|---|---|---|---|---|"]
    for g, info in groups.items():
        if "spread" in info:
            sp = info["spread"]
            lines.append(f"| {g} | {len(info['scores'])} | " + " | ".join(f"{sp[k]:.5g}" for k in
                                                                          ("min", "q1", "median", "q3", "max")) + " |")
    if figure:
        lines += ["", f"![{name} per loss](boxplot.png)"]
    if d_filters:
        lines += ["", f"## {name} against D's filters (the study's Fig. 4)", "",
                  f"![{name} against D's filters](d_filters.png)"]
    if param_figures:
        lines += ["", f"## {name} against each grid key", ""]
        lines += [f"![{name} against {key}]({rel})" for key, rel in param_figures]
    failed = [r for r in runs if r["status"] in NOT_FINISHED]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        for r in failed:
            why = f"stopped at iteration {r.get('pruned_at')} by the pruner" if r["status"] == "pruned" \
                else r.get("error", "")
            lines.append(f"- {r['id']} ({r['status']}, trials {', '.join(map(str, r.get('trials', [])))}): {why}")
    lines += ["", "## All runs", "", "| id | status | " + " | ".join(keys) + f" | {name} |",
              "|---|---|" + "---|" * len(keys) + "---|"]
    for r in runs:
        value = f"{r['score']['value']:.5g}" if r.get("score") else ""
        lines.append(f"| {r['id']} | {r['status']} | "
                     + " | ".join(str(r["values"].get(k, "")) for k in keys) + f" | {value} |")
    return "\n".join(lines) + "\n"


def boxplot(path: Path, groups: dict, name: str, direction: str) -> bool:
    """Box plot of the selected score per group, each run a point; False without matplotlib."""
    from medvol.eval.figures import _pyplot, _save

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


#: Where a run's D filters come from, first found: its own draw of D's filters, of the tied base
#: width, then the base config's (medvol.models.gan2d.dcgan: d_base_width None means base_width).
D_FILTER_KEYS = ("model.d_base_width", "model.base_width")


def d_filters_series(state: dict, base_model: dict, default_group: str) -> dict[str, list[tuple[int, float]]]:
    """The points of the study's Fig. 4: per loss, ``(D's filters, score)`` of every evaluated run,
    sorted by filters. Empty when fewer than two filter counts occur (no figure to draw)."""
    fixed = _base_option(base_model, "d_base_width") or base_model.get("base_width")
    series: dict[str, list[tuple[int, float]]] = {}
    for r in state["runs"]:
        if r.get("status") != "evaluated":
            continue
        filters = next((_drawn(r["values"], k) for k in D_FILTER_KEYS if _drawn(r["values"], k) is not None), fixed)
        if filters is None:
            continue
        series.setdefault(group_of(r, default_group), []).append((int(filters), float(r["score"]["value"])))
    if len({f for points in series.values() for f, _ in points}) < 2:
        return {}
    return {g: sorted(points) for g, points in series.items()}


def d_filters_plot(path: Path, series: dict[str, list[tuple[int, float]]], name: str, direction: str) -> bool:
    """Fig. 4: the score against D's filters (log2 axis), each run a point, each loss's median per
    filter count joined by a line; False without matplotlib or without points."""
    from medvol.eval.figures import _pyplot, _save

    plt = _pyplot()
    if plt is None or not series:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    rng = np.random.default_rng(0)  # jitter of the points only, a fraction of a doubling
    ticks = sorted({f for points in series.values() for f, _ in points})
    for g, points in series.items():
        f = np.array([p[0] for p in points], dtype=float)
        y = np.array([p[1] for p in points], dtype=float)
        dots = ax.scatter(f * 2 ** rng.uniform(-0.08, 0.08, len(f)), y, s=14, alpha=0.6, zorder=3)
        levels = sorted(set(f))
        ax.plot(levels, [np.median(y[f == v]) for v in levels], color=dots.get_facecolor()[0], alpha=1.0,
                label=f"{g} (n={len(y)})", zorder=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("filters of D (model.d_base_width)")
    ax.set_ylabel(f"{name} ({direction} is better)")
    ax.set_title(f"{name} against D's filters (line: median per loss)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ok = _save(fig, path)
    plt.close(fig)
    return ok


def param_file(key: str) -> str:
    """The figure name of a grid entry: ``"train.lr.G,train.lr.D"`` -> ``"train.lr.G_train.lr.D.png"``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") + ".png"


def param_plot(path: Path, key: str, choices: list, runs: list[dict], name: str, direction: str) -> bool:
    """The selected score of every evaluated run against the value it drew for ``key`` (one
    column per value, in grid order, each run a point, the median a bar); False without matplotlib
    or without a run that set ``key``."""
    from medvol.eval.figures import _pyplot, _save

    plt = _pyplot()
    first = key.split(",")[0]
    points = [(choices.index(r["values"][first]), r["score"]["value"]) for r in runs
              if r["status"] == "evaluated" and first in r["values"] and r["values"][first] in choices]
    if plt is None or not points:
        return False
    fig, ax = plt.subplots(figsize=(0.9 * len(choices) + 2.5, 3.6), dpi=110)
    rng = np.random.default_rng(0)  # horizontal jitter of the points only
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    ax.scatter(xs + rng.uniform(-0.12, 0.12, len(xs)), ys, s=14, alpha=0.7, zorder=3)
    for j in sorted(set(xs.astype(int))):
        ax.hlines(np.median(ys[xs == j]), j - 0.3, j + 0.3, color="black", linewidth=1.5, zorder=4)
    ax.set_xticks(range(len(choices)), [str(c) for c in choices], rotation=30 if len(choices) > 4 else 0)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{name} ({direction} is better)")
    ax.set_title(f"{name} against {key} (bar: median)")
    fig.tight_layout()
    ok = _save(fig, path)
    plt.close(fig)
    return ok


def write_report(out: Path, state: dict, grid, select: str) -> None:
    """Write ``sweep.json``, ``sweep.csv``, ``report.md``, ``boxplot.png``, ``d_filters.png`` (when
    runs differ in D's filters) and one figure per grid key under ``params/`` (the figures when
    matplotlib is installed)."""
    from medvol.eval.evaluate import _write_text
    from medvol.outputs import safe_name

    keys = list(grid.keys)
    default_group = _default_group(out)
    groups = summarize(state, default_group)
    _write_text(out / "sweep.json", json.dumps(state, indent=2, default=str) + "\n")
    _write_text(out / "sweep.csv", csv_text(state, keys))
    first = next((r for r in state["runs"] if r.get("score")), None)
    name = first["score"]["name"] if first else select
    direction = first["score"]["direction"] if first else better(select)
    figure = boxplot(out / "boxplot.png", groups, name, direction)
    base_model = read_yaml(out / "base.yaml", "config file").get("model") or {}
    d_filters = d_filters_plot(out / "d_filters.png", d_filters_series(state, base_model, default_group),
                               name, direction)
    params = []
    for entry, choices in grid.space:
        key = ",".join(entry)
        if len(choices) < 2:
            continue
        (out / "params").mkdir(exist_ok=True)
        path = safe_name(out / "params", param_file(key), "grid key figure")
        if param_plot(path, key, choices, state["runs"], name, direction):
            params.append((key, f"params/{path.name}"))
    _write_text(out / "report.md", markdown(state, groups, keys, select, figure, params, d_filters))
