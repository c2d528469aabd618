"""Checkpoints written before the model contract and the registry table (commit 7815b57) still
load, generate exactly what they generated then, and resume.

tests/models/legacy/<model>/ holds a 1-iteration tiny run's checkpoint of each kind of state
layout (3D with CRF, 2D, stylegan2's own G_ema, mask-conditional spade) and ``expected.pt``: the
latents (and masks) drawn then and what that code's ``generate`` made of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from medvol.train.checkpoint import load_checkpoint, read_checkpoint

LEGACY = Path(__file__).parent / "legacy"
NAMES = ("crfgan", "dcgan", "spade", "stylegan2")


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoint_generates_what_it_generated(name):
    system, cfg, _ = load_checkpoint(LEGACY / name / "ckpt_0000001.pt")
    assert cfg.model.name == name
    expected = torch.load(LEGACY / name / "expected.pt", weights_only=True)
    kwargs = {"masks": expected["masks"]} if expected["masks"] is not None else {}
    torch.manual_seed(0)
    got = system.generate(expected["z"], **kwargs)
    torch.testing.assert_close(got, expected["generated"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ("crfgan", "dcgan"))
def test_legacy_checkpoint_resumes(tmp_path, name):
    """A run begun before the change continues: network, optimisers and RNG states load."""
    from medvol.config import config_to_dict, load_config
    from medvol.train.trainer import train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for file in (LEGACY / name).glob("ckpt_*"):
        shutil.copy(file, run / "checkpoints" / file.name)
    state = read_checkpoint(run / "checkpoints" / "ckpt_0000001.pt")
    config = config_to_dict(load_config(None, []))
    saved = state["config"]
    saved["train"]["out"] = str(run)
    saved["train"]["iterations"] = 2
    saved["data"]["source"] = "phantom"
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(saved))
    # The old spelling: every option a flat model.<key>, each still known (folded into model.options).
    from medvol.config import LEGACY_FLAT_DEFAULTS

    old_flat = set(saved["model"]) - set(config["model"])
    assert old_flat and old_flat <= set(LEGACY_FLAT_DEFAULTS)
    train(load_config(tmp_path / "c.yaml"), resume=str(run / "checkpoints" / "ckpt_0000001.pt"),
          allow_changes=True)
    assert read_checkpoint(run / "checkpoints" / "ckpt_0000002.pt")["iteration"] == 2
