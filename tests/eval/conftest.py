"""Fixtures of the evaluation tests."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest


@pytest.fixture
def seeded_rng(request):
    """A numpy generator seeded per test (MEDVOL_TEST_SEED overrides); the seed is printed, so a
    failure shows it in the captured output."""
    seed = int(os.environ.get("MEDVOL_TEST_SEED", zlib.crc32(request.node.nodeid.encode())))
    print(f"seed {seed} (rerun with MEDVOL_TEST_SEED={seed})")
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 16-d random-init TorchScript stand-in for the Inception network (seed 7), so that no
    weights are needed (test_evaluate_cli, test_umap)."""
    from test_features import save_tiny_inception

    return save_tiny_inception(tmp_path_factory.mktemp("w") / "inception_standin.pt", 7, dim=16)
