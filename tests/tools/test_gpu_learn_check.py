"""tools/gpu_learn_check.py (the learning part of tools/gpu_check.sh; its whole run is in the dry
run of tests/tools/test_gpu_check.py): the time limit and the refusals."""

import sys
import textwrap

import pytest

# Stands in for `medvol train`: logs two iterations, then waits; on SIGTERM it "checkpoints" and
# exits 143 as medvol does. With FAIL set it exits 3 at once.
TRAINER = textwrap.dedent("""
    import os, signal, sys, time
    if os.environ.get("FAIL"):
        sys.exit(3)
    def stop(*_):
        print("checkpoint on SIGTERM", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    print("it 10/100 D=1.0 G=2.0 5.0 it/s eta 1s", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def fake_medvol(tmp_path, monkeypatch, gpu_learn_check):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER, encoding="utf-8")
    monkeypatch.setattr(gpu_learn_check.learn_check, "medvol_command", lambda: [sys.executable, str(script)])
    return gpu_learn_check


def test_training_is_stopped_by_sigterm_after_its_seconds(fake_medvol, tmp_path):
    result = fake_medvol.train("cfg.yaml", ["--x", "1"], tmp_path, seconds=1.0)
    assert result["stopped_at_s"] == 1.0 and result["wall_s"] < 30
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "checkpoint on SIGTERM" in log and "--x 1" in log.splitlines()[0]
    assert fake_medvol.learn_check.losses_from_log(tmp_path / "train.log") == {"D": [(10, 1.0)], "G": [(10, 2.0)]}


def test_a_failed_training_is_an_error(fake_medvol, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(fake_medvol.MedvolError, match="training exited 3"):
        fake_medvol.train("cfg.yaml", [], tmp_path, seconds=5.0)


@pytest.mark.parametrize("args, message", [
    (["--n", "5", "--iterations", "1"], "--n must be >= 6"),
    (["--phantoms", "4", "--iterations", "1"], "--phantoms must be >= 8"),
    ([], "one of --iterations and --train-seconds"),
    (["--iterations", "1", "--train-seconds", "5"], "one of --iterations and --train-seconds"),
])
def test_refusals(gpu_learn_check, tmp_path, capsys, args, message):
    assert gpu_learn_check.main(["--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
