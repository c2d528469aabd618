"""UMAP beside PCA: ``--metrics ...,umap`` draws features_umap.png from the same per-volume
feature vectors; without umap-learn it is skipped with a one-line note, never an error."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from medvol.cli import main
from medvol.eval import evaluate as ev


def _same_set_neighbours(er: np.ndarray, ef: np.ndarray) -> float:
    """Fraction of points whose nearest other point in the embedding is from their own set."""
    e = np.concatenate([er, ef])
    label = np.r_[np.zeros(len(er)), np.ones(len(ef))]
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((label[d.argmin(1)] == label).mean())


@pytest.mark.slow  # umap-learn's first fit in a process compiles for 20-30 s
def test_umap_keeps_two_separate_sets_apart():
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    real = rng.normal(size=(20, 32))
    fake = rng.normal(size=(20, 32)) + 4.0  # far apart in every dimension
    er, ef = ev.umap_2d(real, fake, seed=0)
    assert er.shape == (20, 2) and ef.shape == (20, 2)
    assert _same_set_neighbours(er, ef) == 1.0
    again = ev.umap_2d(real, fake, seed=0)
    assert np.array_equal(er, again[0]) and np.array_equal(ef, again[1])  # seeded


def test_umap_without_umap_learn_is_a_note(monkeypatch):
    real = fake = np.zeros((5, 4))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else find_spec(name, *a))
    png, note = ev._plot_umap("x", real, fake)
    assert png is None and "umap-learn is not installed" in note and "\n" not in note


@pytest.mark.parametrize("installed", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_evaluate_umap_figure_or_note(tmp_path, weights, capsys, caplog, monkeypatch, installed):
    if installed:
        pytest.importorskip("umap")
    else:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "umap" else find_spec(name, *a))
    out = tmp_path / "e"
    code = main(["evaluate", "--real", "phantom:0", "--fake", "phantom:1", "--size", "32", "--n", "4",
                 "--features", f"inception2.5d:{weights}", "--slices-per-volume", "2", "--bootstrap", "0",
                 "--metrics", "fid,umap", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert (out / "features_pca.png").is_file()
    if installed:
        assert (out / "features_umap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "features_umap.png" in report["figures"] and "notes" not in report
    else:
        assert not (out / "features_umap.png").exists()
        assert [r.getMessage() for r in caplog.records if "umap" in r.getMessage()] == [
            "note: features_umap.png skipped: umap-learn is not installed (pip install 'medvol[umap]')"]
        assert "note: features_umap.png skipped" in (out / "scores.md").read_text(encoding="utf-8")


def test_umap_is_opt_in(tmp_path, weights, capsys):
    out = tmp_path / "e"
    code = main(["evaluate", "--real", "phantom:0", "--fake", "phantom:1", "--size", "32", "--n", "4",
                 "--features", f"inception2.5d:{weights}", "--slices-per-volume", "2", "--bootstrap", "0",
                 "--metrics", "fid", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "features_pca.png").is_file() and not (out / "features_umap.png").exists()
