"""`medvol profile` for the 2D models: measured and estimated like the 3D ones, [B, C, S, S]
batches, per-dimension default batches, size checks and 2D labels in the reports."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from medvol import cli
from medvol.models import build
from medvol.profile.cases import Case
from medvol.profile.estimate import estimate
from medvol.profile.report import markdown
from medvol.profile.system import BatchSource, batch_shape


@pytest.mark.parametrize("model, mode", [("dcgan", "optimized"), ("mlpgan", "reference")])
def test_measure_2d_step_in_process(model, mode):
    """The fast sibling of the end-to-end run: one case measured in this process."""
    from medvol.profile.measure import measure

    result = {}
    measure(Case(model, 32, 2, mode, base_width=4, iters=1, warmup=1), result)
    assert result["dims"] == 2 and result["it_per_s"] > 0 and len(result["step_s"]) == 1
    assert set(result["substeps"]) == {"D", "G"}
    assert result["params"] == build(model, 32, base_width=4).param_counts()


@pytest.mark.slow
def test_measure_2d_models_end_to_end(tmp_path):
    out = tmp_path / "prof"
    assert cli.main(["profile", "--model", "dcgan,mlpgan", "--size", "32", "--base-width", "4", "--batch", "2",
                     "--mode", "reference,optimized", "--iters", "1", "--warmup", "1", "--device", "cpu",
                     "--out", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text(encoding="utf-8"))
    results = {(r["case"]["model"], r["case"]["mode"]): r for r in report["results"]}
    assert len(results) == 4
    for (model, mode), r in results.items():
        assert r["status"] == "ok", r.get("error")
        assert r["dims"] == 2 and r["it_per_s"] > 0 and r["peak_bytes"] > 0
        assert set(r["substeps"]) == {"D", "G"}
        assert r["params"] == build(model, 32, base_width=4).param_counts()
    table = (out / "profile.md").read_text(encoding="utf-8")
    assert "| DCGAN | optimized |" in table and "| MLP-GAN | reference |" in table
    assert "32² b2" in table and "³" not in table and "fused Adam" in table
    rows = list(csv.DictReader((out / "profile.csv").open(encoding="utf-8")))
    assert {row["base_width"] for row in rows} == {"4"}


def test_estimate_feeds_2d_batches():
    small = estimate(Case("dcgan", 32, 2, "reference", kind="estimate", base_width=8))
    large = estimate(Case("dcgan", 32, 16, "reference", kind="estimate", base_width=8))
    assert small["dims"] == 2 and small["peak_bytes"] < large["peak_bytes"]
    params = build("dcgan", 32, base_width=8).param_counts()["total"]
    assert small["persistent"]["parameters"] >= 4 * params  # fp32 weights (+ BatchNorm buffers)
    assert small["persistent"]["optimizer"] >= 8 * params  # Adam's two moments
    # Four critic batches per step: the step holds a 4x larger real batch (and 4 D updates).
    critic = estimate(Case("dcgan", 32, 16, "reference", kind="estimate", base_width=8, model_options="n_critic=4"))
    assert critic["peak_bytes"] > large["peak_bytes"]


def test_default_width_of_2d_models_is_their_published_one():
    assert Case("dcgan", 64, 16, "reference").width == 64
    assert Case("mlpgan", 64, 16, "reference").width == 256
    assert Case("crfgan", 64, 1, "reference").width == 32
    assert Case("dcgan", 64, 16, "reference").label == "dcgan 64^2 b16 reference (measure, cpu)"


def test_batch_shapes_and_phantom_slices():
    dcgan = build("dcgan", 32, base_width=4, channels=2, n_critic=3)
    assert batch_shape(dcgan, 4) == (12, 2, 32, 32)
    assert batch_shape(build("crfgan", 32, base_width=2, latent_dim=8), 2) == (2, 1, 32, 32, 32)
    source = BatchSource(Case("dcgan", 32, 4, "reference", data="phantom"), torch.device("cpu"), dcgan)
    batch, seconds = source.next()
    assert batch.shape == (12, 2, 32, 32) and seconds >= 0
    assert batch.min() >= -1 and batch.max() <= 1
    assert set(batch[:, 1].unique().tolist()) <= {-1.0, 1.0}  # the mask channel


@pytest.fixture
def captured(monkeypatch):
    """The cases ``medvol profile`` would run, without running them."""
    import medvol.profile.runner as runner

    seen = {}

    def fake_run(cases, out, **kwargs):
        seen["cases"], seen["kwargs"] = cases, kwargs
        return {"results": []}

    monkeypatch.setattr(runner, "run_profile", fake_run)
    return seen


def test_default_batches_per_dimension(captured, tmp_path):
    assert cli.main(["profile", "--model", "crfgan,dcgan", "--size", "64", "--mode", "reference",
                     "--device", "cpu", "--out", str(tmp_path)]) == 0
    batches = {}
    for case in captured["cases"]:
        batches.setdefault(case.model, []).append(case.batch)
    assert batches == {"crfgan": [1, 2], "dcgan": [16, 64]}
    assert captured["kwargs"]["max_batch_limit"] is None
    assert cli.main(["profile", "--model", "crfgan,mlpgan", "--size", "64", "--batch", "4", "--mode", "reference",
                     "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert {(c.model, c.batch) for c in captured["cases"]} == {("crfgan", 4), ("mlpgan", 4)}


@pytest.mark.parametrize("argv, message", [
    (["--model", "dcgan", "--size", "512"], "--size: '512' is not one of 32, 64, 128, 256"),
    (["--model", "crfgan,dcgan", "--size", "512"], "--size: dcgan supports 32, 64, 128, 256, not 512"),
    (["--model", "dcgan", "--model-option", "n_critic=0"], "n_critic"),
    (["--model", "dcgan", "--max-batch-limit", "0"], "--max-batch-limit must be positive"),
])
def test_2d_errors_are_one_line(tmp_path, capsys, argv, message):
    assert cli.main(["profile", "--mode", "reference", "--device", "cpu", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_mixed_report_labels_sizes_per_model():
    def result(model, dims, batch):
        return {"case": Case(model, 64, batch, "reference", base_width=None).to_dict(), "status": "ok",
                "dims": dims, "peak_bytes": 2**20, "it_per_s": 1.0, "params": {"G": 1, "D": 1, "total": 2},
                "substeps": {"D": {"time_s_median": 0.01, "peak_bytes": 2**20}}}

    report = {"meta": {"versions": {"torch": "x", "cuda": None, "triton": None, "medvol": "y", "python": "z"},
                       "date": "d", "command": "c"},
              "results": [result("crfgan", 3, 1), result("dcgan", 2, 16)], "max_batch": []}
    table = markdown(report)
    assert "| model | mode | 64 b1 | 64 b16 |" in table  # mixed 2D and 3D: no ³ or ² in the header
    assert "DCGAN 64² b16 reference" in table and "CRF-GAN 64³ b1 reference" in table
    assert "| DCGAN | 64² | 64 |" in table  # the parameter table: dcgan's published width 64
