"""Checkpoints: exact resume, checksum refusal of damaged files, refusal of another model/size."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from medvol import cli
from medvol.config import save_config
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
    pytest.param("hagan", ["--train.mode", "reference"], marks=pytest.mark.slow),
    ("crfgan", ["--train.mode", "reference"]),
    # Optimized mode with fp16 autocast: the GradScaler state must round-trip as well.
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
