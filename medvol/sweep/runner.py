"""``medvol sweep``: train K configurations drawn from a grid, score each, report the spread.

The sweep folder ``DIR``::

    DIR/sweep.json        identity (config, grid, evaluation settings) and every run's record
    DIR/base.yaml         the base config as given (each run = base + fixed + drawn overrides)
    DIR/grid.yaml         the grid as given
    DIR/runs/<id>/        a ``medvol train`` run folder, with train.log and eval/ (scores.json)
    DIR/sweep.csv, report.md, boxplot.png   (:mod:`medvol.sweep.report`)

Each run trains in its own ``medvol train --resume auto`` subprocess, so a run that crashes (a bad
combination of options, a NaN, a killed process) is recorded with its exit status and the last
lines of its log, and the sweep goes on. Each finished run is scored in this process by
:func:`medvol.eval.evaluate.evaluate` (the real set's features are extracted once for all runs).

Re-running the same command resumes: evaluated runs are skipped, trained ones are scored,
interrupted ones continue from their last checkpoint; failed runs stay failed unless
``retry_failed``. A folder holding a sweep of another config, grid or evaluation is refused,
and a lock keeps two sweeps out of one folder. Ctrl-C stops the current run at a checkpoint
(it receives the signal too), records it as interrupted and writes the report.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import medvol
from medvol.errors import MedvolError
from medvol.sweep.grid import Grid, canonical_hash, override_args, read_yaml

STATE = "sweep.json"
LOCK = ".medvol-sweep.lock"
LOG_TAIL = 20
#: Seconds a run gets to checkpoint and exit after Ctrl-C before it is killed.
STOP_GRACE = 120
DONE = ("evaluated",)
#: Exit statuses of a run stopped by a signal after checkpointing (medvol train: 128 + signal).
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM)
FAILED = ("failed", "eval_failed")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    from medvol.utils import checked_write

    with checked_write(path, "sweep state") as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def log_tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    """The last ``lines`` non-empty lines of a log (progress-bar carriage returns split lines)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    parts = [p.strip() for line in text.splitlines() for p in line.split("\r")]
    return [p for p in parts if p][-lines:]


def _terminate(signum, frame) -> None:
    stop = KeyboardInterrupt("terminated (SIGTERM); the sweep resumes when the same command runs again")
    stop.exit_code = 128 + signal.SIGTERM  # the CLI's exit status, as for medvol train
    raise stop


def pick_score(scores: dict, select: str) -> str:
    """The score key that ``select`` names: itself, ``mean/<select>`` (2.5D) or ``<view>/<select>``."""
    if select in scores:
        return select
    if f"mean/{select}" in scores:
        return f"mean/{select}"
    found = [k for k in scores if k.rsplit("/", 1)[-1] == select]
    if not found:
        raise MedvolError(f"--select {select}: not a score of this evaluation; choose from "
                          f"{', '.join(sorted({k.rsplit('/', 1)[-1] for k in scores}))}")
    return found[0]


class Sweep:
    """One sweep folder: identity, run records and the loop that brings every run to an end.

    Args:
        config: the base training config (YAML).
        grid: the grid file (:mod:`medvol.sweep.grid`).
        runs: K, the number of configurations to draw.
        out: the sweep folder DIR.
        select: the score that ranks runs (``fid``, ``kid``, ``precision``, ...).
        features: extractors for the evaluation (default: the evaluation's default for the model).
        n: images (volumes) per set for the evaluation.
        seed: the draw seed and the evaluation seed.
        real: the real set (default ``data``: each run's own training slices).
        bootstrap: bootstrap rounds of each evaluation.
        device: evaluation device.
        retry_failed: train / score failed runs again.
        python: the interpreter that runs ``medvol train`` (default: this one).
        echo: called with one line per event (the CLI prints them).
    """

    def __init__(self, config: str | os.PathLike, grid: str | os.PathLike, runs: int,
                 out: str | os.PathLike, *, select: str = "fid", features: Sequence[str] | None = None,
                 n: int | None = 256, seed: int = 0, real: str = "data", bootstrap: int = 50,
                 batch: int = 16, device: str = "cpu", retry_failed: bool = False,
                 threads: int | None = None, python: str | None = None, echo: Callable[[str], None] = lambda line: None):
        self.config_path, self.grid_path = Path(config), Path(grid)
        self.base = read_yaml(self.config_path, "config file")
        self.grid = Grid(self.grid_path, self.base)
        self.count = runs
        #: torch CPU threads of each training run (None: medvol train's default); not part of the
        #: sweep's identity, so a resumed sweep may use another count.
        self.threads = threads
        self.draws = self.grid.draw(runs, seed)
        self.out = Path(out)
        self.select, self.seed, self.real = select, seed, real
        self.features = list(features) if features else None
        self.n, self.bootstrap, self.batch, self.device = n, bootstrap, batch, device
        self.retry_failed = retry_failed
        self.python = python or sys.executable
        self.echo = echo
        self.identity = {
            "config_sha256": canonical_hash(self.base), "grid_sha256": self.grid.sha256,
            "select": select, "features": self.features, "n": n, "seed": seed, "real": real,
            "bootstrap": bootstrap,
        }
        self.memo: dict = {}

    # ------------------------------------------------------------------ state
    def _open(self) -> dict:
        """The sweep state: read from DIR (refusing another sweep's folder) or started afresh."""
        path = self.out / STATE
        if path.is_file():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                have = state["identity"]
            except (ValueError, KeyError, TypeError):
                raise MedvolError(f"{path}: unreadable sweep state; use another --out") from None
            for key, want in self.identity.items():
                if have.get(key) != want:
                    what = {"config_sha256": "config", "grid_sha256": "grid"}.get(key, f"--{key}")
                    raise MedvolError(f"{self.out} holds a sweep of another {what} "
                                      f"({have.get(key)} vs {want}); use another --out")
            return state
        # The copies below are this command's own if a crash came before the first state write.
        if any(p.name not in (LOCK, "base.yaml", "grid.yaml") for p in self.out.iterdir()):
            raise MedvolError(f"{self.out} is not empty and holds no sweep ({STATE}); use another --out")
        from medvol.utils import checked_write

        for source, name in ((self.config_path, "base.yaml"), (self.grid_path, "grid.yaml")):
            with checked_write(self.out / name, "sweep copy") as tmp:
                shutil.copyfile(source, tmp)
        state = {"medvol_version": medvol.__version__, "created": _now(),
                 "config": str(self.config_path), "grid": str(self.grid_path),
                 "identity": self.identity, "runs": []}
        self._save(state)
        return state

    def _save(self, state: dict) -> None:
        state["updated"] = _now()
        state["runs_requested"] = max(self.count, len(state["runs"]))
        _write_json(self.out / STATE, state)

    def _record(self, state: dict, i: int) -> dict:
        while len(state["runs"]) <= i:
            j = len(state["runs"])
            state["runs"].append({"id": f"run_{j:03d}", "index": j, "values": self.draws[j],
                                  "status": "pending"})
        record = state["runs"][i]
        if canonical_hash(record["values"]) != canonical_hash(self.draws[i]):
            raise MedvolError(f"{self.out}: run {record['id']} was drawn differently; the sweep "
                              "state does not belong to this grid")
        return record

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Bring every run to an end; return the sweep state (also in ``DIR/sweep.json``)."""
        from medvol.sweep.report import write_report
        from medvol.train.runfolder import RunFolderLock

        lock = RunFolderLock(self.out, lock_name=LOCK, holder="medvol sweep")
        previous = None
        if threading.current_thread() is threading.main_thread():
            # A scheduler's SIGTERM stops the sweep as Ctrl-C does: the run checkpoints first.
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            state = self._open()
            (self.out / "runs").mkdir(exist_ok=True)
            try:
                for i in range(self.count):
                    record = self._record(state, i)
                    self._advance(state, record)
            finally:
                self._save(state)
                write_report(self.out, state, self.grid, self.select)
            return state
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            lock.release()

    def _advance(self, state: dict, record: dict) -> None:
        status = record["status"]
        if status in DONE or (status in FAILED and not self.retry_failed):
            self.echo(f"{record['id']}: {status} (skipped)")
            return
        run_dir = self.out / "runs" / record["id"]
        if status not in ("trained", "eval_failed"):  # an eval_failed run finished training
            self._train(state, record, run_dir)
            if record["status"] != "trained":
                return
        self._evaluate(state, record, run_dir)

    def _train(self, state: dict, record: dict, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fixed = dict(self.grid.fixed)
        overrides = {**fixed, **record["values"], "train.out": str(run_dir), "train.progress": False}
        cmd = [self.python, "-m", "medvol.cli", "train", "--config", str(self.out / "base.yaml"),
               "--resume", "auto", *override_args(overrides)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        record.update(status="training", command=cmd[1:], started=_now())
        record.pop("error", None)
        self._save(state)
        self.echo(f"{record['id']}: training {json.dumps(record['values'])}")
        log = run_dir / "train.log"
        start = time.monotonic()
        with open(log, "ab") as sink:
            sink.write(f"\n# medvol sweep {_now()}: {' '.join(cmd[1:])}\n".encode())
            sink.flush()
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                code = proc.wait()
            except KeyboardInterrupt as interrupt:
                self._stop(proc)
                record.update(status="interrupted", returncode=proc.returncode,
                              train_seconds=round(record.get("train_seconds", 0.0) + time.monotonic() - start, 2),
                              log_tail=log_tail(log))
                self._save(state)
                stop = KeyboardInterrupt(f"interrupted while {record['id']} trained (it stopped at a "
                                         "checkpoint); run the same command again to resume")
                stop.exit_code = getattr(interrupt, "exit_code", 130)
                raise stop from None
        record["train_seconds"] = round(record.get("train_seconds", 0.0) + time.monotonic() - start, 2)
        record["returncode"] = code
        if code == 0:
            record["status"] = "trained"
            record.pop("log_tail", None)
        elif code in STOPPED:
            # The run alone got SIGINT / SIGTERM (not the sweep): it checkpointed; resume it next time.
            record.update(status="interrupted", log_tail=log_tail(log))
            self.echo(f"{record['id']}: interrupted (exit status {code}); resumed when the sweep runs again")
        else:
            tail = log_tail(log)
            reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            last = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
            record.update(status="failed", error=f"{reason}: {last}" if last else reason, log_tail=tail)
            self.echo(f"{record['id']}: failed ({record['error']})")
        self._save(state)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """Ctrl-C reached the sweep: let the run checkpoint and exit (it may have the signal too;
        a second SIGINT only repeats the request), killing it if it does not within STOP_GRACE."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C must not cut this short
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _evaluate(self, state: dict, record: dict, run_dir: Path) -> None:
        from medvol.eval.evaluate import better, evaluate

        self.echo(f"{record['id']}: evaluating")
        start = time.monotonic()
        try:
            report = evaluate(self.real, str(run_dir), run_dir / "eval", features=self.features,
                              metrics=("fid", "kid", "mmd", "prdc"), n=self.n, seed=self.seed,
                              n_boot=self.bootstrap, batch=self.batch, device=self.device,
                              overwrite=True, memo=self.memo,
                              command=f"medvol sweep (run {record['id']})")
            ext = report["extractors"][0]
            name = pick_score(ext["scores"], self.select)
        except (MedvolError, RuntimeError) as error:
            record.update(status="eval_failed", error=f"evaluation: {str(error).splitlines()[0]}",
                          eval_seconds=round(time.monotonic() - start, 2))
            self.echo(f"{record['id']}: evaluation failed ({record['error']})")
            self._save(state)
            return
        s = ext["scores"][name]
        record.update(
            status="evaluated", eval_seconds=round(time.monotonic() - start, 2),
            score={"name": name, "direction": better(name), "value": s["value"],
                   "ci_low": s.get("ci_low"), "ci_high": s.get("ci_high"), "std": s.get("std")},
            scores={k: v["value"] for k, v in ext["scores"].items()},
            provenance={"extractor": ext["info"]["extractor"], "weights_sha256": ext["info"]["weights_sha256"],
                        "checkpoint": report["fake"].get("checkpoint"),
                        "checkpoint_sha256": report["fake"].get("checkpoint_sha256"),
                        "iteration": report["fake"].get("iteration"),
                        "n_real": report["real"].get("n_images", report["real"].get("n_volumes")),
                        "n_fake": report["fake"].get("n_images", report["fake"].get("n_volumes")),
                        "seed": report["seed"], "bootstrap": report["bootstrap"],
                        "scores_json": str(run_dir / "eval" / "scores.json")})
        record.pop("error", None)
        self.echo(f"{record['id']}: {name} = {s['value']:.5g}")
        self._save(state)
