"""Data-parallel training under torchrun: 2 CPU processes on gloo end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from medvol.config import save_config
from medvol.train import checkpoint as ckpt

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_gloo_processes_train_in_lockstep(tiny, tmp_path):
    cfg = tiny(iterations=2)
    config_path = save_config(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(config_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = Path(cfg.train.out)
    rank0, rank1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)

    state = ckpt.read_checkpoint(out)
    assert state["iteration"] == 2 and state["world_size"] == 2 and len(state["rng"]) == 2
    # Each rank drew its own latents/crops: the per-rank generator states differ.
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])
    # And training moved the weights (the equality above is not that of an untouched model).
    torch.manual_seed(cfg.train.seed)
    from medvol.train.trainer import build_system

    initial = torch.cat([t.flatten() for t in build_system(cfg).state_dict().values()])
    assert initial.shape == rank0.shape and not torch.equal(initial, rank0)
