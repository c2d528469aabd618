"""What a recipe's steps wrote and scored, read back from each command's own result files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: The file each command writes its results in (relative to its output folder).
RESULT_FILES = {
    "preprocess": "manifest.json", "evaluate": "scores.json", "sweep": "sweep.json",
    "study reader make": "key.json", "study recursive": "summary.json", "study downstream": "results.json",
    "generate": "generated.json",
}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(float(value)) else None


def step_outputs(command: str, folder: Path) -> dict[str, Any]:
    """``{"files": [top-level names], "result": relative path or None, "scores": {...}}`` of a step."""
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                   if not p.name.startswith(".")) if folder.is_dir() else []
    result = RESULT_FILES.get(command)
    data = _read(folder / result) if result else None
    scores: dict[str, Any] = {}
    if command == "preprocess" and isinstance(data, dict):
        split = data.get("split") or {}
        scores = {"entries": len(data.get("volumes") or []), "train": split.get("train"), "val": split.get("val"),
                  "dims": data.get("dims", 3)}
    elif command == "train":
        from medvol.train.checkpoint import list_checkpoints

        found = list_checkpoints(folder / "checkpoints") if (folder / "checkpoints").is_dir() else []
        if found:
            scores = {"iteration": int(found[-1][0]), "checkpoint": str(found[-1][1].relative_to(folder))}
        result = None
    elif command == "generate":
        scores = {"samples": len([p for p in folder.glob("sample_*.nii.gz") if not p.name.endswith("_mask.nii.gz")])}
    elif command == "evaluate" and isinstance(data, dict):
        for ext in data.get("extractors") or []:
            name = (ext.get("info") or {}).get("extractor", "features")
            for score, cell in (ext.get("scores") or {}).items():
                value = _number((cell or {}).get("value"))
                if value is not None:
                    scores[f"{score} ({name})"] = value
    elif command == "study reader make" and isinstance(data, dict):
        # Counts only: the key's answers stay in key.json.
        scores = {"mode": data.get("mode"), "items": len(data.get("pairs") or data.get("images") or []),
                  "page": "page/index.html"}
    elif command == "study recursive" and isinstance(data, dict):
        rows = data.get("aggregate") or []
        if rows:
            last = max(r["generation"] for r in rows)
            for row in rows:
                if row["generation"] in (0, last):
                    for key, cell in row.items():
                        if isinstance(cell, dict) and _number(cell.get("mean")) is not None:
                            scores[f"gen {row['generation']} real {row['real_fraction']:g} {key}"] = cell["mean"]
    elif command == "study downstream" and isinstance(data, dict):
        for row in data.get("setups") or []:
            label = row.get("setup", "?") + (f" [{row['source']}]" if row.get("source") else "")
            for key in ("mean_dice", "mean_iou", "accuracy"):
                value = _number((row.get(key) or {}).get("mean")) if isinstance(row.get(key), dict) else None
                if value is not None:
                    scores[f"{label} {key}"] = value
    elif command == "sweep" and isinstance(data, dict):
        runs = [r for r in data.get("runs") or [] if isinstance(r, dict)]
        scored = [(v, r.get("id")) for r in runs for k, v in (r.get("scores") or {}).items()
                  if k.endswith("/fid") and _number(v) is not None]
        scores = {"runs": len(runs), "evaluated": sum(r.get("status") == "evaluated" for r in runs)}
        if scored:
            best = min(scored)
            scores.update({"best run by FID": best[1], "best FID": best[0]})
    return {"files": files, "result": result if data is not None else None, "scores": scores}


def _short(scores: dict[str, Any]) -> str:
    parts = []
    for key, value in scores.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key} {value}")
        elif value is not None:
            parts.append(f"{key}: see the result file")
    return "; ".join(parts) if parts else "–"


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: one row per step (its folder, result file, seconds and scores)."""
    identity = summary["identity"]
    lines = [f"# medvol study recipe: {summary['recipe']}", "", summary["title"], "",
             f"- recipe: `{summary['path']}` (sha256 {identity['sha256'][:12]}…)",
             f"- data: {'phantom data in `data/` (small sizes: the recipe is tested, nothing is reproduced)' if identity['phantom'] else '`' + str(identity['data']) + '`'}",
             "", "| step | command | folder | result | seconds | scores |", "|---|---|---|---|---|---|"]
    for step in summary["steps"]:
        if not step["finished"]:
            lines.append(f"| {step['name']} | {step['command']} | – | not run | – | – |")
            continue
        result = f"`{step['folder']}/{step['result']}`" if step.get("result") else "–"
        lines.append(f"| {step['name']} | {step['command']} | `{step['folder']}/` | {result} | "
                     f"{step['seconds']:.1f} | {_short(step.get('scores') or {})} |")
    notes = [f"- **{s['name']}**: {s['note']}" for s in summary["steps"] if s.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + notes
    return "\n".join(lines) + "\n"
