"""tools/learn_check.py on the latent diffusion models: the real sets of a 3D ldm run are volumes
(the registry's dimensions, not a list of GAN names)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from medvol.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def learn_check():
    spec = importlib.util.spec_from_file_location("learn_check_ldm_under_test", ROOT / "tools" / "learn_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config, shape", [("configs/ldm_tiny.yaml", (2, 1, 32, 32, 32)),
                                           ("configs/learn/ldm2d_64.yaml", (2, 1, 64, 64))])
def test_real_items_have_the_models_dimensions(learn_check, config, shape):
    cfg = load_config(str(ROOT / config), [])
    assert learn_check.real_items(cfg, 2, seed=1000).shape == shape
