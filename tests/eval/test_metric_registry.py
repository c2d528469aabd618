"""Metrics are registered like extractors: a metric registered from outside medvol is asked for by
name, scored on every view with its bootstrap interval, and ranked by its direction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvol.errors import MedvolError
from medvol.eval import scores
from medvol.eval.evaluate import EvaluateOptions, better, evaluate


def _mean_gap(a: np.ndarray, b: np.ndarray, prdc_k) -> dict[str, float]:
    return {"meangap": float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(scores, "_METRICS", dict(scores._METRICS))
    return scores.register_metric(scores.Metric("meangap", "features", score=_mean_gap, lower_is_better=True))


def test_a_registered_metric_is_scored_with_its_interval(registered, tmp_path):
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 6)), rng.normal(0.5, 1.0, size=(30, 6))
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", fake)
    report = evaluate(str(tmp_path / "real.npy"), str(tmp_path / "fake.npy"), tmp_path / "out",
                      EvaluateOptions(metrics=["fid", "meangap"], n_boot=20, seed=3))
    got = report["extractors"][0]["scores"]
    # Closed form on the float32 rows evaluate reads.
    gap = float(np.sum((real.astype(np.float64).mean(0) - fake.astype(np.float64).mean(0)) ** 2))
    assert got["features/meangap"]["value"] == pytest.approx(gap, rel=1e-6)
    assert got["features/meangap"]["n_boot"] == 20 and got["features/meangap"]["interval"] == "percentile"
    assert got["features/meangap"]["ci_low"] < gap < got["features/meangap"]["ci_high"]
    assert "features/fid" in got
    written = json.loads((tmp_path / "out" / "scores.json").read_text(encoding="utf-8"))
    assert written["metrics"] == ["fid", "meangap"]
    assert "| features/meangap |" in (tmp_path / "out" / "scores.md").read_text(encoding="utf-8")
    assert better("features/meangap") == "lower" and better("features/precision") == "higher"


def test_names_are_checked_against_the_registry(registered, tmp_path):
    with pytest.raises(MedvolError, match=r"unknown metric 'nope' \(--metrics\): choose from fid, .*meangap"):
        evaluate("a.npy", "b.npy", tmp_path / "o", metrics=["nope"])
    assert scores.metric_names("features") == ("fid", "mmd", "prdc", "meangap")
    assert scores.metric_names(dims=2) == ("fid", "kid", "mmd", "prdc", "factors", "is", "umap", "meangap")
    with pytest.raises(ValueError, match="needs its score function"):
        scores.register_metric(scores.Metric("bare", "features"))
    with pytest.raises(ValueError, match="kind 'pixels'"):
        scores.register_metric(scores.Metric("odd", "pixels"))
    with pytest.raises(TypeError):
        evaluate("a.npy", "b.npy", tmp_path / "o", metric=["fid"])  # a misspelt option is not ignored
