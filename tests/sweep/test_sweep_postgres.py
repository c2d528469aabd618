"""Several workers sharing one sweep study on a real PostgreSQL server (tests/sweep/conftest.py):
every run is trained exactly once; a worker killed mid-trial leaves the study consistent and its
run is retried from its checkpoint by another worker; the planning lock excludes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="optuna missing: pip install 'medvol[sweep]'")


def trials_of(study, run_id):
    return sorted((t for t in study.get_trials() if t.user_attrs.get("run_id") == run_id), key=lambda t: t.number)


def headers(run_dir):
    """How many times a worker started training the run (one header line per trial)."""
    return (Path(run_dir) / "train.log").read_text(encoding="utf-8").count("# medvol sweep ")


def command(files, out, grid, storage, study, *extra):
    return [sys.executable, "-m", "medvol.cli", "sweep", "--config", str(files["config"]), "--grid", str(grid),
            "--features", f"inception:{files['weights']}", "--n", "6", "--bootstrap", "4", "--out", str(out),
            "--storage", storage, "--study", study, *map(str, extra)]


def finish(proc, timeout):
    """Wait for a worker; never leave it (or its training run) behind."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def training_alive(run_dir: Path) -> bool:
    """Whether a process training ``run_dir`` is still running (its command line names it)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "train" in cmdline and f"train.out=\"{run_dir}\"" in cmdline.replace("\x00", " "):
            return True
    return False


def test_two_workers_share_one_study_and_train_each_run_once(files, postgres_url, tmp_path):
    """``--workers 2``: two worker processes start together on one PostgreSQL study; each run is
    enqueued once and trained once (a race in enqueueing or taking trials shows as extra trials
    or a run trained twice)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"stratify": "model.loss", "fixed": {"train.iterations": 2},
                                    "grid": {"model.loss": ["bce", "hinge", "lsgan"]}}))
    out = tmp_path / "sweep"
    proc = subprocess.Popen(command(files, out, grid, postgres_url, "two", "--runs", 3, "--workers", 2),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = finish(proc, 300)
    assert proc.returncode == 0, stderr
    assert "worker 0 started" in stdout and "worker 1 started" in stdout
    study = optuna.load_study(study_name="two", storage=postgres_url)
    assert len(study.get_trials()) == 3
    for i in range(3):
        (trial,) = trials_of(study, f"run_{i:03d}")
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert headers(out / "runs" / f"run_{i:03d}") == 1  # trained by one worker, once
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in state["runs"]] == ["evaluated"] * 3
    assert state["storage"] == postgres_url and state["study"] == "two"


@pytest.mark.slow
def test_a_killed_worker_leaves_a_consistent_study_and_a_rerunnable_trial(files, postgres_url, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"stratify": "model.loss",
                                    "fixed": {"train.iterations": 40, "train.ckpt_every": 4,
                                              "train.keep_checkpoints": 1},
                                    "grid": {"model.loss": ["hinge", "bce"]}}))
    out = tmp_path / "sweep"
    cmd = command(files, out, grid, postgres_url, "kill", "--runs", 2, "--heartbeat", 1)
    worker = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpts = out / "runs" / "run_000" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(ckpts.glob("ckpt_*.pt.sha256")) and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.02)
    assert worker.poll() is None, "the worker ended before its first checkpoint"
    os.kill(worker.pid, signal.SIGKILL)  # the worker only: its training run gets SIGTERM from the kernel
    finish(worker, 30)
    deadline = time.monotonic() + 120
    while training_alive(out / "runs" / "run_000") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not training_alive(out / "runs" / "run_000"), "the killed worker's training run is still running"
    # consistent: the trial is still RUNNING (its heartbeat stops), run_001 still waits
    study = optuna.load_study(study_name="kill", storage=postgres_url)
    (lost,) = trials_of(study, "run_000")
    (waiting,) = trials_of(study, "run_001")
    assert lost.state == optuna.trial.TrialState.RUNNING and waiting.state == optuna.trial.TrialState.WAITING
    stopped = max(int(p.name[5:12]) for p in ckpts.glob("ckpt_*.pt"))
    assert 4 <= stopped < 40
    # another worker fails the stale trial, retries its run from the checkpoint, and trains run_001
    other = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = finish(other, 300)
    assert other.returncode == 0, stderr
    assert f"run_000: trial {lost.number} lost its worker; enqueued again" in stdout
    lost_then, retry = trials_of(study, "run_000")
    assert lost_then.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == lost.number and retry.params == lost_then.params
    (done,) = trials_of(study, "run_001")
    assert done.state == optuna.trial.TrialState.COMPLETE and headers(out / "runs" / "run_001") == 1
    log = (out / "runs" / "run_000" / "train.log").read_text(encoding="utf-8")
    assert f"resumed from {ckpts / f'ckpt_{stopped:07d}.pt'}" in log
    assert retry.user_attrs["provenance"]["iteration"] == 40
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [(r["status"], r.get("previous")) for r in state["runs"]] == [("evaluated", "lost"), ("evaluated", None)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_planning_lock_excludes(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    from medvol.sweep.storage import planning_lock

    code = ("import sys, pathlib; from medvol.sweep.storage import planning_lock\n"
            "print('trying', flush=True)\n"
            "with planning_lock(sys.argv[1], 'lockstudy'):\n"
            "    pathlib.Path(sys.argv[2]).write_text('got it')\n")
    got = tmp_path / "got"
    with planning_lock(url, "lockstudy"):
        proc = subprocess.Popen([sys.executable, "-c", code, url, str(got)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "trying"
            time.sleep(1.0)
            assert not got.exists(), "a second process took the planning lock while it was held"
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(timeout=60) == 0 and got.read_text(encoding="utf-8") == "got it"
