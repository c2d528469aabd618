"""Diversity (mean pairwise 3D MS-SSIM): the settings MONAI accepts at each size, identical sets,
and a collapsed set against a diverse one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvol.errors import MedvolError
from medvol.eval.diversity import ms_ssim_settings, pairwise_ms_ssim


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_settings_are_accepted_by_monai(size):
    from monai.metrics.regression import compute_ms_ssim

    s = ms_ssim_settings(size)
    assert s["kernel_size"] % 2 == 1 and s["kernel_size"] >= 3
    assert sum(s["weights"]) == pytest.approx(1.0)
    if size >= 64:
        assert s["scales"] == 5
    if size >= 256:
        assert s["kernel_size"] == 11
    if size <= 64:  # MONAI accepts the settings (a full cube is cheap enough to run here)
        x = torch.rand(1, 1, size, size, size)
        got = compute_ms_ssim(x, x, spatial_dims=3, data_range=1.0, kernel_size=s["kernel_size"],
                              kernel_sigma=s["kernel_sigma"], weights=s["weights"])
        assert float(got.reshape(-1)[0]) == pytest.approx(1.0, abs=1e-5)
    # and MONAI's size rule holds for the chosen kernel
    assert size // max(1, s["scales"] - 1) ** 2 > s["kernel_size"] - 1


def test_identical_and_collapsed_sets(seeded_rng):
    from medvol.data.phantom import make_phantom
    from medvol.data.preprocess import PreprocessParams, preprocess_volume

    params = PreprocessParams(size=32)
    diverse = [preprocess_volume(make_phantom(32, (5, i))[0], params) for i in range(4)]
    copies = [diverse[0].copy() for _ in range(4)]
    assert pairwise_ms_ssim(copies)["mean"] == pytest.approx(1.0, abs=1e-5)
    d = pairwise_ms_ssim(diverse)
    assert d["pairs"] == 6 and d["mean"] < 0.99
    near = [diverse[0] + 0.01 * seeded_rng.standard_normal(diverse[0].shape).astype(np.float32)
            for _ in range(4)]
    assert pairwise_ms_ssim(near)["mean"] > d["mean"]
    noise = [seeded_rng.uniform(-1, 1, (32, 32, 32)).astype(np.float32) for _ in range(3)]
    assert pairwise_ms_ssim(noise)["mean"] < d["mean"]
    assert pairwise_ms_ssim(diverse, max_pairs=2, seed=1)["pairs"] == 2


def test_refusals():
    with pytest.raises(MedvolError, match="at least 2"):
        pairwise_ms_ssim([np.zeros((8, 8, 8))])
    with pytest.raises(MedvolError, match="one shape"):
        pairwise_ms_ssim([np.zeros((8, 8, 8)), np.zeros((9, 9, 9))])
