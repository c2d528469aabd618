"""Checkpoints: exact resume, checksum refusal of damaged files, refusal of another model/size."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from medvol import cli
from medvol.config import config_from_dict, config_to_dict, load_config, save_config
from medvol.errors import MedvolError
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train
from medvol.utils import resolve_amp


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    assert a["system"].keys() == b["system"].keys()
    for key in a["system"]:
        assert torch.equal(a["system"][key], b["system"][key]), key
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for idx in sa:
            for field in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(sa[idx][field], sb[idx][field]), (name, idx, field)
    assert torch.equal(a["rng"][0]["generator"], b["rng"][0]["generator"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


@pytest.mark.parametrize("name, mode", [
    # Every model's resume (and this one in fp16): tests/models/test_contract.py. Here what the
    # trainer records of a resumed run, in the optimized mode with its GradScaler.
    ("crfgan", ["--train.mode", "optimized", "--train.amp", "fp16"]),
])
def test_resume_is_bit_exact(tiny, name, mode):
    straight = tiny(*mode, name=name, iterations=4, out="straight")
    train(straight)
    first_half = tiny(*mode, name=name, iterations=2, out="split")
    train(first_half)
    assert [i for i, _ in ckpt.list_checkpoints(first_half.train.out + "/checkpoints")] == [2]
    train(tiny(*mode, name=name, iterations=4, out="split"), resume="auto")

    a = ckpt.read_checkpoint(straight.train.out)
    b = ckpt.read_checkpoint(first_half.train.out)
    assert a["iteration"] == 4
    # The longer run is recorded beside the first config, which stays as it was written.
    from medvol.train import history

    saved = load_config(f"{first_half.train.out}/config.yaml")
    # amp auto and the thread count are saved as resolved; everything else as given.
    assert saved.train.amp != "auto" and saved.train.threads >= 1
    unresolved = dataclasses.replace(saved.train, amp=first_half.train.amp, threads=first_half.train.threads)
    assert dataclasses.replace(saved, train=unresolved) == first_half
    assert [r["event"] for r in history.read_history(first_half.train.out)] == ["start", "resume"]
    assert history.current_config(first_half.train.out).train.iterations == 4
    _assert_same_state(a, b)
    assert a["scaler"] == b["scaler"]
    assert (a["scaler"] is not None) == ("fp16" in mode)
    # The two runs really trained: weights moved away from the 2-iteration state.
    mid = ckpt.read_checkpoint(f"{first_half.train.out}/checkpoints/{ckpt.checkpoint_name(2)}")
    assert any(not torch.equal(mid["system"][k], b["system"][k]) for k in b["system"])




@pytest.fixture(scope="module")
def run2(tmp_path_factory, tiny_config_fn):
    """One tiny 2-iteration CRF-GAN run shared by the tests below: (config, run folder)."""
    cfg = tiny_config_fn(tmp_path_factory.mktemp("run2") / "run", iterations=2)
    return cfg, train(cfg)


def test_checkpoint_contents_and_load(run2):
    cfg, run_dir = run2
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tb").is_dir()
    path = run_dir / "checkpoints" / ckpt.checkpoint_name(2)
    assert ckpt.checksum_path(path).read_text(encoding="utf-8").split()[1] == path.name
    state = ckpt.read_checkpoint(path)
    assert state["iteration"] == 2 and state["world_size"] == 1
    assert set(state["optimizers"]) == {"G", "D", "E", "crf"}
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python", "generator"}
    assert state["data"]["spacing"] and state["config"]["model"]["name"] == "crfgan"
    system, loaded_cfg, _ = ckpt.load_checkpoint(run_dir)
    # The run records what amp "auto" and threads 0 became on this machine (issue 24).
    resolved = dataclasses.replace(cfg.train, amp=resolve_amp(cfg.train.amp, "cpu")[0],
                                   threads=torch.get_num_threads())
    assert loaded_cfg == dataclasses.replace(cfg, train=resolved)
    for key, value in system.state_dict().items():
        assert torch.equal(value, state["system"][key]), key


def test_damaged_checkpoint_is_refused(run2, tmp_path, capsys):
    cfg, run_dir = run2
    good = run_dir / "checkpoints" / ckpt.checkpoint_name(2)

    flipped = tmp_path / "flipped" / good.name
    flipped.parent.mkdir()
    shutil.copy(good, flipped)
    shutil.copy(ckpt.checksum_path(good), ckpt.checksum_path(flipped))
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(MedvolError, match="corrupt or truncated"):
        ckpt.read_checkpoint(flipped)

    truncated = tmp_path / "truncated" / good.name
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[:1000])
    shutil.copy(ckpt.checksum_path(good), ckpt.checksum_path(truncated))
    with pytest.raises(MedvolError, match="corrupt or truncated"):
        ckpt.load_checkpoint(truncated)

    bare = tmp_path / "bare" / good.name
    bare.parent.mkdir()
    shutil.copy(good, bare)
    with pytest.raises(MedvolError, match="no checksum file"):
        ckpt.read_checkpoint(bare)
    with pytest.raises(MedvolError, match="does not exist"):
        ckpt.read_checkpoint(tmp_path / "nowhere.pt")

    # Through the CLI: one line on stderr, exit status 2.
    config_path = save_config(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(config_path), "--resume", str(flipped)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt or truncated" in err


def test_checkpoint_of_another_model_or_size_is_refused(run2, tiny, tmp_path, capsys):
    _, run_dir = run2
    with pytest.raises(MedvolError, match="does not match"):
        train(tiny("--model.size", "64", iterations=4, out="other"), resume=str(run_dir))
    with pytest.raises(MedvolError, match="does not match"):
        train(tiny(name="hagan", iterations=4, out="other"), resume=str(run_dir))
    config_path = save_config(tiny("--model.base_width", "4", iterations=4, out="other"), tmp_path / "c.yaml")
    assert cli.main(["train", "--config", str(config_path), "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "base_width 2 vs 4" in err


# ----------------------------------------------------------------------------------------------
# Resuming an older checkpoint or with changed settings (issue 22)

def _tree(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (TensorBoard events and the lock file included) and its bytes."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run4(tmp_path_factory, tiny_config_fn):
    """A tiny CRF-GAN run of 4 iterations keeping ckpt_0000002.pt and ckpt_0000004.pt: its folder."""
    cfg = tiny_config_fn(tmp_path_factory.mktemp("run4") / "run", "--train.keep_checkpoints", "0", iterations=4)
    return train(cfg)


@pytest.fixture
def run_copy(run4, tmp_path):
    """A private copy of :func:`run4` (the tests below may write into it)."""
    copy = tmp_path / "run"
    shutil.copytree(run4, copy)
    return copy


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_older_checkpoint_or_changed_setting_is_refused(run_copy, capsys):
    before = _tree(run_copy)
    ckpt2 = str(run_copy / "checkpoints" / ckpt.checkpoint_name(2))
    # The command: an older checkpoint of the run and another seed, into the run itself.
    assert cli.main(["train", "--resume", ckpt2, "--train.seed", "5", "--out", str(run_copy)]) == 2
    line = _one_error_line(capsys)
    assert "older than the run's newest (iteration 4)" in line and "--fork" in line and "--allow-changes" in line
    assert cli.main(["train", "--resume", ckpt2, "--out", str(run_copy)]) == 2  # older alone
    assert "older" in _one_error_line(capsys)
    # The newest checkpoint, one setting changed (more iterations are no change of setting).
    assert cli.main(["train", "--resume", "auto", "--train.seed", "5", "--train.iterations", "6",
                     "--out", str(run_copy)]) == 2
    line = _one_error_line(capsys)
    assert "changed settings (train.seed 0 -> 5)" in line and "--allow-changes" in line and "--fork" in line
    assert cli.main(["train", "--resume", "auto", "--train.lr.G", "3e-4", "--out", str(run_copy)]) == 2
    assert "train.lr.G None -> 0.0003" in _one_error_line(capsys)
    assert _tree(run_copy) == before  # nothing written, config.yaml included


def test_allow_changes_records_each_change_and_keeps_the_newer_checkpoints(run_copy):
    from medvol.train import history

    config_before = (run_copy / "config.yaml").read_bytes()
    newer = {name: (run_copy / "checkpoints" / name).read_bytes()
             for name in (ckpt.checkpoint_name(4), ckpt.checkpoint_name(4) + ".sha256")}
    ckpt2 = str(run_copy / "checkpoints" / ckpt.checkpoint_name(2))
    assert cli.main(["train", "--resume", ckpt2, "--train.seed", "5", "--data.batch", "1",
                     "--out", str(run_copy), "--allow-changes"]) == 0
    assert (run_copy / "config.yaml").read_bytes() == config_before  # never rewritten
    new_config = history.current_config(run_copy)
    assert (new_config.train.seed, new_config.data.batch) == (5, 1)
    assert [p.name for _, p in history.config_versions(run_copy)] == ["config.yaml", "config.1.yaml"]
    records = history.read_history(run_copy)
    assert [r["event"] for r in records] == ["start", "resume"]
    last = records[-1]
    assert last["changes"] == {"data.batch": [2, 1], "train.seed": [0, 5]}
    assert last["iteration"] == 2 and last["checkpoint"] == str(Path(ckpt2).resolve())
    assert last["config"] == "config.1.yaml" and last["superseded"] == "superseded/1"
    assert last["sha256"] == ckpt.checksum_path(ckpt2).read_text(encoding="utf-8").split()[0]
    # The checkpoint the resume would have overwritten is kept, byte for byte.
    for name, data in newer.items():
        assert (run_copy / "superseded" / "1" / "checkpoints" / name).read_bytes() == data
    state = ckpt.read_checkpoint(run_copy)
    assert state["iteration"] == 4 and state["config"]["train"]["seed"] == 5
    assert state["system"].keys() and state["path"].endswith(ckpt.checkpoint_name(4))
    # With the recorded settings the run now continues without a flag, and writes no new config.
    train(config_from_dict(config_to_dict(new_config), ["--train.iterations", "4"]), resume="auto")
    assert [p.name for _, p in history.config_versions(run_copy)] == ["config.yaml", "config.1.yaml"]
    assert "changes" not in history.read_history(run_copy)[-1]


def test_fork_leaves_the_source_untouched_and_resumes_exactly(run4, tmp_path, tiny):
    from medvol.train import history

    before = _tree(run4)
    ckpt2 = run4 / "checkpoints" / ckpt.checkpoint_name(2)
    fork = tmp_path / "fork"
    # Same settings: the fork's iteration 4 equals the source's (a fork is an exact resume too).
    assert cli.main(["train", "--resume", str(ckpt2), "--fork", str(fork)]) == 0
    assert _tree(run4) == before
    _assert_same_state(ckpt.read_checkpoint(run4), ckpt.read_checkpoint(fork))
    (record,) = history.read_history(fork)
    assert record["event"] == "fork" and record["checkpoint"] == str(ckpt2.resolve())
    assert record["sha256"] == ckpt.checksum_path(ckpt2).read_text(encoding="utf-8").split()[0]
    assert record["copied_to"] == "checkpoints/" + ckpt2.name and "changes" not in record
    assert (fork / "checkpoints" / ckpt2.name).read_bytes() == ckpt2.read_bytes()
    assert history.current_config(fork).train.out == str(fork)

    # A fork with another seed: allowed (it is a new run), the change recorded in its history.
    other = tmp_path / "fork5"
    assert cli.main(["train", "--resume", str(ckpt2), "--fork", str(other), "--train.seed", "5"]) == 0
    assert history.read_history(other)[0]["changes"] == {"train.seed": [0, 5]}
    assert _tree(run4) == before
    # A fork never lands on a run: not on the source, not on an earlier fork.
    for target in (run4, other):
        with pytest.raises(MedvolError, match="fork"):
            train(tiny(iterations=4, out="x"), resume=str(ckpt2), fork=target)
    assert _tree(run4) == before


def test_resume_auto_with_unchanged_settings_keeps_the_config(run_copy):
    from medvol.train import history

    before = _tree(run_copy)
    # Same settings (the run's own config): nothing to do, no new config file, one history line.
    assert cli.main(["train", "--resume", "auto", "--out", str(run_copy)]) == 0
    assert [p.name for _, p in history.config_versions(run_copy)] == ["config.yaml"]
    after = _tree(run_copy)

    def kept(tree):
        return {k: v for k, v in tree.items() if k != "history.jsonl" and not k.startswith("tb/")}

    assert kept(after) == kept(before)
    assert after["history.jsonl"].startswith(before["history.jsonl"])  # appended to, never rewritten
    assert [r["event"] for r in history.read_history(run_copy)] == ["start", "resume"]
