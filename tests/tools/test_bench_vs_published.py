"""tools/bench_vs_published.py: the published loop runs patched in a fresh process; the report's
order and ratios are what it says."""

import json
import os
from pathlib import Path

import numpy as np
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


# --------------------------------------------------------------------------- --learn

@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A medvol cache of 8 phantoms at 32^3 (its train split is what both sides train on)."""
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    root = tmp_path_factory.mktemp("learn_cache")
    write_phantoms(8, 32, root / "phantoms", seed=0)
    build_cache(root / "phantoms", root / "cache", PreprocessParams(size=32))
    return root / "cache"


def test_published_learning_run_trains_narrowed_networks_on_the_cache(tmp_path, vs_published, tiny_cache):
    """The published main() trains the given iterations on the cache's volumes (the stand-in asserts
    their shape and range), at medvol's widths although the published constructors call
    super(Name, self) and reshape with a literal 512 channels; every add_scalar is kept, and the
    generator in its 'eval' mode gives whole volumes."""
    from published_standin import write_learning_standin

    repo = write_learning_standin(tmp_path / "clone", size=32)
    config = {"learn": True, "repo": str(repo), "model": "crfgan", "size": 32, "batch": 2, "iterations": 5,
              "width": 8, "latent": 16, "lr_g": 2e-4, "lr_d": 3e-4, "lr_e": 1e-4, "seed": 3,
              "cache": str(tiny_cache), "n": 6, "sample_seed": 0, "out": str(tmp_path)}
    result = vs_published.published_in_subprocess(config, timeout=300)
    assert result["status"] == "ok", result.get("traceback") or result.get("error")
    assert [it for it, _ in result["curves"]["E"]] == list(range(5))  # --log-iter 1: every iteration
    assert [v for _, v in result["curves"]["E"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert set(result["curves"]) == {"D", "D_real", "D_fake", "G_fake", "E"}
    # Width 8: G's first linear 16 * 8 * 4^3 outputs; D 512 -> 16 * 8 = 128 channels (conv: 128 // 16).
    params = result["parameters"]
    fc1 = (16 + 1) * 8 * 16 * 64
    conv1 = 8 * 16 * 8 * 27 + 8
    conv2 = 8 * 27 + 1
    assert params["Generator"] == fc1 + conv1 + conv2
    assert params["Discriminator"] == (1 * 8 * 64 + 8) + (8 + 1)
    assert params["Encoder"] == 1 * 16 * 64 + 16
    samples = np.load(result["samples"])
    assert samples.shape == (6, 1, 32, 32, 32) and np.abs(samples).max() <= 1
    assert float(samples.std(axis=0).mean()) > 0  # six latents, six volumes
    assert result["first_nonfinite"] == {}  # no network gave NaN
    import json as _json

    assert _json.loads((tmp_path / "curves.json").read_text(encoding="utf-8"))["E"][-1] == [4, 4.0]


def test_window_means_are_medvols_log_windows(vs_published):
    points = [(i, float(i)) for i in range(25)]
    # medvol logs at iteration k * every (1-based) the mean of the last `every` values.
    assert vs_published.window_means(points, 10) == [(10, 4.5), (20, 14.5)]
    assert vs_published.window_means(points[:9], 10) == []


def test_learning_comparison_report(tmp_path, vs_published, tiny_cache):
    """learn_compare: both sides per seed, scored against one real set, curves with medvol's names
    on one figure per model and seed, a montage, and a table row per side."""
    from published_standin import write_learning_standin

    repo = write_learning_standin(tmp_path / "clone", size=32)
    rng = np.random.default_rng(0)
    calls = []

    def side(name, config):
        calls.append((name, config["seed"], config["iterations"], config["width"]))
        path = Path(config["out"]) / "samples.npy"
        np.save(path, rng.uniform(-1, 1, (config["n"], 1, 32, 32, 32)).astype(np.float32))
        curves = ({"D": [(i, 1.0) for i in range(20)], "G_fake": [(i, float(i)) for i in range(20)]}
                  if name == "published" else {"D": [(10, 1.0), (20, 1.0)], "G": [(10, 4.5), (20, 14.5)]})
        return {"status": "ok", "cpu_s": 1.0, "wall_s": 2.0, "samples": str(path), "curves": curves}

    report = vs_published.learn_compare(
        [repo], cache=tiny_cache, sizes=[32, 64], batch=2, iterations=20, width=8, latent=16,
        lr=(1e-4, 4e-4, 1e-4), seeds=[0, 1], n=6, eval_seed=1000, log_every=10, timeout=None,
        out=tmp_path / "out", command="test", log=lambda line: None,
        run_pub=lambda config: side("published", config), run_mv=lambda config: side("medvol", config))
    assert calls == [("published", 0, 20, 8), ("medvol", 0, 20, 8), ("published", 1, 20, 8), ("medvol", 1, 20, 8)]
    row = report["rows"][0]
    assert row["curves"]["published"]["G"] == [(10, 4.5), (20, 14.5)]  # G_fake, averaged as medvol logs
    assert row["curves"]["published"]["G"] == row["curves"]["medvol reference"]["G"]
    for s in ("published", "medvol"):
        assert 0 <= row[s]["mode_coverage"] <= 1 and row[s]["factor_w1_mean"] > 0
        assert row[s]["recall"] == 0  # uniform noise is no phantom
    assert row["published"]["ssim_pairwise_real"] == row["medvol"]["ssim_pairwise_real"]  # one real set
    for name in ("curves_crfgan32_s0.png", "curves_crfgan32_s1.png", "montage_crfgan32_s0.png",
                 "learn_vs_published.md", "learn_vs_published.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    text = (tmp_path / "out" / "learn_vs_published.md").read_text(encoding="utf-8")
    assert text.count("| CRF-GAN 32³ | published |") == 2 and text.count("| CRF-GAN 32³ | medvol |") == 2


def test_learn_refusals(tmp_path, vs_published, tiny_cache):
    from published_standin import write_learning_standin

    repo = write_learning_standin(tmp_path / "clone", size=32)
    base = ["--learn", "--published", str(repo), "--out", str(tmp_path / "o"), "--size", "32"]
    assert vs_published.main([*base, "--cache", str(tmp_path)]) == 2  # no manifest there
    assert vs_published.main([*base, "--cache", str(tiny_cache), "--base-width", "4"]) == 2  # GroupNorm(8)
    assert vs_published.main([*base, "--cache", str(tiny_cache), "--n", "5"]) == 2
    assert vs_published.main([*base, "--cache", str(tiny_cache), "--seeds", "0,0"]) == 2
    with pytest.raises(vs_published.MedvolError, match="has models for sizes 32"):
        vs_published.learn_compare([repo], cache=tiny_cache, sizes=[64], batch=2, iterations=1, width=8,
                                   latent=4, lr=(1, 1, 1), seeds=[0], n=6, eval_seed=1, log_every=1,
                                   timeout=None, out=tmp_path / "o2", command="t")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_a_diverged_side_is_reported_with_its_curves_not_scored(tmp_path, vs_published, tiny_cache):
    """Samples with NaN (the published 64^3 CRF has no epsilon in its cosine) end that side's row,
    not the comparison: the other side is scored, both curves drawn."""
    from published_standin import write_learning_standin

    repo = write_learning_standin(tmp_path / "clone", size=32)

    def side(name, config):
        path = Path(config["out"]) / "samples.npy"
        values = np.random.default_rng(0).uniform(-1, 1, (config["n"], 1, 32, 32, 32)).astype(np.float32)
        if name == "published":
            values[:] = np.nan
        np.save(path, values)
        return {"status": "ok", "cpu_s": 1.0, "samples": str(path), "first_nonfinite": {"CRF": 7},
                "curves": {"D": [(i, 1.0) for i in range(10)]} if name == "published" else {"D": [(10, 1.0)]}}

    report = vs_published.learn_compare(
        [repo], cache=tiny_cache, sizes=[32], batch=2, iterations=10, width=8, latent=16, lr=(1e-4, 4e-4, 1e-4),
        seeds=[0], n=6, eval_seed=1000, log_every=10, timeout=None, out=tmp_path / "out", command="test",
        log=lambda line: None, run_pub=lambda c: side("published", c), run_mv=lambda c: side("medvol", c))
    row = report["rows"][0]
    assert row["published"]["status"] == "not finite" and "{'CRF': 7}" in row["published"]["error"]
    assert row["medvol"]["status"] == "ok" and row["medvol"]["recall"] == 0
    assert set(row["curves"]) == {"published", "medvol reference"}
    text = (tmp_path / "out" / "learn_vs_published.md").read_text(encoding="utf-8")
    assert "| CRF-GAN 32³ | published | 0 | 10 | 1.0 | not finite: " in text
    assert (tmp_path / "out" / "curves_crfgan32_s0.png").exists() and (tmp_path / "out" / "montage_crfgan32_s0.png").exists()
