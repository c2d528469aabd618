"""``medvol sweep`` on Optuna: K configurations drawn from a grid, one trial each, any number of
workers on any number of machines sharing one study.

The sweep folder ``DIR``::

    DIR/study.json        which study (storage URL without password, name) and its identity
    DIR/study.db          the SQLite storage, unless --storage names another (PostgreSQL)
    DIR/base.yaml         the base config as given (each run = base + fixed + drawn overrides)
    DIR/grid.yaml         the grid as given
    DIR/runs/<id>/        a ``medvol train`` run folder, with train.log and eval/ (scores.json)
    DIR/sweep.json, sweep.csv, report.md, boxplot.png, d_filters.png, params/   (:mod:`medvol.sweep.report`)

The study (Optuna's storage) is the record. Run ``i`` of the draw is enqueued once as a trial
with fixed parameters (user attributes ``run``, ``run_id``, ``values``); a worker pops waiting
trials one at a time (:mod:`medvol.sweep.trial` trains and scores each) and leaves when no trial
is waiting. Enqueueing, retrying and popping happen under the study's planning lock
(:mod:`medvol.sweep.storage`), so each configuration is trained by exactly one worker at a time.

A run's status is its latest trial's. A worker that dies stops its trial's heartbeat: after two
intervals the next worker that looks for work (a running one between two trials, or one started
later) fails it as stale and enqueues a retry of the same run (up to ``max_retry`` times), which
resumes from the run's last checkpoint. A failing run (``failed``, ``eval_failed``) is recorded and
the sweep goes on; ``retry_failed`` enqueues it again.
An interrupted run (Ctrl-C, SIGTERM) is enqueued again at once and resumes when a worker runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import medvol
from medvol.errors import MedvolError
from medvol.sweep.grid import Grid, canonical_hash, read_yaml
from medvol.sweep.storage import DB_NAME, default_storage, describe, open_storage, planning_lock

STUDY_FILE = "study.json"
SAMPLERS = ("random", "grid")
PRUNERS = ("none", "median", "halving")
#: What a sweep folder may hold besides temporaries: the sweep's own files.
OWN = {STUDY_FILE, "base.yaml", "grid.yaml", "runs", "params", "sweep.json", "sweep.csv", "report.md",
       "boxplot.png", "d_filters.png", DB_NAME, f"{DB_NAME}.plan.lock", f"{DB_NAME}-journal", f"{DB_NAME}-wal", f"{DB_NAME}-shm"}


def _terminate(signum, frame) -> None:
    stop = KeyboardInterrupt("terminated (SIGTERM); the sweep resumes when the same command runs again")
    stop.exit_code = 128 + signal.SIGTERM  # the CLI's exit status, as for medvol train
    raise stop


def _quiet():
    """Optuna's experimental-feature warnings (heartbeats, enqueue with user attributes) muted, and
    its warning that heartbeats are meant for ``Study.optimize``: this worker beats for itself
    (:class:`medvol.sweep.trial.Heartbeat`)."""
    import optuna

    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return context


class Sweep:
    """A sweep: its folder, its study, and one worker (or ``workers`` worker processes).

    Args:
        config: the base training config (YAML).
        grid: the grid file (:mod:`medvol.sweep.grid`).
        runs: K, the number of configurations to draw (a larger K extends the sweep).
        out: the sweep folder DIR.
        storage: an SQLAlchemy URL (``sqlite:///PATH`` or ``postgresql://...``); default
            ``sqlite:///DIR/study.db``.
        study: the study's name in the storage (default: the folder's name).
        sampler: ``random`` (seeded draws without repeats, stratified) or ``grid`` (every
            configuration once, in seeded order).
        select: the score that ranks runs (``fid``, ``kid``, ``precision``, ...).
        features, n, seed, real, bootstrap, batch, device: the evaluation's settings (seed is
            also the draw seed).
        prune: ``none`` (default, as the study), ``median`` or ``halving``: intermediate scores of
            each new checkpoint are reported and the pruner may stop a run.
        prune_startup: median pruner: trials completed before any pruning.
        prune_warmup: median pruner: iterations before a run can be pruned.
        retry_failed: enqueue the runs whose latest trial failed again.
        max_retry: retries of a run whose worker died (stale heartbeat).
        heartbeat: seconds between heartbeats; a trial is stale after two.
        workers: worker processes this command starts (1: this process works).
        gpus: GPU ids; worker j trains and scores on ``gpus[j % len(gpus)]`` (CUDA_VISIBLE_DEVICES).
        python: the interpreter that runs ``medvol train`` (default: this one).
        echo: called with one line per event (the CLI prints them).
    """

    def __init__(self, config: str | os.PathLike, grid: str | os.PathLike, runs: int,
                 out: str | os.PathLike, *, storage: str | None = None, study: str | None = None,
                 sampler: str = "random", select: str = "fid", features: Sequence[str] | None = None,
                 n: int | None = 256, seed: int = 0, real: str = "data", bootstrap: int = 50,
                 batch: int = 16, device: str = "cpu", prune: str = "none", prune_startup: int = 2,
                 prune_warmup: int = 0, retry_failed: bool = False, max_retry: int = 2,
                 heartbeat: int = 60, workers: int = 1, gpus: Sequence[str] | None = None,
                 threads: int | None = None, python: str | None = None, echo: Callable[[str], None] = lambda line: None):
        from medvol.eval.evaluate import better
        from medvol.utils import optional_import

        optional_import("optuna", "medvol sweep")
        optional_import("sqlalchemy", "medvol sweep")
        if sampler not in SAMPLERS:
            raise MedvolError(f"--sampler {sampler}: choose from {', '.join(SAMPLERS)}")
        if prune not in PRUNERS:
            raise MedvolError(f"--prune {prune}: choose from {', '.join(PRUNERS)}")
        for option, value, least in (("--workers", workers, 1), ("--heartbeat", heartbeat, 1),
                                     ("--max-retry", max_retry, 0), ("--prune-startup", prune_startup, 0),
                                     ("--prune-warmup", prune_warmup, 0)):
            if value < least:
                raise MedvolError(f"{option} {value}: must be at least {least}")
        self.gpus = [str(g).strip() for g in gpus or []]
        if any(not g.isdigit() for g in self.gpus):
            raise MedvolError(f"--gpus {','.join(self.gpus)}: give GPU ids, e.g. 0,1,2,3")
        if workers == 1 and len(self.gpus) > 1:
            raise MedvolError(f"--gpus {','.join(self.gpus)}: one worker uses one GPU; give --workers "
                              f"{len(self.gpus)} (or more) to use them all")
        self.config_path, self.grid_path = Path(config), Path(grid)
        self.base = read_yaml(self.config_path, "config file")
        self.grid = Grid(self.grid_path, self.base)
        self.count = runs
        self.draws = self.grid.draw(runs, seed) if sampler == "random" else self.grid.ordered(runs, seed)
        self.out = Path(out)
        self.storage_url = storage or default_storage(self.out)
        self.storage_shown = describe(self.storage_url)
        self.study_name = study or self.out.resolve().name
        if not self.study_name.strip():
            raise MedvolError("--study: give a study name")
        self.sampler, self.select, self.seed, self.real = sampler, select, seed, real
        self.features = list(features) if features else None
        self.n, self.bootstrap, self.batch, self.device = n, bootstrap, batch, device
        self.prune = None if prune == "none" else prune
        self.prune_startup, self.prune_warmup = prune_startup, prune_warmup
        self.retry_failed, self.max_retry, self.heartbeat = retry_failed, max_retry, heartbeat
        self.workers = workers
        #: torch CPU threads of this worker's training runs (None: medvol train's default), split
        #: between the workers this command starts; not part of the sweep's identity.
        self.threads = max(1, threads // workers) if threads else None
        self.python = python or sys.executable
        self.echo = echo
        self.direction = better(select)
        self.identity = {
            "config_sha256": canonical_hash(self.base), "grid_sha256": self.grid.sha256,
            "sampler": sampler, "select": select, "features": self.features, "n": n, "seed": seed,
            "real": real, "bootstrap": bootstrap, "prune": prune, "prune_startup": prune_startup,
            "prune_warmup": prune_warmup,
        }
        self.gpu = self.gpus[0] if self.gpus and workers == 1 else None
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{self.gpu}" if self.gpu else "")
        self.memo: dict = {}
        self.study = None
        self.storage = None

    # ------------------------------------------------------------------ the folder and the study
    def _prepare_folder(self) -> None:
        """Claim DIR for this sweep: refuse another sweep's folder or a folder of other files."""
        from medvol.outputs import is_temp_name
        from medvol.utils import checked_write

        if self.out.exists() and not self.out.is_dir():
            raise MedvolError(f"--out {self.out}: exists and is not a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"storage": self.storage_shown, "study": self.study_name, "identity": self.identity}
        path = self.out / STUDY_FILE
        if path.is_file():
            try:
                have = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                raise MedvolError(f"{path}: unreadable sweep record; use another --out") from None
            if not isinstance(have, dict) or json.loads(json.dumps(record)) != {k: have.get(k) for k in record}:
                what = self._difference(have.get("identity") if isinstance(have, dict) else None)
                if isinstance(have, dict) and have.get("identity") == json.loads(json.dumps(self.identity)):
                    what = f"study {have.get('study')!r} in {have.get('storage')}"
                raise MedvolError(f"--out {self.out} holds a sweep of another {what}; use another --out")
        else:
            foreign = [p.name for p in self.out.iterdir() if p.name not in OWN and not is_temp_name(p.name)]
            if foreign:
                raise MedvolError(f"--out {self.out} is not empty and holds no sweep ({STUDY_FILE}; "
                                  f"found {foreign[0]}); use another --out")
        for source, name in ((self.config_path, "base.yaml"), (self.grid_path, "grid.yaml")):
            if not (self.out / name).is_file():
                with checked_write(self.out / name, "sweep copy") as tmp:
                    shutil.copyfile(source, tmp)
        if not path.is_file():
            with checked_write(path, "sweep record") as tmp:
                tmp.write_text(json.dumps({**record, "medvol_version": medvol.__version__}, indent=2) + "\n",
                               encoding="utf-8")
        (self.out / "runs").mkdir(exist_ok=True)

    def _difference(self, have: Any) -> str:
        """What differs between a recorded identity and this sweep's, for a refusal."""
        if not isinstance(have, dict):
            return "kind (no identity)"
        for key, want in json.loads(json.dumps(self.identity)).items():
            if have.get(key) != want:
                what = {"config_sha256": "config", "grid_sha256": "grid"}.get(key, f"--{key.replace('_', '-')}")
                return f"{what} ({have.get(key)} vs {want})"
        return "identity"

    def _pruner(self):
        import optuna

        if self.prune == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.prune_startup, n_warmup_steps=self.prune_warmup)
        if self.prune == "halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        return optuna.pruners.NopPruner()

    def open(self) -> None:
        """Open the storage and the study (created on first use), check that it is this sweep's,
        and enqueue the runs it lacks (and, with ``retry_failed``, the failed ones)."""
        import optuna

        self.storage = open_storage(self.storage_url, self.heartbeat, self._on_stale)
        quiet = _quiet()
        try:
            with planning_lock(self.storage_url, self.study_name):
                self.study = optuna.create_study(
                    storage=self.storage, study_name=self.study_name, load_if_exists=True,
                    direction="minimize" if self.direction == "lower" else "maximize",
                    sampler=optuna.samplers.RandomSampler(seed=self.seed), pruner=self._pruner())
                have = self.study.user_attrs.get("medvol_identity")
                if have is None:
                    if self.study.get_trials(deepcopy=False):
                        raise MedvolError(f"--study {self.study_name} in {self.storage_shown} holds trials "
                                          "that are not a medvol sweep's; use another --study")
                    self.study.set_user_attr("medvol_identity", self.identity)
                    self.study.set_user_attr("medvol_version", medvol.__version__)
                    self.study.set_user_attr("medvol_grid", read_yaml(self.grid_path, "grid file"))
                    self.study.set_user_attr("medvol_config", self.base)
                elif have != json.loads(json.dumps(self.identity)):
                    raise MedvolError(f"--study {self.study_name} in {self.storage_shown} is a sweep of "
                                      f"another {self._difference(have)}; use another --study")
                self._plan()
        finally:
            quiet.__exit__(None, None, None)

    def _runs(self) -> dict[int, list]:
        """The study's trials per run index, oldest first."""
        runs: dict[int, list] = {}
        for t in self.study.get_trials(deepcopy=False):
            index = t.user_attrs.get("run")
            if isinstance(index, int):
                runs.setdefault(index, []).append(t)
        return {i: sorted(ts, key=lambda t: t.number) for i, ts in runs.items()}

    def _plan(self) -> None:
        import optuna

        runs = self._runs()
        added = retried = 0
        for i, values in enumerate(self.draws):
            trials = runs.get(i)
            if not trials:
                self._enqueue({"run": i, "run_id": f"run_{i:03d}", "values": values, "retries": 0})
                added += 1
                continue
            latest = trials[-1]
            if canonical_hash(latest.user_attrs.get("values")) != canonical_hash(values):
                raise MedvolError(f"--study {self.study_name}: run {i} was drawn differently; the study does "
                                  "not belong to this grid")
            if self.retry_failed and latest.state == optuna.trial.TrialState.FAIL:
                self._requeue(latest.user_attrs, latest.number, count_retry=False)
                retried += 1
        if added or retried:
            self.echo(f"study {self.study_name} ({self.storage_shown}): {added} runs enqueued"
                      + (f", {retried} failed runs enqueued again" if retried else ""))

    def _enqueue(self, attrs: dict) -> None:
        self.study.enqueue_trial(self.grid.params(attrs["values"]), user_attrs=attrs)

    def _requeue(self, attrs: dict, number: int, count_retry: bool) -> bool:
        """Enqueue run ``attrs['run']`` again with its values (a retry of trial ``number``)."""
        retries = int(attrs.get("retries", 0)) + (1 if count_retry else 0)
        if count_retry and retries > self.max_retry:
            self.echo(f"{attrs.get('run_id')}: trial {number} lost its worker; not retried "
                      f"(--max-retry {self.max_retry} reached)")
            return False
        self._enqueue({"run": attrs["run"], "run_id": attrs["run_id"], "values": attrs["values"],
                       "retries": retries, "retry_of": number})
        return True

    def requeue(self, attrs: dict, number: int, count_retry: bool) -> None:
        """:meth:`_requeue` under the planning lock (called outside planning)."""
        quiet = _quiet()
        try:
            with planning_lock(self.storage_url, self.study_name):
                self._requeue(attrs, number, count_retry)
        finally:
            quiet.__exit__(None, None, None)

    def _on_stale(self, study, trial) -> None:
        """A trial whose worker stopped sending heartbeats was failed: retry its run (it resumes
        from the run's last checkpoint)."""
        if isinstance(trial.user_attrs.get("run"), int) and \
                self._requeue(trial.user_attrs, trial.number, count_retry=True):
            self.echo(f"{trial.user_attrs.get('run_id')}: trial {trial.number} lost its worker; enqueued again")

    # ------------------------------------------------------------------ working
    def child_env(self) -> dict:
        env = dict(os.environ)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def run(self) -> dict:
        """Prepare DIR, open the study, work (or start ``workers`` worker processes), write the
        report; return the sweep record (also ``DIR/sweep.json``)."""
        self._prepare_folder()
        self.open()
        previous = None
        if threading.current_thread() is threading.main_thread():
            # A scheduler's SIGTERM stops the sweep as Ctrl-C does: the run checkpoints first.
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            if self.workers > 1:
                self._spawn()
            else:
                self.work()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            state = self.write_report()
        return state

    def work(self) -> None:
        """Pop waiting trials and run them until none is waiting. (A worker does not wait for the
        trials of others: one that dies is retried by the next worker that looks for work.)"""
        import optuna
        from optuna.storages import fail_stale_trials

        from medvol.outputs import safe_name
        from medvol.sweep.trial import Heartbeat, TrialRun

        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu  # the evaluation in this process too
        waiting, running = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
        busy: list = []
        while True:
            trial = beat = None
            quiet = _quiet()
            try:
                with planning_lock(self.storage_url, self.study_name):
                    fail_stale_trials(self.study)
                    if self.study.get_trials(deepcopy=False, states=(waiting,)):
                        trial = self.study.ask()
                        beat = Heartbeat(self.storage, trial._trial_id, self.heartbeat)
                    else:
                        busy = self.study.get_trials(deepcopy=False, states=(running,))
            finally:
                quiet.__exit__(None, None, None)
            if trial is None:
                if busy:
                    self.echo(f"no run waiting; {len(busy)} running in other workers (one whose worker dies is "
                              "retried by the next worker that starts)")
                return
            try:
                attrs = trial.user_attrs
                values = attrs.get("values")
                try:
                    if not isinstance(attrs.get("run"), int) or not isinstance(values, dict) \
                            or any(k not in self.grid.keys for k in values):
                        raise MedvolError(f"trial {trial.number} of study {self.study_name} is not a run of this "
                                          "sweep (no run index or values of this grid)")
                    run_dir = safe_name(self.out / "runs", attrs.get("run_id"), "run id in the study")
                except MedvolError as error:
                    trial.set_user_attr("status", "failed")
                    trial.set_user_attr("error", str(error))
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    self.echo(str(error))
                    continue
                for keys, _ in self.grid.space:
                    if keys[0] in values:
                        trial.suggest_categorical(",".join(keys), self.grid.choices(keys))
                TrialRun(self, trial, run_dir, values).run()
            finally:
                beat.stop()

    def worker_command(self, gpu: str | None) -> list[str]:
        """The ``medvol sweep`` command of one worker process (the same sweep, one worker)."""
        cmd = [self.python, "-m", "medvol.cli", "sweep", "--config", str(self.config_path),
               "--grid", str(self.grid_path), "--runs", str(self.count), "--out", str(self.out),
               "--storage", self.storage_url, "--study", self.study_name, "--sampler", self.sampler,
               "--select", self.select, "--real", self.real, "--seed", str(self.seed),
               "--bootstrap", str(self.bootstrap), "--batch", str(self.batch), "--device", self.device,
               "--prune", self.prune or "none", "--prune-startup", str(self.prune_startup),
               "--prune-warmup", str(self.prune_warmup), "--max-retry", str(self.max_retry),
               "--heartbeat", str(self.heartbeat), "--workers", "1"]
        if self.n is not None:
            cmd += ["--n", str(self.n)]
        if self.features:
            cmd += ["--features", ",".join(self.features)]
        if gpu is not None:
            cmd += ["--gpus", gpu]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def _spawn(self) -> None:
        """Start ``workers`` worker processes and wait for them (Ctrl-C reaches them too; a
        SIGTERM of this process is passed on)."""
        from medvol.sweep.trial import _die_with_worker

        procs = []
        for j in range(self.workers):
            gpu = self.gpus[j % len(self.gpus)] if self.gpus else None
            procs.append(subprocess.Popen(self.worker_command(gpu), stdin=subprocess.DEVNULL,
                                          preexec_fn=_die_with_worker))
            self.echo(f"worker {j} started (pid {procs[-1].pid}" + (f", GPU {gpu})" if gpu else ")"))
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt as interrupt:
            for p in procs:
                if p.poll() is None and getattr(interrupt, "exit_code", 130) == 128 + signal.SIGTERM:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            raise
        bad = [(j, c) for j, c in enumerate(codes) if c != 0]
        if bad:
            raise MedvolError(f"worker {bad[0][0]} exited with status {bad[0][1]} ({len(bad)} of "
                              f"{self.workers} workers failed; their lines above say why)")

    # ------------------------------------------------------------------ results
    def write_report(self) -> dict:
        """Write the report files from the study; return the sweep record."""
        from medvol.sweep.report import study_state, write_report

        state = study_state(self.study, self.grid, self.out, config=str(self.config_path),
                            grid_path=str(self.grid_path), storage=self.storage_shown)
        write_report(self.out, state, self.grid, self.select)
        return state
