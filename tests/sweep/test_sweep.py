"""``medvol sweep`` on Optuna: grid draws and orders, two tiny runs end to end on the default
SQLite study (one made to fail by an impossible combination of options), resumption without
retraining, extension, retries, refusals, names from the study kept inside the folder, pruning,
the report and figures. Several workers on PostgreSQL: tests/sweep/test_sweep_postgres.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.sweep.grid import Grid, read_yaml
from medvol.sweep.report import param_file, spread
from medvol.sweep.trial import pick_score

optuna = pytest.importorskip("optuna", reason="optuna missing: pip install 'medvol[sweep]'")

ROOT = Path(__file__).resolve().parents[2]

def sweep_args(files, out, *extra):
    # One thread unless a test says otherwise: a re-run of the module's sweep (a retry, an
    # extension) then trains with the count the first run recorded.
    threads = [] if "--threads" in map(str, extra) else ["--threads", "1"]
    return ["sweep", "--config", str(files["config"]), "--grid", str(files["grid"]), "--runs", "2",
            "--features", f"inception:{files['weights']}", "--n", "6", "--bootstrap", "4",
            "--out", str(out), *threads, *map(str, extra)]


def load_study(out, name=None, storage=None):
    return optuna.load_study(study_name=name or Path(out).name,
                             storage=storage or f"sqlite:///{Path(out).resolve() / 'study.db'}")


def trials_of(study, run_id):
    return sorted((t for t in study.get_trials() if t.user_attrs.get("run_id") == run_id), key=lambda t: t.number)


def headers(run_dir):
    """How many times a worker started training the run (one header line per trial)."""
    return (Path(run_dir) / "train.log").read_text(encoding="utf-8").count("# medvol sweep ")


@pytest.fixture(scope="module")
def swept(files):
    out = files["root"] / "sweep"
    before = torch.get_num_threads()
    try:
        assert main(sweep_args(files, out, "--threads", 1)) == 0
    finally:
        torch.set_num_threads(before)
    return out


# ------------------------------------------------------------------------------------- grids


def test_draws_are_seeded_prefix_stable_stratified_and_conditional(files, tmp_path):
    BASE = files["base"]
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump({
        "stratify": "model.loss",
        "grid": {"model.loss": ["bce", "lsgan", "hinge"], "model.norm": ["batch", "instance"],
                 "train.lr.G,train.lr.D": [1e-4, 2e-4, 5e-4], "model.label_smoothing": [0.0, 0.1]},
        "when": {"model.label_smoothing": {"model.loss": ["bce", "lsgan"]}}}))
    grid = Grid(grid_file, BASE)
    assert grid.size == 30  # hinge has no label smoothing: 6 of its 12 combinations merge
    five = grid.draw(5, seed=1)
    assert grid.draw(3, seed=1) == five[:3]
    assert grid.draw(5, seed=2) != five
    assert [d["model.loss"] for d in five] == ["bce", "lsgan", "hinge", "bce", "lsgan"]
    assert all(d["train.lr.G"] == d["train.lr.D"] for d in five)
    assert all(("model.label_smoothing" in d) == (d["model.loss"] != "hinge") for d in five)
    # stratified, hinge gets every third run but has only 6 configurations
    with pytest.raises(MedvolError, match="no configuration left for run 20 .*stratify by model.loss"):
        grid.draw(30, seed=0)
    with pytest.raises(MedvolError, match="holds only 30"):
        grid.draw(31, seed=0)
    # the grid sampler: every distinct configuration once, in a seeded order, prefix-stable
    ordered = grid.ordered(30, seed=4)
    assert len({json.dumps(d, sort_keys=True) for d in ordered}) == 30 and grid.ordered(7, seed=4) == ordered[:7]
    assert grid.ordered(30, seed=5) != ordered
    assert all(("model.label_smoothing" in d) == (d["model.loss"] != "hinge") for d in ordered)
    with pytest.raises(MedvolError, match="holds only 30"):
        grid.ordered(31, seed=0)
    assert grid.params(five[0]) == {"model.loss": "bce", "model.norm": five[0]["model.norm"],
                                    "train.lr.G,train.lr.D": five[0]["train.lr.G"],
                                    "model.label_smoothing": five[0]["model.label_smoothing"]}
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"grid": {"model.loss": ["bce", "lsgan", "hinge"],
                                              "model.norm": ["batch", "instance"]}}))
    every = Grid(plain, BASE).draw(6, seed=0)
    assert len({json.dumps(d, sort_keys=True) for d in every}) == 6  # the whole grid, no repeats


@pytest.mark.parametrize("grid, culprit", [
    ({"grid": {"model.los": ["bce"]}}, "model.los"),
    ({"grid": {"model.loss": ["bce", "nope"]}}, "'nope'"),
    ({"grid": {"model.loss": []}}, "non-empty list"),
    ({"grid": {"model.loss": ["bce"]}, "stratify": "model.norm"}, "stratify"),
    ({"grid": {"model.loss": ["bce"]}, "when": {"model.norm": {"model.loss": ["bce"]}}}, "when.model.norm"),
    ({"grid": {"model.loss": ["bce"]}, "extra": 1}, "'extra'"),
    ({"grid": {"model.loss": ["bce"]}, "fixed": {"train.iterations": -1}}, "fixed"),
])
def test_bad_grids_are_named(files, tmp_path, grid, culprit):
    BASE = files["base"]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(MedvolError, match=None) as info:
        Grid(path, BASE)
    assert culprit in str(info.value) and str(path) in str(info.value)


def test_shipped_grids_load_and_draw():
    """The tiny grid; the empirical study's grids: tests/sweep/test_empirical_grid.py."""
    g = Grid(ROOT / "configs" / "sweeps" / "tiny.yaml", read_yaml(ROOT / "configs" / "dcgan_tiny.yaml", "config"))
    draws = g.draw(10, seed=0)
    assert len(draws) == 10 and all("model.loss" in d for d in draws)


def test_pick_score_and_spread():
    scores = {"image/fid": 1, "image/kid": 2, "mean/precision": 3, "axial/precision": 4}
    assert pick_score(scores, "fid") == "image/fid"
    assert pick_score(scores, "precision") == "mean/precision"
    with pytest.raises(MedvolError, match="--select density"):
        pick_score(scores, "density")
    assert spread([4.0, 1.0, 3.0, 2.0, 5.0]) == {"min": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0, "max": 5.0}
    assert param_file("train.lr.G,train.lr.D") == "train.lr.G_train.lr.D.png"
    assert param_file("../../x") == "x.png"


# ------------------------------------------------------------------------------ end to end


def test_sweep_end_to_end_with_one_failing_run(swept):
    state = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    ok, bad = state["runs"]
    assert ok["status"] == "evaluated" and ok["values"] == {"model.loss": "bce", "model.label_smoothing": 0.1}
    assert bad["status"] == "failed" and bad["values"]["model.loss"] == "wgan"
    assert bad["returncode"] == 2 and "label_smoothing" in bad["error"]
    assert any("label_smoothing" in line for line in bad["log_tail"])
    score = ok["score"]
    assert score["name"] == "image/fid" and score["direction"] == "lower"
    assert score["ci_low"] <= score["ci_high"]
    prov = ok["provenance"]
    ckpt = Path(prov["checkpoint"])
    assert ckpt.parent == swept / "runs" / "run_000" / "checkpoints" and prov["iteration"] == 4
    assert prov["checkpoint_sha256"] == (ckpt.parent / (ckpt.name + ".sha256")).read_text(encoding="utf-8").split()[0]
    assert prov["extractor"] == "inception" and len(prov["weights_sha256"]) == 64
    assert prov["n_real"] == prov["n_fake"] == 6 and prov["seed"] == 0
    scores = json.loads((swept / "runs" / "run_000" / "eval" / "scores.json").read_text(encoding="utf-8"))
    assert scores["extractors"][0]["scores"]["image/fid"]["value"] == score["value"]
    # the run trained with base + fixed + drawn values
    run_cfg = yaml.safe_load((swept / "runs" / "run_000" / "config.yaml").read_text(encoding="utf-8"))
    assert run_cfg["model"]["options"]["label_smoothing"] == 0.1 and run_cfg["train"]["iterations"] == 4
    # the study is the record: one trial per run, its state, value, parameters and results
    study = load_study(swept)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    (t0,), (t1,) = trials_of(study, "run_000"), trials_of(study, "run_001")
    assert t0.state == optuna.trial.TrialState.COMPLETE and t0.value == score["value"]
    assert t0.params == {"model.loss": "bce", "model.label_smoothing": 0.1}
    assert t0.user_attrs["provenance"]["checkpoint_sha256"] == prov["checkpoint_sha256"]
    assert t1.state == optuna.trial.TrialState.FAIL and t1.user_attrs["status"] == "failed"
    assert study.user_attrs["medvol_identity"]["grid_sha256"] == state["identity"]["grid_sha256"]

    rows = list(csv.DictReader((swept / "sweep.csv").open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["evaluated", "failed"]
    assert rows[0]["model.loss"] == "bce" and float(rows[0]["value"]) == pytest.approx(score["value"], rel=1e-5)
    assert rows[0]["ci_low"] and "label_smoothing" in rows[1]["error"]
    report = (swept / "report.md").read_text(encoding="utf-8")
    assert "## Best run per model.loss" in report and "| bce | 1 | 0 | 0 | run_000 |" in report
    assert "| wgan | 1 | 1 | 0 | — |" in report and "## Spread of image/fid" in report
    assert "run_001 (failed, trials 1)" in report and "![image/fid per loss](boxplot.png)" in report
    assert (swept / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the score against each grid key with more than one value (model.loss here)
    assert "![image/fid against model.loss](params/model.loss.png)" in report
    assert (swept / "params" / "model.loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (swept / "params" / "model.label_smoothing.png").exists()
    assert not (swept / "d_filters.png").exists() and "D's filters" not in report  # one filter count


def test_second_invocation_does_not_retrain(files, swept, capsys):
    ckpt_dir = swept / "runs" / "run_000" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()}
    log_before = (swept / "runs" / "run_001" / "train.log").read_text(encoding="utf-8")
    scores_before = (swept / "runs" / "run_000" / "eval" / "scores.json").stat().st_mtime_ns
    assert main(sweep_args(files, swept)) == 0
    out = capsys.readouterr().out
    assert "training" not in out and "2 runs: 1 evaluated, 1 failed" in out
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()} == before
    assert (swept / "runs" / "run_001" / "train.log").read_text(encoding="utf-8") == log_before
    assert (swept / "runs" / "run_000" / "eval" / "scores.json").stat().st_mtime_ns == scores_before
    assert len(load_study(swept).get_trials()) == 2


def test_lost_trial_is_retried_and_resumes_from_its_checkpoint(files, swept, capsys):
    """A worker that died mid-trial (its trial RUNNING, no heartbeat since) is failed as stale by
    the next worker, which retries the run from its checkpoint; the study stays consistent."""
    study = load_study(swept)
    before = len(study.get_trials())
    (done,) = trials_of(study, "run_000")
    # As if a worker had popped a retry of run_000 and died a minute ago.
    study.enqueue_trial(done.params, user_attrs={k: done.user_attrs[k] for k in ("run", "run_id", "values")}
                        | {"retries": 0})
    lost = study.ask()
    import sqlite3

    with sqlite3.connect(swept / "study.db") as db:  # its last heartbeat a minute ago: the worker is gone
        db.execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, datetime('now', '-60 seconds'))",
                   (lost._trial_id,))
    assert main(sweep_args(files, swept, "--heartbeat", "1")) == 0
    out = capsys.readouterr().out
    assert f"run_000: trial {lost.number} lost its worker; enqueued again" in out
    study = load_study(swept)
    trials = trials_of(study, "run_000")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                         optuna.trial.TrialState.COMPLETE]
    assert trials[2].user_attrs["retry_of"] == lost.number and trials[2].user_attrs["retries"] == 1
    assert len(study.get_trials()) == before + 2
    log = (swept / "runs" / "run_000" / "train.log").read_text(encoding="utf-8")
    assert "--resume auto" in log and "resumed from" in log and "ckpt_0000004.pt" in log
    state = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    assert state["runs"][0]["status"] == "evaluated" and state["runs"][0]["previous"] == "lost"
    assert state["runs"][0]["trials"] == [t.number for t in trials]


def test_extend_and_retry_failed(files, swept, tmp_path, capsys):
    grid = tmp_path / "grid3.yaml"
    # the same grid, one more value at the end: a different grid (refused in the same study)...
    grid.write_text(yaml.safe_dump({**files["grid_data"], "grid": {"model.loss": ["bce", "wgan", "hinge"],
                                                     "model.label_smoothing": [0.1]}}))
    args = sweep_args(files, swept, "--runs", "3")
    args[args.index("--grid") + 1] = str(grid)
    assert main(args) == 2 and "another grid" in capsys.readouterr().err
    # ...while --runs beyond the grid's size is refused before anything is touched
    assert main(sweep_args(files, swept, "--runs", "3")) == 2
    assert "holds only 2 configurations" in capsys.readouterr().err
    # --retry-failed trains the failed run again (it fails again, recorded as a second trial)
    assert main(sweep_args(files, swept, "--retry-failed")) == 0
    study = load_study(swept)
    assert [t.user_attrs["status"] for t in trials_of(study, "run_001")] == ["failed", "failed"]
    assert headers(swept / "runs" / "run_001") == 2


def test_refusals(files, swept, tmp_path, capsys):
    other = tmp_path / "other_grid.yaml"
    other.write_text(yaml.safe_dump({**files["grid_data"], "grid": {"model.loss": ["bce", "hinge"]}}))
    args = sweep_args(files, swept)
    args[args.index("--grid") + 1] = str(other)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of another grid" in err and len(err.strip().splitlines()) == 1
    assert main(sweep_args(files, swept, "--select", "kid")) == 2
    assert "another --select" in capsys.readouterr().err
    # the same study from another folder with another grid: the study refuses it
    args = sweep_args(files, tmp_path / "elsewhere", "--storage", f"sqlite:///{swept / 'study.db'}",
                      "--study", swept.name)
    args[args.index("--grid") + 1] = str(other)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--study {swept.name}" in err and "another grid" in err
    # a folder with other things in it is not taken over
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(sweep_args(files, busy)) == 2
    assert "holds no sweep" in capsys.readouterr().err
    for bad, culprit in ((("--storage", "mysql://u@h/db"), "mysql is not supported"),
                         (("--storage", "sqlite://"), "in-memory"),
                         (("--storage", "nonsense"), "not a database URL"),
                         (("--gpus", "0,1"), "--workers 2"), (("--gpus", "a"), "GPU ids"),
                         (("--workers", "0"), "--workers 0")):
        assert main(sweep_args(files, tmp_path / "x", *bad)) == 2
        err = capsys.readouterr().err
        assert culprit in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_names_from_the_study_stay_in_the_folder(files, tmp_path, capsys):
    """A run id in the storage that would leave DIR/runs fails its trial; nothing is written outside."""
    out = tmp_path / "sweep"
    grid = tmp_path / "one.yaml"
    grid.write_text(yaml.safe_dump({"fixed": {"train.iterations": 2}, "grid": {"model.loss": ["bce"]}}))
    args = sweep_args(files, out, "--runs", "1")
    args[args.index("--grid") + 1] = str(grid)
    from medvol.sweep import Sweep

    sweep = Sweep(files["config"], grid, 1, out, features=[f"inception:{files['weights']}"], n=6, bootstrap=4)
    sweep._prepare_folder()
    sweep.open()
    (waiting,) = sweep.study.get_trials()
    # a tampered record: the same run, its id pointing outside the folder
    sweep.study.enqueue_trial(waiting.params, user_attrs={**waiting.user_attrs, "run_id": "../../escaped"})
    sweep.study.ask()  # the honest trial is taken (as if by another worker): the tampered one is next
    assert main(args) == 0
    out_text = capsys.readouterr().out
    assert "run id in the study '../../escaped'" in out_text and "refusing" in out_text
    assert not (tmp_path / "escaped").exists() and not (out / "escaped").exists()
    bad = [t for t in load_study(out).get_trials() if t.user_attrs.get("run_id") == "../../escaped"]
    assert bad[0].state == optuna.trial.TrialState.FAIL and "outside" in bad[0].user_attrs["error"]


@pytest.mark.slow
def test_pruning_stops_the_worst_run(files, tmp_path):
    """Median pruning: two runs complete (startup), the third's score at its first checkpoint is
    the worst of the three at that iteration, so it is stopped there instead of training 400
    iterations. With the stand-in extractor, initialisation gain 0.02 gives FID 1.07 at every
    checkpoint, gains 0.5 and 5.0 about 0.62-0.75 (measured)."""
    grid = tmp_path / "prune.yaml"
    grid.write_text(yaml.safe_dump({
        "stratify": "model.init_gain",
        "fixed": {"train.iterations": 6, "train.ckpt_every": 2, "train.keep_checkpoints": 0},
        "grid": {"model.init_gain": [0.5, 5.0, 0.02], "train.iterations": [400]},
        "when": {"train.iterations": {"model.init_gain": [0.02]}}}))
    out = tmp_path / "sweep"
    args = sweep_args(files, out, "--runs", "3", "--prune", "median")
    args[args.index("--grid") + 1] = str(grid)
    assert main(args) == 0
    study = load_study(out)
    first, second, worst = (trials_of(study, f"run_{i:03d}")[0] for i in range(3))
    assert first.state == second.state == optuna.trial.TrialState.COMPLETE
    assert sorted(first.intermediate_values) == [2, 4, 6] == sorted(second.intermediate_values)
    assert worst.state == optuna.trial.TrialState.PRUNED and worst.user_attrs["pruned_at"] == 2
    step2 = [first.intermediate_values[2], second.intermediate_values[2]]
    assert worst.intermediate_values[2] > max(step2)
    stopped = max(int(p.name[5:12]) for p in (out / "runs" / "run_002" / "checkpoints").glob("ckpt_*.pt"))
    assert 2 <= stopped < 400  # the run was stopped (it checkpointed where it stood)
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in state["runs"]] == ["evaluated", "evaluated", "pruned"]
    assert "stopped at iteration 2 by the pruner" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_sweep(files, tmp_path):
    """SIGINT to the sweep's process group (a terminal's Ctrl-C) stops the run at a checkpoint;
    the trial is recorded as interrupted and enqueued again, and the same command then finishes
    it from there. (Fast sibling: the lost-trial test above.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"fixed": {"train.iterations": 200, "train.ckpt_every": 4,
                                              "train.keep_checkpoints": 1},
                                    "grid": {"model.loss": ["hinge"]}}))
    out = tmp_path / "sweep"
    args = sweep_args(files, out, "--runs", "1")
    args[args.index("--grid") + 1] = str(grid)
    cmd = [sys.executable, "-m", "medvol.cli", *args]

    def start():
        return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(proc, timeout):
        try:
            return proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:  # never leave a sweep or its run behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    proc = start()
    ckpts = out / "runs" / "run_000" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(ckpts.glob("ckpt_*.pt.sha256")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = finish(proc, 180)
    assert proc.returncode == 130, err.decode()
    assert "run the same command again to resume" in err.decode()
    (interrupted, again) = trials_of(load_study(out), "run_000")
    assert interrupted.user_attrs["status"] == "interrupted" and interrupted.user_attrs["returncode"] == 130
    assert again.state == optuna.trial.TrialState.WAITING
    stopped = max(int(p.name[5:12]) for p in ckpts.glob("ckpt_*.pt"))
    assert 4 <= stopped < 200
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert state["runs"][0]["status"] == "pending" and state["runs"][0]["previous"] == "interrupted"
    # the same command resumes the run from its checkpoint and scores it
    proc = start()
    _, err = finish(proc, 300)
    assert proc.returncode == 0, err.decode()
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert state["runs"][0]["status"] == "evaluated" and state["runs"][0]["provenance"]["iteration"] == 200
    assert f"resumed from {ckpts / f'ckpt_{stopped:07d}.pt'}" in (out / "runs" / "run_000" / "train.log").read_text(encoding="utf-8")


def test_threads_reach_every_run_and_are_recorded(swept):
    # --threads 1: each run trains (a subprocess) and is scored with one thread, and says so.
    state = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    trained = [r for r in state["runs"] if r["status"] == "evaluated"]
    assert trained
    for record in state["runs"]:
        assert record["command"][-2:] == ["--threads", "1"]
    for record in trained:
        run = swept / "runs" / record["id"]
        assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["threads"] == 1
        assert json.loads((run / "eval" / "scores.json").read_text(encoding="utf-8"))["threads"] == 1
