"""``train.amp auto`` (bf16 only where the device computes it natively) and ``--threads`` (issue 24,
items 1 and 2): what was chosen is applied and recorded in the run's config.yaml."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from medvol import cli, utils
from medvol.config import load_config, save_config
from medvol.errors import MedvolError
from medvol.profile.cases import Case
from medvol.profile.system import amp_dtype
from medvol.train import trainer
from medvol.train.distributed import DistInfo


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bf16_only_on_a_cpu_that_has_it(monkeypatch, native):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: native)
    amp, why = utils.resolve_amp("auto", "cpu")
    assert amp == ("bf16" if native else "none"), why
    # An explicit choice is kept (medvol train still warns about emulated bf16, elsewhere).
    assert utils.resolve_amp("bf16", "cpu")[0] == "bf16"
    assert utils.resolve_amp("fp16", "cpu")[0] == "fp16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_auto_without_cuda_is_fp32():
    assert utils.resolve_amp("auto", "cuda")[0] == "none"


def test_auto_is_the_default_and_the_demo_uses_it(monkeypatch):
    # make demo trains configs/demo.yaml: on a CPU without native bf16 it must run in fp32.
    assert load_config(None, ["--model.size", "32"]).train.amp == "auto"
    demo = load_config("demo")
    assert demo.train.amp == "auto" and demo.train.mode == "optimized"
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert utils.resolve_amp(demo.train.amp, "cpu")[0] == "none"


def test_make_demo_never_picks_bf16_on_a_cpu_without_it(monkeypatch):
    # make demo trains tools/demo.py's DEFAULT_CONFIG (the learned 32^3 CRF-GAN).
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("medvol_demo", Path(__file__).parents[2] / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = load_config(module.DEFAULT_CONFIG)
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert utils.resolve_amp(cfg.train.amp, "cpu")[0] == "none"
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    # Nor where bf16 is native: the learned config trains in reference fp32, as it was measured.
    assert cfg.train.mode == "reference" and utils.resolve_amp(cfg.train.amp, "cpu")[0] == "none"


@pytest.mark.parametrize("native", [False, True])
def test_trainer_resolves_logs_and_records_auto(tiny, monkeypatch, caplog, native, restore_threads):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: native)
    cfg = tiny("--train.mode", "optimized", "--train.amp", "auto", "--train.threads", "1", iterations=1)
    with caplog.at_level(logging.INFO, logger="medvol.train"):
        run_dir = trainer.train(cfg)
    expected = "bf16" if native else "none"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["train"]
    assert saved["amp"] == expected and saved["threads"] == 1
    assert any(f"train.amp auto -> {expected}" in r.getMessage() for r in caplog.records)
    state = torch.load(next((run_dir / "checkpoints").glob("ckpt_*.pt")), weights_only=False)
    assert state["config"]["train"]["amp"] == expected


def test_trainer_autocast_dtype_follows_auto(tiny, monkeypatch):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    t = trainer.Trainer(tiny("--train.mode", "optimized", iterations=1), DistInfo())
    assert t.amp_dtype is None and t.cfg.train.amp == "none"
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    t = trainer.Trainer(tiny("--train.mode", "optimized", iterations=1), DistInfo())
    assert t.amp_dtype is torch.bfloat16 and t.cfg.train.amp == "bf16"


@pytest.mark.parametrize("native", [False, True])
def test_profile_measures_what_auto_would_train(monkeypatch, native):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: native)
    measured = Case("crfgan", 32, 1, "optimized", kind="measure", device="cpu")
    assert amp_dtype(measured) is (torch.bfloat16 if native else None)
    assert amp_dtype(Case("crfgan", 32, 1, "reference", kind="measure", device="cpu")) is None
    # An estimate is of the bf16 run on the target device, whatever this CPU does.
    assert amp_dtype(Case("crfgan", 32, 1, "optimized", kind="estimate", device="cuda")) is torch.bfloat16


def test_set_threads(restore_threads):
    assert utils.set_threads(1) == 1 and torch.get_num_threads() == 1
    default = utils.set_threads(None)
    assert 1 <= default <= utils.MAX_DEFAULT_THREADS and torch.get_num_threads() == default
    with pytest.raises(MedvolError, match="--threads 0"):
        utils.set_threads(0)


def test_default_threads_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(utils, "physical_cores", lambda: 8)
    monkeypatch.setattr(utils, "busy_cpus", lambda: 0.0)
    assert utils.default_threads() == utils.MAX_DEFAULT_THREADS
    monkeypatch.setattr(utils, "busy_cpus", lambda: 6.0)
    assert utils.default_threads() == 2
    monkeypatch.setattr(utils, "busy_cpus", lambda: 30.0)
    assert utils.default_threads() == 1
    monkeypatch.setattr(utils, "busy_cpus", lambda: 0.0)
    monkeypatch.setattr(utils, "physical_cores", lambda: 2)  # 8 hyper-threads on 2 cores
    assert utils.default_threads() == 2
    # 4 of a 64-CPU host's CPUs (a container), 32 runnable elsewhere: this process's share is 2 busy.
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(utils, "physical_cores", lambda: 32)
    monkeypatch.setattr(utils, "busy_cpus", lambda: 32.0)
    assert utils.default_threads() == 2


def test_busy_cpus_reads_runnable_tasks(monkeypatch, tmp_path):
    fake = tmp_path / "loadavg"
    fake.write_text("9.50 7.00 3.00 4/300 1234\n", encoding="ascii")
    real_path = utils.Path
    monkeypatch.setattr(utils, "Path", lambda p: real_path(fake) if p == "/proc/loadavg" else real_path(p))
    assert utils.busy_cpus() == 3.0  # 4 runnable, this process one of them; not the 9.5 load average
    monkeypatch.setattr(utils, "Path", lambda p: real_path(tmp_path / "missing"))
    monkeypatch.setattr(utils.os, "getloadavg", lambda: (2.5, 0.0, 0.0))
    assert utils.busy_cpus() == 2.5


def test_train_cli_threads_recorded(tiny, tmp_path, restore_threads):
    cfg = tiny(iterations=1)
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(path), "--threads", "1"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))["train"]["threads"] == 1
    assert torch.get_num_threads() == 1


def test_train_cli_threads_refused(tiny, tmp_path, capsys):
    path = save_config(tiny(iterations=1), tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(path), "--threads", "0"]) == 2
    assert "--threads 0: expected at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
