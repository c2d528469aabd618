"""tools/learn_check.py's factor numbers for 3D runs (the factor metric of medvol evaluate)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def learn_check():
    spec = importlib.util.spec_from_file_location("learn_check_factors_under_test", ROOT / "tools" / "learn_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_factor_summary_means_closed_form(learn_check):
    cont = {"body_width_mm": (0.2, 0.1), "body_depth_mm": (0.4, 0.3), "lung_ml": (0.6, 0.1),
            "lung_ratio": (0.8, 0.3), "nodule_count": (math.nan, math.nan), "noise_hu": (3.0, 0.2)}
    factors = {"continuous": {k: {"w1_norm": w, "floor_norm": f} for k, (w, f) in cont.items()},
               "modes": {"coverage": 2 / 3, "fake": {"slim/none": 4}}}
    out = learn_check.factor_summary(factors)
    assert out["w1_norm_anatomy_mean"] == pytest.approx(0.5) and out["floor_norm_anatomy_mean"] == pytest.approx(0.2)
    assert out["w1_norm_mean"] == pytest.approx(1.0)  # NaN (no nodules anywhere) left out
    assert out["coverage"] == pytest.approx(0.667) and out["fake_modes"] == {"slim/none": 4}


def test_factor_numbers_of_a_set_against_itself_and_a_shifted_one(learn_check):
    from medvol.data.datasets import PhantomVolumeDataset

    data = PhantomVolumeDataset(32, 6, seed=3)
    real = np.stack([np.asarray(data[i]["image"], dtype=np.float32) for i in range(len(data))])
    same = learn_check.factor_numbers(real, real)
    assert all(v["w1"] == 0 for v in same["continuous"].values() if math.isfinite(v["w1"]))
    assert same["modes"]["coverage"] == 1.0
    # Soft tissue where the central lung voxels were: the lungs measure smaller, the bodies alike.
    filled = real.copy()
    centre = filled[:, :, :, 12:20, 8:24]
    centre[centre < -0.5] = 0.0
    shifted = learn_check.factor_numbers(filled, real)["continuous"]
    assert shifted["lung_ml"]["fake_mean"] < shifted["lung_ml"]["real_mean"] and shifted["lung_ml"]["w1"] > 0
    assert shifted["body_width_mm"]["w1"] == 0


def test_training_runs_on_one_thread_unless_asked(learn_check, tmp_path, monkeypatch):
    """learn_check trains with ``--train.threads 1`` (medvol's default count ignores
    OMP_NUM_THREADS, and two threads stall each other on a shared machine); an explicit
    ``--train.threads`` override is kept instead."""
    commands = []

    def call(cmd, **kwargs):
        commands.append(cmd)
        return 0

    monkeypatch.setattr(learn_check.subprocess, "call", call)
    learn_check.train("configs/learn/dcgan_64.yaml", tmp_path / "run", [], tmp_path / "a.log")
    learn_check.train("configs/learn/dcgan_64.yaml", tmp_path / "run", ["--train.threads", "2"], tmp_path / "b.log")
    first, second = commands
    assert first[first.index("--train.threads") + 1] == "1"
    assert second.count("--train.threads") == 1 and second[second.index("--train.threads") + 1] == "2"
