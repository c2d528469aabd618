"""tools/bench_vs_published.py: the published loop runs patched in a fresh process; the report's
order and ratios are what it says."""

import json
import os
from pathlib import Path

import pytest

from published_standin import write_standin

OK = {"status": "ok"}


def test_published_standin_runs_patched_in_a_fresh_process(tmp_path, vs_published):
    """The stand-in's own asserts check the batch shape and that `.cuda()` landed on the CPU; it
    imports tensorboardX/nilearn/skimage (absent or stubbed) and wraps its nets in DataParallel."""
    repo = write_standin(tmp_path / "clone", size=32)
    config = {"key": "k", "repo": str(repo), "model": "crfgan", "size": 32, "batch": 2,
              "device": "cpu", "iters": 2, "warmup": 1, "seed": 0}
    result = vs_published.published_in_subprocess(config, timeout=120)
    assert result["status"] == "ok", result.get("traceback") or result.get("error")
    assert result["pid"] != os.getpid()
    assert len(result["step_s"]) == 2 and all(t > 0 for t in result["step_s"])
    assert result["step_s_median"] == pytest.approx(sorted(result["step_s"])[1] / 2 + sorted(result["step_s"])[0] / 2)
    assert result["peak_bytes"] > 0
    assert {"tensorboardX", "nibabel", "nilearn", "matplotlib.pyplot"} <= set(result["stubbed"])
    assert {"Tensor.cuda", "Module.cuda", "nn.DataParallel"} <= set(result["patched"])
    # Its checkpoint folder went to a temporary working directory, not here.
    assert not Path("checkpoint").exists()


def test_published_failure_is_a_result(tmp_path, vs_published):
    repo = write_standin(tmp_path / "clone", size=32)
    train = repo / "train.py"
    train.write_text(train.read_text(encoding="utf-8").replace("d_loss.backward()", "raise ValueError('boom')"))
    config = {"key": "k", "repo": str(repo), "model": "crfgan", "size": 32, "batch": 1,
              "device": "cpu", "iters": 1, "warmup": 0, "seed": 0}
    result = vs_published.published_in_subprocess(config, timeout=120)
    assert result["status"] == "error" and "boom" in result["error"]


def test_interleaved_order_and_ratios(tmp_path, vs_published):
    """Per configuration: published, reference, optimized, published, ...; ratios medvol/published
    of the medians over repetitions."""
    repo = write_standin(tmp_path / "clone", size=32)
    calls = []
    times = {"published": [2.0, 4.0, 3.0], "reference": [1.0, 1.5, 2.0], "optimized": [0.5, 0.6, 0.4]}
    peaks = {"published": 100, "reference": 50, "optimized": 25}

    def fake(side, config):
        calls.append((side, config["batch"]))
        t = times[side][sum(1 for s, b in calls if s == side and b == config["batch"]) - 1]
        return {"status": "ok", "step_s_median": t * config["batch"], "peak_bytes": peaks[side] * 2**20}

    report = vs_published.compare(
        [repo], sizes=[32], batches=[1, 2], device="cpu", reps=3, iters=1, warmup=0,
        modes=["reference", "optimized"], base_width=4, seed=0, timeout=None, out=tmp_path / "out",
        command="test", log=lambda line: None,
        run_pub=lambda config: fake("published", config), run_mv=lambda config, mode: fake(mode, config))
    assert calls == [(side, batch) for batch in (1, 2) for _ in range(3)
                     for side in ("published", "reference", "optimized")]
    row = report["rows"][1]
    assert (row["batch"], row["published_s_it"], row["reference_s_it"]) == (2, 6.0, 3.0)
    assert row["reference_s_it_ratio"] == pytest.approx(0.5)
    assert row["optimized_s_it_ratio"] == pytest.approx(1.0 / 6.0)
    assert row["optimized_peak_mib_ratio"] == pytest.approx(0.25)
    text = (tmp_path / "out" / "vs_published.md").read_text(encoding="utf-8")
    assert "| CRF-GAN | 32³ | 2 | 6.000 | 100 | 3.000 | 0.50× | 50 | 0.50× | 1.000 | 0.17× | 25 | 0.25× |" in text
    assert "base width 4" in text
    saved = json.loads((tmp_path / "out" / "vs_published.json").read_text(encoding="utf-8"))
    assert len(saved["results"]) == 18 and saved["rows"] == json.loads(json.dumps(report["rows"]))


def test_a_failed_side_has_no_ratio(tmp_path, vs_published):
    repo = write_standin(tmp_path / "clone", size=32)
    report = vs_published.compare(
        [repo], sizes=[32], batches=[1], device="cpu", reps=1, iters=1, warmup=0, modes=["reference"],
        base_width=4, seed=0, timeout=None, out=tmp_path / "out", command="test", log=lambda line: None,
        run_pub=lambda config: {"status": "OOM", "error": "too big"},
        run_mv=lambda config, mode: {"status": "ok", "step_s_median": 1.0, "peak_bytes": 2**20})
    row = report["rows"][0]
    assert row["reference_s_it_ratio"] is None and row["published_status"].startswith("OOM")
    assert "published: OOM: too big" in (tmp_path / "out" / "vs_published.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("args, message", [
    ([], "--published PATH is required"),
    (["--published", "{tmp}"], "no train.py there"),
    (["--published", "{clone}", "--size", "48"], "has models for sizes 32"),
    (["--published", "{clone}", "--mode", "fast"], "'fast' is not one of"),
])
def test_bad_input_is_one_line(tmp_path, vs_published, capsys, args, message):
    clone = write_standin(tmp_path / "clone", size=32)
    args = [a.format(tmp=tmp_path, clone=clone) for a in args]
    assert vs_published.main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_vs_published: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
