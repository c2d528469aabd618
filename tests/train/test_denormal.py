"""``train.flush_denormal`` (default on): CPU arithmetic treats float32 denormals as zero while a
run trains or a fit runs, and the process's setting is restored after (docs/performance.md: a
FastGAN run at 64^2 slowed several times once its Adam moments reached denormals)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medvol.config import load_config
from medvol.train import fit as F
from medvol.train import trainer
from medvol.utils import denormals_flushed, flush_denormals

ROOT = Path(__file__).resolve().parents[2]
TINY = 1e-40  # a float32 denormal


def test_flush_denormals_sets_and_restores():
    assert not denormals_flushed()
    x = torch.tensor([TINY], dtype=torch.float32)
    assert (x * 1.0).item() != 0.0
    with flush_denormals(True):
        assert denormals_flushed() and (x * 1.0).item() == 0.0
        with flush_denormals(False):  # off leaves the setting found
            assert denormals_flushed()
    assert not denormals_flushed() and (x * 1.0).item() != 0.0
    with pytest.raises(RuntimeError):
        with flush_denormals(True):
            raise RuntimeError("boom")
    assert not denormals_flushed()


@pytest.mark.parametrize("flush", [True, False])
def test_train_flushes_while_it_trains(tmp_path, monkeypatch, flush):
    seen = []
    plain_run = trainer.Trainer.run

    def run(self, resume):
        seen.append(denormals_flushed())
        return plain_run(self, resume)

    monkeypatch.setattr(trainer.Trainer, "run", run)
    cfg = load_config(ROOT / "configs" / "dcgan_tiny.yaml", [
        "--model.base_width", "4", "--model.latent_dim", "8", "--data.phantom_n", "2", "--data.batch", "2",
        "--train.iterations", "1", "--train.ckpt_every", "1", "--train.flush_denormal", str(flush).lower(),
        "--train.out", str(tmp_path / "run")])
    trainer.train(cfg)
    assert seen == [flush] and not denormals_flushed()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["flush_denormal"] is flush


def test_a_run_may_resume_with_the_other_setting(tmp_path):
    common = ["--model.base_width", "4", "--model.latent_dim", "8", "--data.phantom_n", "2", "--data.batch", "2",
              "--train.ckpt_every", "1", "--train.out", str(tmp_path / "run")]
    trainer.train(load_config(ROOT / "configs" / "dcgan_tiny.yaml", common + ["--train.iterations", "1"]))
    trainer.train(load_config(ROOT / "configs" / "dcgan_tiny.yaml",
                              common + ["--train.iterations", "2", "--train.flush_denormal", "false"]), resume="auto")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))[-1].startswith("ckpt_0000002")


@pytest.mark.parametrize("flush", [True, False])
def test_fit_flushes_while_it_steps(flush):
    seen = []

    def step(net, iteration, rng):
        seen.append(denormals_flushed())
        return net(torch.ones(1, 2)).pow(2).sum()

    F.fit(lambda: torch.nn.Linear(2, 1), step, task="toy", iterations=2, lr=1e-3, seed=0, flush_denormal=flush)
    assert seen == [flush, flush] and not denormals_flushed()
