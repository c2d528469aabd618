"""One run per folder, resuming past damaged checkpoints, temporaries of killed writes, and
stopping on SIGINT/SIGTERM with a checkpoint (issue #11, cases 1 and 5-8)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medvol import cli
from medvol.config import save_config
from medvol.errors import MedvolError
from medvol.train import checkpoint as ckpt
from medvol.train.runfolder import RunFolderLock
from medvol.train.trainer import train


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "tb" not in p.parts}


def _iterations(run_dir) -> list[int]:
    return [i for i, _ in ckpt.list_checkpoints(Path(run_dir) / "checkpoints")]


def test_new_run_into_an_existing_run_folder_is_refused(tiny, tmp_path, capsys):
    first = tiny("--train.keep_checkpoints", "2", iterations=4)
    train(first)
    before = _files(Path(first.train.out))
    assert _iterations(first.train.out) == [2, 4]

    # The same folder, a shorter run (the README's second `medvol train` after `make demo`).
    second = save_config(tiny("--train.keep_checkpoints", "2", iterations=2), tmp_path / "second.yaml")
    assert cli.main(["train", "--config", str(second)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0]
    assert "--resume auto" in err[0] and "--out" in err[0] and "iteration 4" in err[0]
    assert _files(Path(first.train.out)) == before

    # A checkpoint of another folder cannot be imported into it either.
    other = tiny(iterations=2, out="other")
    train(other)
    with pytest.raises(MedvolError, match="already holds a run"):
        train(tiny(iterations=4), resume=str(other.train.out))
    assert _files(Path(first.train.out)) == before

    # --out elsewhere starts a new run; --resume auto continues this one.
    assert cli.main(["train", "--config", str(second), "--out", str(tmp_path / "fresh")]) == 0
    assert _iterations(tmp_path / "fresh") == [2]
    assert _iterations(first.train.out) == [2, 4]


def test_refused_run_leaves_no_folder_behind(tiny, tmp_path):
    with pytest.raises(MedvolError, match="does not exist"):
        train(tiny(iterations=2, out="new"), resume=str(tmp_path / "nowhere.pt"))
    assert not (tmp_path / "new").exists()


def test_a_locked_run_folder_is_refused(tiny):
    cfg = tiny(iterations=2)
    lock = RunFolderLock(cfg.train.out)
    try:
        with pytest.raises(MedvolError, match="in use by another medvol train"):
            train(cfg)
    finally:
        lock.release()
    assert not _iterations(cfg.train.out)
    train(cfg)
    assert _iterations(cfg.train.out) == [2]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_auto_falls_back_to_the_newest_verified_checkpoint(tiny, caplog):
    cfg = tiny("--train.keep_checkpoints", "0", iterations=4)
    train(cfg)
    checkpoints = Path(cfg.train.out) / "checkpoints"
    newest = checkpoints / ckpt.checkpoint_name(4)
    _flip_a_byte(newest)

    with caplog.at_level(logging.INFO, logger="medvol.train"):
        train(tiny("--train.keep_checkpoints", "0", iterations=6), resume="auto")
    text = caplog.text
    assert f"checkpoint {newest} is corrupt or truncated" in text and "trying the next older" in text
    assert f"resumed from {checkpoints / ckpt.checkpoint_name(2)} at iteration 2" in text
    # Iteration 4 was trained again from 2 and its checkpoint rewritten whole.
    assert _iterations(cfg.train.out) == [2, 4, 6]
    ckpt.verify_checksum(newest)

    for _, path in ckpt.list_checkpoints(checkpoints):
        ckpt.checksum_path(path).unlink()
    with pytest.raises(MedvolError, match="no intact checkpoint .*ckpt_0000006.pt, ckpt_0000004.pt, "
                                          "ckpt_0000002.pt all failed"):
        train(tiny(iterations=8), resume="auto")


def test_every_resume_says_where_from(tiny, caplog):
    cfg = tiny(iterations=2)
    train(cfg)
    path = Path(cfg.train.out) / "checkpoints" / ckpt.checkpoint_name(2)
    with caplog.at_level(logging.INFO, logger="medvol.train"):
        train(tiny(iterations=2), resume="auto")
        train(tiny(iterations=4), resume=str(path))
    assert caplog.text.count(f"resumed from {path} at iteration 2") == 2


def test_temporaries_of_killed_writes_are_removed_at_start(tiny, caplog):
    cfg = tiny(iterations=2)
    train(cfg)
    run_dir = Path(cfg.train.out)
    stale = [run_dir / "checkpoints" / ".ckpt_0000004.tmp-k1ll3d.pt",
             run_dir / "checkpoints" / ".ckpt_0000004.tmp-k1ll3d.pt.sha256",
             run_dir / "samples" / ".slices_0000004.tmp-k1ll3d.npz",
             run_dir / ".config.tmp-k1ll3d.yaml"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    keep = run_dir / "checkpoints" / "notes.txt"
    keep.write_text("mine", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="medvol.train"):
        train(tiny(iterations=2), resume="auto")
    assert not any(path.exists() for path in stale)
    assert keep.is_file() and _iterations(run_dir) == [2]
    assert "removed 4 temporary file(s)" in caplog.text


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_then_exits(tiny, tmp_path, on_step, capfd, sig, code):
    def signal_during_third_step(iteration, losses):
        if iteration == 2:  # long before the first checkpoint
            os.kill(os.getpid(), sig)

    on_step(signal_during_third_step)
    cfg = tiny("--train.ckpt_every", "1000", iterations=50)
    config_path = save_config(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(config_path)]) == code
    err = capfd.readouterr().err  # the handler's note goes straight to file descriptor 2
    saved = Path(cfg.train.out) / "checkpoints" / ckpt.checkpoint_name(3)
    assert f"{signal.Signals(sig).name} received" in err
    assert err.strip().splitlines()[-1] == (f"medvol train: interrupted by {signal.Signals(sig).name} at "
                                           f"iteration 3; saved {saved}; continue with --resume auto")
    assert _iterations(cfg.train.out) == [3]
    assert ckpt.read_checkpoint(saved)["iteration"] == 3
    # The handlers are gone again: the signal has its usual effect outside training.
    assert signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL)


def test_ctrl_c_to_the_process_group_with_loader_workers(tiny, tmp_path):
    """A real Ctrl-C reaches the loader's worker processes too; they must not die before the save."""
    cfg = tiny("--train.ckpt_every", "1000", "--train.log_every", "1", "--data.workers", "1",
               iterations=1000)
    config_path = save_config(cfg, tmp_path / "cfg.yaml")
    env = dict(os.environ, PYTHONUTF8="0", LC_ALL="C")
    proc = subprocess.Popen([sys.executable, "-m", "medvol.cli", "train", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        log_line = ""
        deadline = time.monotonic() + 120
        while "it 2/1000" not in log_line and time.monotonic() < deadline:
            log_line = proc.stderr.readline().decode("utf-8", "replace")
            assert log_line or proc.poll() is None, "training ended before it was interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode("utf-8", "replace")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGINT at iteration" in err
    (iteration,) = _iterations(cfg.train.out)
    assert iteration >= 2 and ckpt.read_checkpoint(cfg.train.out)["iteration"] == iteration
