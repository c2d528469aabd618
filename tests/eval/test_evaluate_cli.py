"""``medvol evaluate`` end to end on phantoms, with a random-init TorchScript stand-in for the
Inception network (so no weights are needed) and with precomputed features."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medvol.cli import main


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    """Volumes of uniform noise over the CT window, as NIfTI files."""
    from medvol.data.io import Volume, write_volume

    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(3)
    for i in range(6):
        write_volume(Volume(array=rng.uniform(-1000, 500, (32, 32, 32)).astype(np.float32),
                            spacing=(1.0, 1.0, 1.0)), folder / f"noise_{i}.nii.gz")
    return folder


def run_eval(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_phantoms_score_closer_than_noise(tmp_path, weights, noise_dir, capsys):
    common = ["--size", 32, "--n", 6, "--features", f"inception2.5d:{weights}",
              "--slices-per-volume", 3, "--bootstrap", 5]
    code, out, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1",
                              "--out", tmp_path / "pp", *common)
    assert code == 0, err
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", noise_dir,
                            "--out", tmp_path / "pn", *common)
    assert code == 0, err
    pp = json.loads((tmp_path / "pp" / "scores.json").read_text(encoding="utf-8"))
    pn = json.loads((tmp_path / "pn" / "scores.json").read_text(encoding="utf-8"))
    s_pp, s_pn = pp["extractors"][0]["scores"], pn["extractors"][0]["scores"]
    assert s_pp["mean/fid"]["value"] < s_pn["mean/fid"]["value"]
    assert s_pp["mean/mmd"]["value"] < s_pn["mean/mmd"]["value"]
    assert s_pp["mean/kid"]["value"] < s_pn["mean/kid"]["value"]
    assert s_pp["mean/precision"]["value"] > s_pn["mean/precision"]["value"]
    assert s_pp["mean/coverage"]["value"] > s_pn["mean/coverage"]["value"]
    # provenance
    info = pp["extractors"][0]["info"]
    assert info["weights"] == str(weights) and len(info["weights_sha256"]) == 64
    assert pp["real"]["n_volumes"] == pp["fake"]["n_volumes"] == 6
    assert pp["fake"]["seed"] == 1 and pp["seed"] == 0
    assert pp["extractors"][0]["rows"]["axial"] == [18, 18]
    assert pn["fake"]["kind"] == "volumes" and pn["fake"]["preprocessing"]["size"] == 32
    assert "ci_low" in s_pp["axial/fid"] and pp["medvol_version"]
    assert "| mean/fid |" in (tmp_path / "pp" / "scores.md").read_text(encoding="utf-8")


def test_evaluate_refuses_bad_input_in_one_line(tmp_path, weights, capsys):
    out = tmp_path / "e"
    base = ["--real", "phantom:0", "--fake", "phantom:1", "--size", 32, "--n", 3,
            "--slices-per-volume", 1, "--bootstrap", 0, "--metrics", "fid"]
    code, _, err = run_eval(capsys, *base, "--features", f"inception2.5d:{tmp_path / 'no.pt'}",
                            "--out", out)
    assert code == 2 and "no.pt" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_eval(capsys, *base[:-1], "fidd", "--features", f"inception2.5d:{weights}",
                            "--out", out)
    assert code == 2 and "unknown metric 'fidd'" in err
    code, _, err = run_eval(capsys, *base, "--features", f"inception2.5d:{weights}", "--out", out)
    assert code == 0, err
    before = (out / "scores.json").read_bytes()
    code, _, err = run_eval(capsys, *base, "--features", f"inception2.5d:{weights}", "--out", out)
    assert code == 2 and "--overwrite" in err
    assert (out / "scores.json").read_bytes() == before
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", tmp_path / "nothing",
                            "--size", 32, "--out", tmp_path / "x")
    assert code == 2 and "nothing" in err


def test_precomputed_features(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((200, 8)))
    np.save(tmp_path / "b.npy", rng.standard_normal((200, 8)) + 0.5)
    code, out, err = run_eval(capsys, "--real", tmp_path / "a.npy", "--fake", tmp_path / "b.npy",
                              "--out", tmp_path / "o", "--bootstrap", 10)
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "scores.json").read_text(encoding="utf-8"))
    fid = rep["extractors"][0]["scores"]["features/fid"]
    from medvol.eval import frechet_distance

    assert fid["value"] == pytest.approx(
        frechet_distance(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")))
    assert fid["interval"] == "basic" and fid["ci_low"] <= fid["bias_corrected"] <= fid["ci_high"]
    assert rep["extractors"][0]["scores"]["features/mmd"]["interval"] == "percentile"
    assert "bias-corrected value" in (tmp_path / "o" / "scores.md").read_text(encoding="utf-8")
    assert re.search(r"^bootstrap precomputed: 10 round in \d+\.\d s$", err, re.M), err
    np.save(tmp_path / "c.npy", np.zeros((5, 3)))
    code, _, err = run_eval(capsys, "--real", tmp_path / "a.npy", "--fake", tmp_path / "c.npy",
                            "--out", tmp_path / "o2")
    assert code == 2 and "different dimensions" in err


def test_memorization_and_diversity_on_a_phantom_cache(tmp_path, weights, capsys):
    """A 'generated' set made of exact copies of two training volumes plus new phantoms: the
    copies are flagged and named; MS-SSIM diversity is reported for both sets."""
    import shutil

    assert main(["data", "phantom", "--n", "12", "--size", "32", "--out", str(tmp_path / "src"),
                 "--seed", "0"]) == 0
    assert main(["preprocess", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "cache"),
                 "--size", "32", "--val-fraction", "0.25", "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    train = [v for v in manifest["volumes"] if v["split"] == "train"]
    assert len(train) >= 6
    fake_src = tmp_path / "fake_src"
    fake_src.mkdir()
    copied = [Path(train[i]["source"]) for i in (0, 3)]
    for p in copied:
        shutil.copy(p, fake_src / ("copy_" + p.name))
    assert main(["data", "phantom", "--n", "4", "--size", "32", "--out", str(tmp_path / "new"),
                 "--seed", "99"]) == 0
    for p in sorted((tmp_path / "new").glob("*.nii.gz")):
        shutil.copy(p, fake_src / ("new_" + p.name))
    capsys.readouterr()
    code, out, err = run_eval(capsys, "--real", tmp_path / "cache", "--fake", fake_src, "--size", 32,
                              "--features", f"inception2.5d:{weights}", "--slices-per-volume", 3,
                              "--metrics", "fid,msssim,memorization", "--bootstrap", 0,
                              "--out", tmp_path / "ev")
    assert code == 0, err
    rep = json.loads((tmp_path / "ev" / "scores.json").read_text(encoding="utf-8"))
    records = json.loads((tmp_path / "ev" / "memorization.json").read_text(encoding="utf-8"))
    flagged = {r["file"]: r["nearest_train"] for r in records if r["likely_copy"]}
    expected = {"copy_" + p.name.removesuffix(".nii.gz"): train[i]["name"]
                for p, i in zip(copied, (0, 3))}
    assert flagged == expected
    for r in records:
        if r["file"].startswith("copy_"):
            assert r["distance"] == pytest.approx(0.0, abs=1e-6) and not r["authentic"]
    assert rep["memorization"]["train"]["n_volumes"] == len(train)
    d = rep["diversity"]
    assert 0 < d["real"]["mean"] < 1 and 0 < d["fake"]["mean"] < 1
    assert "memorisation" in out and "diversity" in out
    # stderr is not a terminal here: one plain line per phase
    for phase in ("features inception2.5d real: 3 vol", "features inception2.5d fake: 6 vol",
                  f"features inception2.5d train: {len(train)} vol", "diversity real: 3 pair",
                  "diversity fake: 15 pair", "memorisation montage fake: ", "memorisation montage train: "):
        assert re.search(rf"^{re.escape(phase)}.* in \d+\.\d s$", err, re.M), (phase, err)
    assert rep["figures"] == ["memorization_montage.png", "features_pca.png"]
    assert (tmp_path / "ev" / "memorization_montage.png").stat().st_size > 1000
    # the montage: generated (top) over training (bottom), 6 pairs, each caption right above its image
    from PIL import Image

    from medvol import preview as P

    montage = np.asarray(Image.open(tmp_path / "ev" / "memorization_montage.png"))
    line_h = int(sum(P._font().getbbox("Ag")[1::2])) + 2
    band, title = P.CAPTION_LINES * line_h + 4, line_h + P.GAP
    assert montage.shape == (title + 2 * (band + 128 + P.ROW_GAP) + P.GAP, 6 * 128 + 7 * P.GAP)
    for row in range(2):
        top = title + P.GAP + row * (band + 128 + P.ROW_GAP)
        for col in range(6):
            left = P.GAP + col * (128 + P.GAP)
            assert (montage[top:top + band, left:left + 128] < 128).sum() > 20  # its caption
            assert montage[top + band:top + band + 128, left:left + 128].std() > 10  # its slice


def test_pca_projection_matches_sklearn():
    from sklearn.decomposition import PCA

    from medvol.eval.evaluate import pca_2d

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((30, 6)) * [5, 3, 1, 1, 1, 1], rng.standard_normal((20, 6))
    pa, pb, ratio = pca_2d(a, b)
    ref = PCA(2).fit(np.concatenate([a, b]))
    got = np.abs(np.concatenate([pa, pb]))
    np.testing.assert_allclose(got, np.abs(ref.transform(np.concatenate([a, b]))), atol=1e-9)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-9)


def test_run_curve_and_compare(tmp_path, weights, capsys):
    run = tmp_path / "run"
    code = main(["train", "--config", "configs/demo.yaml", "--out", str(run),
                 "--model.size", "32", "--model.base_width", "2", "--model.latent_dim", "8",
                 "--data.phantom_n", "4", "--data.workers", "0", "--train.iterations", "4",
                 "--train.mode", "reference", "--train.device", "cpu", "--train.amp", "none",
                 "--train.ckpt_every", "2", "--train.keep_checkpoints", "5",
                 "--train.sample_every", "1000", "--train.progress", "false"])
    assert code == 0, capsys.readouterr().err
    common = ["--real", "phantom:0", "--size", 32, "--n", 3, "--features", f"inception2.5d:{weights}",
              "--slices-per-volume", 2, "--metrics", "fid,kid", "--bootstrap", 0]
    code, out, err = run_eval(capsys, *common, "--run", run, "--every", 2, "--out", tmp_path / "curve")
    assert code == 0, err
    lines = (tmp_path / "curve" / "curve.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("iteration,checkpoint,axial/fid")
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "4"]
    best = json.loads((tmp_path / "curve" / "best.json").read_text(encoding="utf-8"))
    fids = {int(line.split(",")[0]): float(line.split(",")[lines[0].split(",").index("mean/fid")])
            for line in lines[1:]}
    assert best["best_score"] == "mean/fid" and best["best_iteration"] == min(fids, key=fids.get)
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 1000
    a = json.loads((tmp_path / "curve" / "iter_0000002" / "scores.json").read_text(encoding="utf-8"))
    assert a["fake"]["kind"] == "checkpoint" and len(a["fake"]["checkpoint_sha256"]) == 64
    # compare: alike evaluations side by side; a different N is refused
    code = main(["compare", str(tmp_path / "curve" / "iter_0000002"), str(tmp_path / "curve" / "iter_0000004")])
    table = capsys.readouterr().out
    assert code == 0 and "| mean/fid |" in table and "lower |" in table
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1", "--size", 32, "--n", 4,
                            "--features", f"inception2.5d:{weights}", "--slices-per-volume", 2,
                            "--metrics", "fid,kid", "--bootstrap", 0, "--out", tmp_path / "n4")
    assert code == 0, err
    assert main(["compare", str(tmp_path / "curve" / "iter_0000002"), str(tmp_path / "n4")]) == 2
    assert "n_real" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_applied_and_recorded(tmp_path, capsys, threads):
    before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((20, 4)))
    np.save(tmp_path / "b.npy", rng.standard_normal((20, 4)))
    try:
        code, _, err = run_eval(capsys, "--real", tmp_path / "a.npy", "--fake", tmp_path / "b.npy",
                                "--out", tmp_path / "o", "--bootstrap", 0, "--threads", threads)
        assert code == 0, err
        assert torch.get_num_threads() == threads
        assert json.loads((tmp_path / "o" / "scores.json").read_text(encoding="utf-8"))["threads"] == threads
        code, _, err = run_eval(capsys, "--real", tmp_path / "a.npy", "--fake", tmp_path / "b.npy",
                                "--out", tmp_path / "p", "--threads", 0)
        assert code == 2 and "--threads 0" in err and not (tmp_path / "p").exists()
    finally:
        torch.set_num_threads(before)
