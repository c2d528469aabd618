"""The one-line error contract of ``medvol train`` and ``medvol generate`` (issue #11): a GPU that
is not there, an empty config; and a log file that a progress bar does not flood."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from medvol import cli
from medvol.config import save_config
from medvol.train import trainer
from medvol.train.trainer import train

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@no_gpu
def test_generate_on_cuda_without_a_gpu(trained_run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli.main(["generate", "--ckpt", str(trained_run), "--out", str(out), "--device", "cuda"]) == 2
    assert _one_line(capsys).startswith("medvol generate: error: --device cuda: ")
    assert not out.exists()


@no_gpu
def test_train_on_cuda_without_a_gpu(tiny, tmp_path, capsys):
    cfg = tiny()
    config_path = save_config(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(config_path), "--train.device", "cuda:1"]) == 2
    assert _one_line(capsys).startswith("medvol train: error: train.device cuda:1: ")
    assert not Path(cfg.train.out).exists()


def test_unknown_device_is_one_line(trained_run, tmp_path, capsys):
    assert cli.main(["generate", "--ckpt", str(trained_run), "--out", str(tmp_path / "o"), "--device", "gpu"]) == 2
    assert "--device gpu: unknown device" in _one_line(capsys)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"], ids=["empty", "comment", "empty-mapping"])
def test_empty_config_is_refused(tmp_path, monkeypatch, capsys, text):
    # Without the refusal this would start the published 256^3 run of 80,000 iterations in runs/run.
    def no_training(cfg, resume=None):
        raise AssertionError(f"training started: {cfg.model.name}@{cfg.model.size}, {cfg.train.iterations} iterations")

    monkeypatch.setattr(trainer, "train", no_training)
    monkeypatch.chdir(tmp_path)
    config_path = tmp_path / "empty.yaml"
    config_path.write_text(text, encoding="utf-8")
    assert cli.main(["train", "--config", str(config_path)]) == 2
    assert _one_line(capsys) == (f"medvol train: error: config file {config_path} is empty: it needs at least "
                                 "one of the sections model, data, train (configs/demo.yaml is a small example)")
    assert list(tmp_path.iterdir()) == [config_path]


def test_no_progress_bar_in_a_log_file(tiny, capsys, caplog):
    # Under pytest stderr is not a terminal, as when it goes to a file (medvol train 2> log).
    with caplog.at_level(logging.INFO, logger="medvol.train"):
        train(tiny("--train.progress", "true", iterations=2))
    err = capsys.readouterr().err
    assert "\r" not in err and "train:" not in err, err
    assert [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("it ")] == ["1/2", "2/2"]


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(tiny, caplog, monkeypatch, native):
    # Emulated bf16 made the optimized step several times slower than fp32 on an AVX2 CPU
    # (docs/performance.md); the run still trains, but says why it is slow and what to do.
    from medvol.train.distributed import DistInfo

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="medvol.train"):
        trainer.Trainer(tiny("--train.mode", "optimized", "--train.amp", "bf16", iterations=1), DistInfo())
    warned = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warned) == (0 if native else 1), warned
    if warned:
        assert "--train.amp none" in warned[0]
