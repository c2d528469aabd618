"""One trial of a sweep: one ``medvol train`` run in its own process, scored by medvol's evaluation.

The trial's outcome goes to the Optuna study (its record): state COMPLETE with the selected
score as value, PRUNED, or FAIL; and in the trial's user attributes ``status`` (``evaluated``,
``pruned``, ``failed``, ``eval_failed``, ``interrupted``), the score with its interval, every
score, provenance, times, the error line and the last lines of the run's log.

While the run trains, a thread records the trial's heartbeat in the storage; a worker that dies
stops it, and the trial goes stale (:mod:`medvol.sweep.sweep` retries it). The training process
gets SIGTERM when its worker dies (``PR_SET_PDEATHSIG``): it checkpoints and exits, so a retry
resumes it from that checkpoint (``--resume auto``) instead of racing it for the run folder.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import math
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from medvol.errors import MedvolError
from medvol.sweep.grid import override_args

LOG_TAIL = 20
#: Seconds a run gets to checkpoint and exit after Ctrl-C (or pruning) before it is killed.
STOP_GRACE = 120
#: Seconds a run that may have had the worker's stop signal too gets to stop on its own.
OWN_STOP = 10
#: Seconds between looks for a new checkpoint while a run trains with pruning on.
POLL = 0.5
#: Exit statuses of a run stopped by a signal after checkpointing (medvol train: 128 + signal).
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux: the training process then outlives a killed worker
    _LIBC = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _die_with_worker() -> None:
    """In the child between fork and exec: SIGTERM when the worker (its parent) dies."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def log_tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    """The last ``lines`` non-empty lines of a log (progress-bar carriage returns split lines)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    parts = [p.strip() for line in text.splitlines() for p in line.split("\r")]
    return [p for p in parts if p][-lines:]


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


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a thread, until :meth:`stop`."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.done = threading.Event()
        storage.record_heartbeat(trial_id)
        self.thread = threading.Thread(target=self._beat, name="medvol-sweep-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a database hiccup: the next beat tries again (two missed = stale)
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


class TrialRun:
    """Train and score the run of one Optuna trial; see the module docstring.

    Args:
        sweep: the :class:`medvol.sweep.sweep.Sweep` (settings, study, evaluation memo).
        trial: the ``optuna.Trial`` popped for this run.
        run_dir: the run's folder (``DIR/runs/<run id>``; the same for every retry of the run).
        values: the drawn ``{config key: value}``.
    """

    def __init__(self, sweep, trial, run_dir: Path, values: dict[str, Any]):
        self.sweep, self.trial, self.run_dir, self.values = sweep, trial, run_dir, values
        self.run_id = run_dir.name
        self.scored: dict[int, dict] = {}  # checkpoint iteration -> evaluation report
        self.eval_seconds = 0.0

    # ------------------------------------------------------------------ training
    def run(self) -> str:
        """Train, score, tell the study; return the trial's status."""
        sw = self.sweep
        self.run_dir.mkdir(parents=True, exist_ok=True)
        overrides = {**sw.grid.fixed, **self.values, "train.out": str(self.run_dir), "train.progress": False}
        cmd = [sw.python, "-m", "medvol.cli", "train", "--config", str(sw.out / "base.yaml"),
               "--resume", "auto", *override_args(overrides)]
        if sw.threads:
            cmd += ["--threads", str(sw.threads)]
        attrs = {"command": cmd[1:], "started": _now(), "worker": sw.worker_name}
        self.trial.set_user_attr("worker", sw.worker_name)
        sw.echo(f"{self.run_id} (trial {self.trial.number}): training {json.dumps(self.values)}")
        log = self.run_dir / "train.log"
        start = time.monotonic()
        pruned = None
        with open(log, "ab") as sink:
            sink.write(f"\n# medvol sweep {_now()} trial {self.trial.number}: {' '.join(cmd[1:])}\n".encode())
            sink.flush()
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=sw.child_env(), preexec_fn=_die_with_worker)
            try:
                while True:
                    try:
                        code = proc.wait(timeout=POLL if sw.prune else None)
                        break
                    except subprocess.TimeoutExpired:
                        try:
                            pruned = self._score_new_checkpoints(during_training=True)
                        except (MedvolError, RuntimeError, OSError) as error:
                            self._stop(proc)
                            line = str(error).splitlines()[0] if str(error) else type(error).__name__
                            sw.echo(f"{self.run_id}: evaluation failed (evaluation: {line})")
                            return self._finish("eval_failed", {
                                **attrs, "returncode": proc.returncode, "error": f"evaluation: {line}",
                                "train_seconds": round(time.monotonic() - start, 2),
                                "eval_seconds": round(self.eval_seconds, 2)})
                        if pruned is not None:
                            self._stop(proc)
                            code = proc.returncode
                            break
            except KeyboardInterrupt as interrupt:
                self._stop(proc, signalled=True)
                self._finish("interrupted", {**attrs, "returncode": proc.returncode,
                                             "train_seconds": round(time.monotonic() - start, 2),
                                             "log_tail": log_tail(log)})
                stop = KeyboardInterrupt(f"interrupted while {self.run_id} trained (it stopped at a "
                                         "checkpoint); run the same command again to resume")
                stop.exit_code = getattr(interrupt, "exit_code", 130)
                raise stop from None
            except BaseException:
                self._stop(proc)
                raise
        attrs.update(returncode=code, train_seconds=round(time.monotonic() - start, 2))
        if pruned is not None:
            attrs["pruned_at"] = pruned
            sw.echo(f"{self.run_id}: pruned at iteration {pruned}")
            return self._finish("pruned", attrs)
        if code in STOPPED:
            # The run alone got SIGINT / SIGTERM (not this worker): it checkpointed; retried.
            sw.echo(f"{self.run_id}: interrupted (exit status {code}); it resumes when a worker runs again")
            return self._finish("interrupted", {**attrs, "log_tail": log_tail(log)})
        if code != 0:
            tail = log_tail(log)
            reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            last = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
            error = f"{reason}: {last}" if last else reason
            sw.echo(f"{self.run_id}: failed ({error})")
            return self._finish("failed", {**attrs, "error": error, "log_tail": tail})
        return self._evaluate(attrs)

    def _stop(self, proc: subprocess.Popen, signalled: bool = False) -> None:
        """Let the run checkpoint and exit (SIGINT), killing it if it does not within
        :data:`STOP_GRACE`. ``signalled``: the worker was stopped by a signal that the run may have
        had too (a terminal's Ctrl-C reaches the process group): it gets :data:`OWN_STOP` seconds
        to stop on its own first, since a second SIGINT that lands after its handler is gone
        kills it by the signal."""
        if proc.poll() is not None:
            return
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C must not cut this short
        try:
            if signalled:
                try:
                    proc.wait(timeout=OWN_STOP)
                    return
                except subprocess.TimeoutExpired:
                    pass
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    # ------------------------------------------------------------------ scoring
    def _checkpoints(self) -> list[tuple[int, Path]]:
        from medvol.train.checkpoint import list_checkpoints

        return list_checkpoints(self.run_dir / "checkpoints") or list_checkpoints(self.run_dir)

    def _score(self, path: Path, out: Path) -> dict:
        """Evaluate one checkpoint into ``out`` (an earlier trial's scores.json of the same
        checkpoint is read back instead of recomputed)."""
        from medvol.eval.evaluate import evaluate

        sw = self.sweep
        done = out / "scores.json"
        if done.is_file():
            try:
                report = json.loads(done.read_text(encoding="utf-8"))
                if report.get("fake", {}).get("checkpoint") == str(path):
                    return report
            except ValueError:
                pass
        start = time.monotonic()
        report = evaluate(sw.real, str(path), out, features=sw.features, metrics=("fid", "kid", "mmd", "prdc"),
                          n=sw.n, seed=sw.seed, n_boot=sw.bootstrap, batch=sw.batch, device=sw.device,
                          overwrite=True, memo=sw.memo, command=f"medvol sweep (run {self.run_id})")
        self.eval_seconds += time.monotonic() - start
        return report

    def _score_new_checkpoints(self, during_training: bool) -> int | None:
        """Score the checkpoints not scored yet and report them to the study as intermediate
        values; the iteration at which the pruner stops the run, or None."""
        for it, path in self._checkpoints():
            if it in self.scored:
                continue
            try:
                report = self._score(path, self.run_dir / "eval" / f"iter_{it:07d}")
            except FileNotFoundError:  # rotated away (keep_checkpoints) while being read
                continue
            self.scored[it] = report
            scores = report["extractors"][0]["scores"]
            value = scores[pick_score(scores, self.sweep.select)]["value"]
            if value is not None and math.isfinite(value):
                self.trial.report(float(value), step=it)
                self.sweep.echo(f"{self.run_id}: iteration {it}: {self.sweep.select} = {value:.5g}")
                if during_training and self.trial.should_prune():
                    return it
        return None

    def _evaluate(self, attrs: dict) -> str:
        from medvol.eval.evaluate import better

        sw = self.sweep
        sw.echo(f"{self.run_id}: evaluating")
        try:
            found = self._checkpoints()
            if not found:
                raise MedvolError(f"{self.run_dir}: the run left no verified checkpoint")
            last_it, last = found[-1]
            if sw.prune:
                self._score_new_checkpoints(during_training=False)
            report = self.scored.get(last_it) or self._score(last, self.run_dir / "eval")
            ext = report["extractors"][0]
            name = pick_score(ext["scores"], sw.select)
        except (MedvolError, RuntimeError, OSError) as error:
            error_line = f"evaluation: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            sw.echo(f"{self.run_id}: evaluation failed ({error_line})")
            return self._finish("eval_failed", {**attrs, "error": error_line,
                                                "eval_seconds": round(self.eval_seconds, 2)})
        s = ext["scores"][name]
        scored_as = f"iter_{last_it:07d}" if sw.prune and last_it in self.scored else ""
        scores_json = self.run_dir / "eval" / scored_as / "scores.json"
        attrs.update(
            eval_seconds=round(self.eval_seconds, 2),
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
                        "scores_json": str(scores_json)})
        sw.echo(f"{self.run_id}: {name} = {s['value']:.5g}")
        return self._finish("evaluated", attrs)

    # ------------------------------------------------------------------ the record
    def _finish(self, status: str, attrs: dict) -> str:
        """Record the outcome in the study: user attributes, then the trial's final state. An
        interrupted run is enqueued again (same run, same values) so that it resumes."""
        import optuna

        state = {"evaluated": optuna.trial.TrialState.COMPLETE,
                 "pruned": optuna.trial.TrialState.PRUNED}.get(status, optuna.trial.TrialState.FAIL)
        attrs = {**attrs, "status": status, "finished": _now()}
        for key, value in attrs.items():
            self.trial.set_user_attr(key, value)
        if status == "evaluated":
            value = attrs["score"]["value"]
            if value is None or not math.isfinite(value):
                self.trial.set_user_attr("status", "eval_failed")
                self.trial.set_user_attr("error", f"evaluation: {attrs['score']['name']} is {value}")
                self.sweep.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
                return "eval_failed"
            self.sweep.study.tell(self.trial, float(value))
        else:
            self.sweep.study.tell(self.trial, state=state)
        if status == "interrupted":
            self.sweep.requeue(self.trial.user_attrs, self.trial.number, count_retry=False)
        return status
