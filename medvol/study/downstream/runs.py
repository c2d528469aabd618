"""The study folder of ``medvol study downstream``, shared by both tasks and the reports: the
study file, one JSON file per trained network, the set-up names, the configuration check and the
lock's name. (Here rather than in :mod:`.study`, so that the reports read runs without importing
the study that writes them.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import medvol
from medvol.errors import MedvolError
from medvol.study.downstream import data as D
from medvol.utils import checked_write

STUDY_FILE = "study.json"
RUN_DIR = "runs"
FORMAT = 1
#: Set-ups without a synthetic source, then those trained with one.
REAL_SETUPS = ("real", "real+aug")
SYNTHETIC_SETUPS = ("synthetic", "real+synthetic")


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, atomically (a temporary file renamed)."""
    with checked_write(path, "study file") as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable ({str(error).splitlines()[0]}); move it away to start over") from None
    return data if isinstance(data, dict) else None


def run_name(setup: str, source: str | None, seed: int) -> str:
    return f"{setup}__{source}__seed{seed}" if source else f"{setup}__seed{seed}"


def _check_config(out: Path, config: dict, keys: Sequence[str] | None = None) -> dict:
    """The study file of ``out`` (new, or one of this configuration); a MedvolError otherwise.

    ``keys``: compare only these (before the data say what the rest is: nothing is generated
    into a folder that will be refused).
    """
    if out.exists() and not out.is_dir():
        raise MedvolError(f"--out {out}: exists and is not a folder")
    study = read_json(out / STUDY_FILE)
    if study is None:
        # out/synthetic/ holds what a checkpoint generated before an interruption: reused.
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".") and p.name != "synthetic"):
            raise MedvolError(f"--out {out}: not empty and holds no {STUDY_FILE}; choose an empty or new folder")
        return {"format": FORMAT, "medvol_version": medvol.__version__, "config": config, "sources": {}, "fid": {}}
    old = study.get("config", {})
    keys = sorted(set(old) | set(config)) if keys is None else keys
    differ = [k for k in keys if old.get(k) != config.get(k)]
    if differ:
        what = "; ".join(f"{k} {old.get(k)!r} -> {config.get(k)!r}" for k in differ[:3])
        raise MedvolError(f"--out {out}: holds a downstream study of another configuration ({what}); use another "
                          "--out, or the same options to resume it or add sources")
    return study


def _source_record(name: str, spec: str, kind: str, data: D.LabelledSet, study: dict, out: Path) -> dict:
    record = {"spec": str(Path(spec).resolve()), "kind": kind, **data.info}
    old = study["sources"].get(name)
    if old is not None and old.get("fingerprint") != record["fingerprint"]:
        raise MedvolError(f"--synthetic {name}={spec}: {out} already has a source {name!r} made from other data "
                          f"({old.get('spec')}); give this one another NAME")
    return record


#: Held while a study runs in its folder, so that two runs never write one study at once.
LOCK_NAME = ".medvol-study.lock"
