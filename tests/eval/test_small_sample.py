"""The small-sample warning counts volumes, as docs/evaluation.md does, not 2.5D slice rows (issue 24)."""

from __future__ import annotations

import numpy as np

from medvol.eval.evaluate import score_views
from medvol.eval.features import FeatureSet


def _set(volumes: int, slices: int, dim: int, seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(volumes), slices)
    return FeatureSet({"axial": rng.standard_normal((volumes * slices, dim))}, {"axial": groups}, volumes,
                      [f"v{i}" for i in range(volumes)])


def test_warning_names_volumes_and_rows():
    got = score_views(_set(3, 4, 16, 0), _set(5, 4, 16, 1), ["fid"], n_boot=0)
    assert len(got["warnings"]) == 1
    line = got["warnings"][0]
    assert line.startswith("axial/fid: N = 3 real and 5 generated volumes (12 feature rows")
    assert "feature dimension 16" in line and "\n" not in line


def test_one_row_per_sample_and_enough_rows():
    got = score_views(_set(6, 1, 8, 0), _set(6, 1, 8, 1), ["fid"], n_boot=0)
    assert got["warnings"] == ["axial/fid: N = 6 samples for feature dimension 8; the covariance is singular "
                               "and the score is strongly biased by N. Compare scores only at equal N "
                               "(of volumes and slices)."]
    assert score_views(_set(5, 4, 8, 0), _set(5, 4, 8, 1), ["fid"], n_boot=0)["warnings"] == []
