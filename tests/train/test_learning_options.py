"""Training options added as stabilisers for short CPU runs (docs/learning.md): ``train.beta1``."""

from __future__ import annotations

import pytest
import torch

from medvol.config import load_config
from medvol.errors import MedvolError
from medvol.train.checkpoint import read_checkpoint, resolve_checkpoint
from medvol.train.trainer import train


def test_beta1_reaches_the_optimisers_and_the_checkpoint(tiny):
    run = train(tiny("--train.beta1.G", "0.5", "--train.beta1.D", "0.25", iterations=1))
    state = read_checkpoint(resolve_checkpoint(run))
    betas = {name: opt["param_groups"][0]["betas"] for name, opt in state["optimizers"].items()}
    assert tuple(betas["G"]) == (0.5, 0.999) and tuple(betas["D"]) == (0.25, 0.999)
    assert tuple(betas["E"]) == (0.0, 0.999) and tuple(betas["crf"]) == (0.0, 0.999)  # published


def test_beta1_applies_to_a_2d_model(tiny):
    cfg = tiny("--train.beta1.G", "0.0", name="dcgan", iterations=1)
    state = read_checkpoint(resolve_checkpoint(train(cfg)))
    assert tuple(state["optimizers"]["G"]["param_groups"][0]["betas"]) == (0.0, 0.999)
    assert tuple(state["optimizers"]["D"]["param_groups"][0]["betas"]) == (0.5, 0.999)


def test_beta1_bad_values_name_the_key(tiny):
    for value in ("1.0", "-0.1"):
        with pytest.raises(MedvolError, match=r"train\.beta1\.G"):
            load_config(None, ["--train.beta1.G", value])
    with pytest.raises(MedvolError, match=r"train\.beta1\.Q: no such optimiser"):
        train(tiny("--train.beta1.Q", "0.5", iterations=1))
    with pytest.raises(MedvolError, match=r"train\.beta1\.G: .*RMSprop.* has no betas"):
        train(tiny("--train.beta1.G", "0.5", "--model.optimizer", "rmsprop", name="dcgan", iterations=1))
