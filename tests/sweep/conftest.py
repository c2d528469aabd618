"""The sweep tests' tiny base config and stand-in FID extractor, and a real PostgreSQL server for
the multi-worker tests: ``initdb`` and ``pg_ctl`` from
Debian's ``postgresql`` package (tools/install_system_packages.sh), in a temporary data folder,
on 127.0.0.1 and a free port, stopped after the module. PostgreSQL refuses to run as root, so a
root test run starts it as the ``postgres`` user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import yaml


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
    return {"weights": weights, "config": root / "base.yaml", "grid": root / "grid.yaml", "root": root,
            "base": BASE, "grid_data": GRID}


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a server started for this module."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
                    "(tools/install_system_packages.sh does)")
    pytest.importorskip("psycopg", reason="psycopg missing: pip install 'medvol[sweep]'")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="medvol-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and no 'postgres' user to run the PostgreSQL server as")
        runuser = shutil.which("runuser")
        if not runuser:
            shutil.rmtree(root)
            pytest.skip("running as root without runuser to start the PostgreSQL server as 'postgres'")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)

    done = run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
    assert done.returncode == 0, done.stderr
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    done = run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"])
    assert done.returncode == 0, done.stderr + (root / "server.log").read_text(errors="replace")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
