"""``medvol sweep``: grid draws, two tiny runs end to end (one made to fail by an impossible
combination of options), resumption without retraining, refusals, the report and box plot."""

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
from medvol.sweep.report import spread
from medvol.sweep.runner import LOCK, pick_score
from medvol.train.runfolder import RunFolderLock

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "model": {"name": "dcgan", "size": 32, "base_width": 4, "latent_dim": 8, "loss": "bce"},
    "data": {"source": "phantom", "phantom_n": 2, "workers": 0, "batch": 4},
    "train": {"iterations": 4, "mode": "reference", "amp": "none", "device": "cpu", "ckpt_every": 2,
              "log_every": 2, "sample_every": 1000, "keep_checkpoints": 2},
}
# Two runs: bce, then wgan; label smoothing exists for bce and lsgan only, so the wgan run fails
# when its model is built (a combination the grid cannot reject value by value).
GRID = {"stratify": "model.loss", "fixed": {"train.iterations": 4},
        "grid": {"model.loss": ["bce", "wgan"], "model.label_smoothing": [0.1]}}


class TinyInception(torch.nn.Module):
    """A stand-in with the FID Inception's interface: (N, 3, 299, 299) -> (N, 12)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 7, stride=6)
        self.fc = torch.nn.Linear(4 * 9, 12)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepfiles")
    torch.manual_seed(3)
    weights = root / "inception_standin.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(TinyInception()), str(weights))
    (root / "base.yaml").write_text(yaml.safe_dump(BASE))
    (root / "grid.yaml").write_text(yaml.safe_dump(GRID))
    return {"weights": weights, "config": root / "base.yaml", "grid": root / "grid.yaml", "root": root}


def sweep_args(files, out, *extra):
    return ["sweep", "--config", str(files["config"]), "--grid", str(files["grid"]), "--runs", "2",
            "--features", f"inception:{files['weights']}", "--n", "6", "--bootstrap", "4",
            "--out", str(out), *map(str, extra)]


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


def test_draws_are_seeded_prefix_stable_stratified_and_conditional(tmp_path):
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
def test_bad_grids_are_named(tmp_path, grid, culprit):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(MedvolError, match=None) as info:
        Grid(path, BASE)
    assert culprit in str(info.value) and str(path) in str(info.value)


def test_shipped_grids_load_and_draw():
    for config, grid in (("dcgan_tiny.yaml", "tiny.yaml"), ("dcgan_64.yaml", "empirical_study.yaml")):
        g = Grid(ROOT / "configs" / "sweeps" / grid, read_yaml(ROOT / "configs" / config, "config"))
        draws = g.draw(10, seed=0)
        assert len(draws) == 10 and all("model.loss" in d for d in draws)
    study = Grid(ROOT / "configs" / "sweeps" / "empirical_study.yaml", read_yaml(ROOT / "configs" / "dcgan_64.yaml", "c"))
    assert set(study.space[0][1]) == {"bce", "lsgan", "wgan", "wgan-gp", "hinge"}
    assert all(("model.clip" in d) == (d["model.loss"] == "wgan") for d in study.draw(20, seed=0))


def test_pick_score_and_spread():
    scores = {"image/fid": 1, "image/kid": 2, "mean/precision": 3, "axial/precision": 4}
    assert pick_score(scores, "fid") == "image/fid"
    assert pick_score(scores, "precision") == "mean/precision"
    with pytest.raises(MedvolError, match="--select density"):
        pick_score(scores, "density")
    assert spread([4.0, 1.0, 3.0, 2.0, 5.0]) == {"min": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0, "max": 5.0}


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
    assert score["ci_low"] <= score["value"] <= score["ci_high"] or score["ci_low"] <= score["ci_high"]
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
    assert run_cfg["model"]["label_smoothing"] == 0.1 and run_cfg["train"]["iterations"] == 4

    rows = list(csv.DictReader((swept / "sweep.csv").open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["evaluated", "failed"]
    assert rows[0]["model.loss"] == "bce" and float(rows[0]["value"]) == pytest.approx(score["value"], rel=1e-5)
    assert rows[0]["ci_low"] and "label_smoothing" in rows[1]["error"]
    report = (swept / "report.md").read_text(encoding="utf-8")
    assert "## Best run per model.loss" in report and "| bce | 1 | 0 | run_000 |" in report
    assert "| wgan | 1 | 1 | — |" in report and "## Spread of image/fid" in report
    assert "run_001 (failed)" in report and "![image/fid per loss](boxplot.png)" in report
    assert (swept / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_invocation_does_not_retrain(files, swept, capsys):
    ckpt_dir = swept / "runs" / "run_000" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()}
    log_before = (swept / "runs" / "run_001" / "train.log").read_text(encoding="utf-8")
    scores_before = (swept / "runs" / "run_000" / "eval" / "scores.json").stat().st_mtime_ns
    assert main(sweep_args(files, swept)) == 0
    out = capsys.readouterr().out
    assert "run_000: evaluated (skipped)" in out and "run_001: failed (skipped)" in out
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()} == before
    assert (swept / "runs" / "run_001" / "train.log").read_text(encoding="utf-8") == log_before
    assert (swept / "runs" / "run_000" / "eval" / "scores.json").stat().st_mtime_ns == scores_before


def test_interrupted_run_resumes_from_its_checkpoint(files, swept, capsys):
    # As if the sweep had been killed while run_000 trained: the state says "training".
    state = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    state["runs"][0]["status"] = "training"
    (swept / "sweep.json").write_text(json.dumps(state))
    assert main(sweep_args(files, swept)) == 0
    state = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    assert state["runs"][0]["status"] == "evaluated"
    log = (swept / "runs" / "run_000" / "train.log").read_text(encoding="utf-8")
    assert "--resume auto" in log and "resumed from" in log and "ckpt_0000004.pt" in log


def test_refusals(files, swept, tmp_path, capsys):
    other = tmp_path / "other_grid.yaml"
    other.write_text(yaml.safe_dump({**GRID, "grid": {"model.loss": ["bce", "hinge"]}}))
    args = sweep_args(files, swept)
    args[args.index("--grid") + 1] = str(other)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of another grid" in err and len(err.strip().splitlines()) == 1
    args = sweep_args(files, swept, "--select", "kid")
    assert main(args) == 2 and "another --select" in capsys.readouterr().err
    # two sweeps cannot share a folder
    lock = RunFolderLock(swept, lock_name=LOCK, holder="medvol sweep")
    try:
        assert main(sweep_args(files, swept)) == 2
        err = capsys.readouterr().err
        assert "in use by another medvol sweep" in err and len(err.strip().splitlines()) == 1
    finally:
        lock.release()
    # a folder with other things in it is not taken over
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(sweep_args(files, busy)) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert main(sweep_args(files, tmp_path / "x", "--runs", "3")) == 2
    assert "holds only 2 configurations" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_sweep(files, tmp_path):
    """SIGINT to the sweep's process group (a terminal's Ctrl-C) stops the run at a checkpoint;
    the same command then finishes it from there. (Fast sibling: the resume test above.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"fixed": {"train.iterations": 40, "train.ckpt_every": 4,
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
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    record = state["runs"][0]
    assert record["status"] == "interrupted" and record["returncode"] == 130
    stopped = max(int(p.name[5:12]) for p in ckpts.glob("ckpt_*.pt"))
    assert 4 <= stopped < 40
    assert (out / "report.md").is_file()
    # the same command resumes the run from its checkpoint and scores it
    proc = start()
    _, err = finish(proc, 300)
    assert proc.returncode == 0, err.decode()
    state = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert state["runs"][0]["status"] == "evaluated" and state["runs"][0]["provenance"]["iteration"] == 40
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
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == 1
        assert json.loads((run / "eval" / "scores.json").read_text(encoding="utf-8"))["threads"] == 1
