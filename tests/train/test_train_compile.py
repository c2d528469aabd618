"""`--train.compile true` trains with torch.compile'd G and E and keeps checkpoints interchangeable."""

import torch

from medvol.train.checkpoint import load_checkpoint
from medvol.train.trainer import train


def test_compiled_training_runs_and_checkpoints_load_eagerly(tiny):
    cfg = tiny("--train.mode", "optimized", "--train.amp", "none", "--train.compile", "true")
    run_dir = train(cfg)
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))
    assert [p.name for p in checkpoints] == ["ckpt_0000002.pt"]
    system, loaded_cfg, state = load_checkpoint(checkpoints[-1])
    assert loaded_cfg.train.compile is True and state["iteration"] == 2
    # Compiled modules keep their parameter names: the eager system loads them as they are.
    assert not any("_orig_mod" in name for name in system.state_dict())
    volume = system.generate(system.sample_latent(1, generator=torch.Generator().manual_seed(0)))
    assert volume.shape == (1, 1, 32, 32, 32) and torch.isfinite(volume).all()
