"""A full disk while generating, writing phantoms or training: exit 2 with one line naming the
file, nothing under its final name and no temporary left (issue #11, case 4).

The disk fills through ``RLIMIT_FSIZE`` (``medvol_with_file_limit`` in conftest.py): writes past
the limit fail in the kernel, so ITK's and torch's own writers meet a short write as on a full disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medvol.config import save_config
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train


def _medvol_line(stderr: str) -> str:
    # ITK's NIfTI writer adds its own note before (** ERROR: NWAD: wrote only ...).
    lines = stderr.strip().splitlines()
    assert lines and "Traceback" not in stderr, stderr
    return lines[-1]


def test_generate_on_a_full_disk(trained_run, tmp_path, medvol_with_file_limit):
    out = tmp_path / "samples"
    done = medvol_with_file_limit(["generate", "--ckpt", trained_run, "--n", 2, "--out", out], limit=40_000)
    assert done.returncode == 2, done.stderr
    assert _medvol_line(done.stderr).startswith(
        f"medvol generate: error: cannot write volume {out / 'sample_0000.nii.gz'}: short write")
    assert done.stdout == ""
    assert not out.exists()  # no sample, no temporary, no provenance: not even the folder it made


@pytest.mark.parametrize("fmt", ["nii.gz", "nii", "mhd"])
def test_phantoms_on_a_full_disk(tmp_path, medvol_with_file_limit, fmt):
    out = tmp_path / "ct"
    # 64^3 int16 is 512 KiB raw, about 280 KB compressed: neither fits.
    done = medvol_with_file_limit(["data", "phantom", "--n", 2, "--size", 64, "--out", out, "--format", fmt],
                                  limit=100_000)
    assert done.returncode == 2, done.stderr
    assert _medvol_line(done.stderr).startswith(
        f"medvol data: error: cannot write volume {out / f'phantom_0000.{fmt}'}: ")
    assert done.stdout == ""
    assert not out.exists()  # a failed first job leaves no folder it created (medvol.outputs)


@pytest.mark.parametrize("limit, what, name", [
    (100, "config", "config.yaml"),                       # nothing fits
    (200_000, "checkpoint", "checkpoints/ckpt_0000002.pt"),  # config, events, slices fit; 1 MB does not
], ids=["config", "checkpoint"])
def test_training_on_a_full_disk(tiny, tmp_path, medvol_with_file_limit, limit, what, name):
    cfg = tiny(iterations=2)
    config_path = save_config(cfg, tmp_path / "cfg.yaml")
    done = medvol_with_file_limit(["train", "--config", config_path], limit=limit)
    assert done.returncode == 2, done.stderr
    run_dir = Path(cfg.train.out)
    assert _medvol_line(done.stderr).startswith(f"medvol train: error: cannot write {what} {run_dir / name}: ")
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()) if run_dir.exists() else []
    assert name not in left and not [p for p in left if ".tmp-" in p], left
    assert not [p for p in left if p.startswith("checkpoints/")], left
    if what == "checkpoint":
        # Once there is room the run continues from scratch: no half checkpoint is in the way.
        train(tiny(iterations=2), resume="auto")
        assert [i for i, _ in ckpt.list_checkpoints(run_dir / "checkpoints")] == [2]


_TENSORBOARD = """
import sys
from medvol.errors import MedvolError
from medvol.train.monitor import Monitor
monitor = Monitor(sys.argv[1], 1000, 0, progress=False)
try:
    for i in range(1000):
        monitor.scalars(i, {"loss/G": float(i), "loss/D": float(-i)})
    monitor.close()
except MedvolError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
"""


def test_tensorboard_logs_on_a_full_disk(tmp_path, medvol_with_file_limit):
    done = medvol_with_file_limit([tmp_path / "run"], limit=4000, script=_TENSORBOARD)
    assert done.returncode == 2, done.stderr
    # One line: the writer thread's own traceback is not printed beside it.
    assert done.stderr.strip() == f"cannot write TensorBoard logs in {tmp_path / 'run' / 'tb'}: file too large"
