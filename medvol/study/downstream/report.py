"""Results of a downstream study: ``results.json``, ``results.md`` and ``dice_vs_fid.png``.

Per trained network (a run file) the Dice of each class is averaged over the held-out volumes
that contain the class; per set-up the mean and the sample standard deviation (n - 1) over seeds
are reported, per class and for the mean over classes. The table is shaped like the empirical
study's Table 2: one row per set-up, Dice and the generator's FID side by side.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

import medvol
from medvol.utils import checked_write, torch_threads

SETUP_TITLES = {"real": "real", "real+aug": "real + augmentation", "synthetic": "synthetic only",
                "real+synthetic": "real + synthetic"}


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def seed_dice(run: dict, key: str = "dice") -> list[float | None]:
    """Per-class Dice (``key="iou"``: IoU) of one run: the mean over the held-out volumes that
    contain the class. A run file written before IoU was scored has no IoU: all None."""
    if key not in run:
        return [None] * len(run["classes"])
    table = np.array([[np.nan if v is None else v for v in row] for row in run[key]], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every volume: no score
        means = np.nanmean(table, axis=0)
    return [None if np.isnan(v) else float(v) for v in means]


def _summary(values: list[float | None]) -> dict:
    """Mean and sample standard deviation over seeds (None where no seed has a score)."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(kept):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(kept.mean()), "std": float(kept.std(ddof=1)) if len(kept) > 1 else None,
            "n": int(len(kept))}


def setup_runs(out: Path, study: dict) -> list[tuple[str, str | None, dict[int, dict]]]:
    """``(setup, source, runs by seed)`` of every set-up of the study, real set-ups first, then per
    source in order; ``runs`` holds the seeds whose run file exists (both tasks)."""
    from medvol.study.downstream.runs import REAL_SETUPS, RUN_DIR, SYNTHETIC_SETUPS, read_json, run_name

    rows = [(setup, None) for setup in REAL_SETUPS]
    rows += [(setup, name) for name in study["sources"] for setup in SYNTHETIC_SETUPS]
    table = []
    for setup, source in rows:
        runs = {}
        for seed in range(study["config"]["seeds"]):
            run = read_json(out / RUN_DIR / f"{run_name(setup, source, seed)}.json")
            if run is not None:
                runs[seed] = run
        table.append((setup, source, runs))
    return table


def collect(out: Path, study: dict) -> list[dict]:
    """Every set-up of the study with its runs (:func:`setup_runs`) and their Dice and IoU."""
    classes = study["config"]["classes"]
    table = []
    for setup, source, runs in setup_runs(out, study):
        per_seed = {seed: seed_dice(run) for seed, run in runs.items()}
        iou_seed = {seed: seed_dice(run, "iou") for seed, run in runs.items()}
        means = {seed: _mean_over_classes(d) for seed, d in per_seed.items()}
        iou_means = {seed: _mean_over_classes(d) for seed, d in iou_seed.items()}
        entry = {"setup": setup, "title": SETUP_TITLES[setup], "source": source,
                 "seeds": {str(seed): {"dice": dict(zip(classes, d)), "mean_dice": means[seed],
                                       "iou": dict(zip(classes, iou_seed[seed])), "mean_iou": iou_means[seed],
                                       "per_volume": runs[seed]["dice"], "per_volume_iou": runs[seed].get("iou"),
                                       "seconds": runs[seed]["seconds"], "train_items": runs[seed]["train_items"]}
                           for seed, d in per_seed.items()},
                 "dice": {c: _summary([d[i] for d in per_seed.values()]) for i, c in enumerate(classes)},
                 "mean_dice": _summary(list(means.values())),
                 "iou": {c: _summary([d[i] for d in iou_seed.values()]) for i, c in enumerate(classes)},
                 "mean_iou": _summary(list(iou_means.values())),
                 "fid": (study["fid"].get(source) or {}).get("fid") if source else None}
        table.append(entry)
    return table


def _mean_over_classes(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _cell(summary: dict, seeds: int, digits: int = 3) -> str:
    """``mean ± std``, and how many seeds where fewer than asked have finished (or scored)."""
    if summary["mean"] is None:
        return "n/a"
    spread = f" ± {summary['std']:.{digits}f}" if summary["std"] is not None else ""
    short = f" ({summary['n']} of {seeds} seeds)" if summary["n"] < seeds else ""
    return f"{summary['mean']:.{digits}f}{spread}{short}"


def markdown(study: dict, table: list[dict], command: str | None, unit: str = "volumes") -> str:
    """results.md; ``unit`` names the held-out items (``volumes``, or ``images`` of a 2D cache)."""
    config = study["config"]
    classes = config["classes"]
    seeds = config["seeds"]
    lines = ["# Downstream segmentation study", "",
             f"U-Net ({config['dims']}D, widths {config['unet_channels']}, {config['iterations']} iterations, "
             f"batch {config['batch']}) trained per set-up with {config['seeds']} seed(s); Dice on the held-out real "
             f"{unit} (val split of `{config['real']}`) and IoU (Jaccard) beside it, mean ± standard deviation over "
             f"seeds. FID of each synthetic source against the same held-out {unit}.", "",
             "| set-up | source | " + " | ".join(f"Dice {c}" for c in classes) + " | mean Dice | "
             + " | ".join(f"IoU {c}" for c in classes) + " | mean IoU | FID |",
             "|---|---|" + "---|" * (2 * len(classes) + 3)]
    for row in table:
        fid = fmt(row["fid"], 4) if row["source"] else "—"
        lines.append(f"| {row['title']} | {row['source'] or '—'} | "
                     + " | ".join(_cell(row["dice"][c], seeds) for c in classes)
                     + f" | {_cell(row['mean_dice'], seeds)} | "
                     + " | ".join(_cell(row["iou"][c], seeds) for c in classes)
                     + f" | {_cell(row['mean_iou'], seeds)} | {fid} |")
    lines += sources_and_command(study, command, lambda source: (
        f"{source['kind']} `{source['spec']}`, {source['n']} {config['dims']}D item(s) "
        f"with masks ({', '.join(source['mask_labels'])})"))
    return "\n".join(lines) + "\n"


def sources_and_command(study: dict, command: str | None, describe: Callable[[dict], str]) -> list[str]:
    """The end of results.md (both tasks): per source what ``describe(source record)`` says and
    how its FID was measured, then the command line."""
    lines = ["", "Sources:", ""]
    for name, source in study["sources"].items():
        fid = study["fid"].get(name) or {}
        extractor = (fid.get("extractor") or {}).get("extractor", "?")
        lines.append(f"- `{name}`: {describe(source)}; FID with `{extractor}` features, "
                     f"{fid.get('n_real', '?')} real vs {fid.get('n_synthetic', '?')} synthetic"
                     + (f" ({fid['warning']})" if fid.get("warning") else ""))
    if command:
        lines += ["", f"Command: `{command}`"]
    return lines


def plot(path: Path, table: list[dict]) -> bool:
    """Mean Dice of synthetic-only and real + synthetic against FID (:func:`plot_against_fid`)."""
    return plot_against_fid(path, table, "mean_dice", "mean Dice on held-out real volumes",
                            "Downstream segmentation: Dice against FID")


def plot_against_fid(path: Path, table: list[dict], key: str, ylabel: str, title: str) -> bool:
    """A score (``row[key]["mean"]``, std as error bar) of synthetic-only and real + synthetic
    against FID, one point per source; the real and real + augmentation levels as horizontal lines.
    False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"synthetic": ("o", "tab:red", -11), "real+synthetic": ("s", "tab:blue", 4)}  # label below / above
    fids = [r["fid"] for r in table if r["fid"] is not None and r["fid"] > 0]
    for setup, (marker, colour, dy) in styles.items():
        rows = [r for r in table if r["setup"] == setup and r["fid"] is not None and r[key]["mean"] is not None]
        if not rows:
            continue
        ax.errorbar([r["fid"] for r in rows], [r[key]["mean"] for r in rows],
                    yerr=[r[key]["std"] or 0.0 for r in rows], fmt=marker, color=colour, capsize=3,
                    label=SETUP_TITLES[setup])
        for r in rows:
            ax.annotate(r["source"], (r["fid"], r[key]["mean"]), textcoords="offset points",
                        xytext=(5, dy), fontsize=8, color=colour)
    for setup, style in (("real", "-"), ("real+aug", "--")):
        row = next((r for r in table if r["setup"] == setup), None)
        if row is not None and row[key]["mean"] is not None:
            ax.axhline(row[key]["mean"], color="grey", linestyle=style, label=SETUP_TITLES[setup])
    if fids and max(fids) / min(fids) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("FID of the synthetic source (against the held-out real data)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    with checked_write(path, "plot") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True


def write_results(out: Path, study: dict, val, *, command: str | None, note: str) -> dict:
    """Write ``results.json``, ``results.md`` and ``dice_vs_fid.png`` from what ``out`` holds."""
    table = collect(out, study)
    return write_report(out, study, table, command=command, note=note,
                        held_out={"split": "val", "volumes": val.items},
                        text=markdown(study, table, command, "images" if val.dims == 2 else "volumes"),
                        figure="dice_vs_fid.png", draw=lambda path: plot(path, table))


def write_report(out: Path, study: dict, table: list[dict], *, command: str | None, note: str, held_out: dict,
                 text: str, figure: str, draw: Callable[[Path], bool], task: str | None = None) -> dict:
    """Write ``results.md`` (``text``), the figure (``draw(path)``: False when it could not) and
    ``results.json`` into ``out`` (both tasks); ``task`` is recorded where given."""
    results = {"medvol_version": medvol.__version__, **({"task": task} if task else {}),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "command": command, "threads": torch_threads(), "note": note, "config": study["config"],
               "held_out": held_out,
               "sources": {name: dict(source, fid=study["fid"].get(name)) for name, source in study["sources"].items()},
               "setups": table}
    with checked_write(out / "results.md", "results") as tmp:
        tmp.write_text(text, encoding="utf-8")
    results["figures"] = [figure] if draw(out / figure) else []
    with checked_write(out / "results.json", "results") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results
