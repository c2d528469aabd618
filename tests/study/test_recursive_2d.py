"""``medvol study recursive`` with a 2D model: slices, seeds x real fractions, t intervals, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medvol.errors import MedvolError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "studies" / "recursive_dcgan64.yaml"
# 8 phantoms at 32^3 (6 train / 2 val volumes), 4 iterations of batch 4 per generation, 64 generated
# slices (two stacks of 32) per generation, 16 slices scored.
TINY = ["train.iterations=4", "data.phantom_n=8", "train.ckpt_every=2", "train.log_every=2", "model.size=32",
        "data.batch=4", "train.sample_every=4"]
ARGS = dict(generations=2, real_fraction=[0.0, 0.5], seed=[0, 1], n_synthetic=64, n_score=16, device="cpu",
            overrides=TINY)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ the t interval

def test_t_interval_matches_a_hand_computed_case_and_scipy():
    from scipy import stats

    from medvol.study.recursive.aggregate import t_interval

    # 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302652729749464 -> 2 -+ 4.30265 / sqrt(3).
    got = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3.0)
    assert (got["mean"], got["sd"], got["n"]) == (2.0, 1.0, 3)
    assert got["low"] == pytest.approx(2.0 - half, rel=1e-12) and got["high"] == pytest.approx(2.0 + half, rel=1e-12)
    rng = np.random.default_rng(7)
    for n, level in ((2, 0.95), (5, 0.9), (11, 0.99)):
        x = rng.normal(3.0, 2.0, n)
        low, high = stats.t.interval(level, n - 1, loc=x.mean(), scale=stats.sem(x))
        got = t_interval(x, level)
        assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-10)


def test_t_interval_leaves_out_nan_and_says_when_there_is_no_interval():
    from medvol.study.recursive.aggregate import t_interval

    assert t_interval([1.0, float("nan"), 3.0])["n"] == 2
    one = t_interval([4.0, float("nan")])
    assert one["mean"] == 4.0 and one["n"] == 1 and math.isnan(one["low"]) and math.isnan(one["high"])
    assert t_interval([])["n"] == 0 and math.isnan(t_interval([])["mean"])
    with pytest.raises(MedvolError, match="level 1.5"):
        t_interval([1.0, 2.0], 1.5)


def test_aggregate_takes_each_cell_over_its_seeds():
    from medvol.study.recursive.aggregate import aggregate, t_interval

    def record(seed, k, value):
        return {"seed": seed, "generation": k, "scores": {"recall": value}}

    runs = [{"seed": s, "real_fraction": f, "generations": [record(s, 0, s), record(s, 1, 10 * s + 100 * f)]}
            for s in (0, 1, 2) for f in (0.0, 0.25)]
    rows = aggregate(runs, ["recall"])
    assert [(r["real_fraction"], r["generation"]) for r in rows] == [(0.0, 0), (0.0, 1), (0.25, 0), (0.25, 1)]
    assert rows[3]["recall"] == t_interval([25.0, 35.0, 45.0]) and rows[3]["seeds"] == [0, 1, 2]
    assert rows[0]["recall"] == rows[2]["recall"] == t_interval([0.0, 1.0, 2.0])


# ------------------------------------------------------------------------------ slice scores
# (the slice factors themselves: tests/data/test_phantom_slice_factors.py)

def test_mode_scores_and_factor_distances_have_their_closed_forms():
    from medvol.study.recursive.slices import factor_distances, mode_scores

    got = mode_scores(["a"] * 6 + ["b"] * 2, ["a"] * 3 + ["c"] * 1)
    # real a .75 b .25; fake a .75 c .25: TV = (0 + .25 + .25) / 2; coverage: a of {a, b}.
    assert got["mode_tv"] == pytest.approx(0.25) and got["mode_coverage"] == 0.5
    real = [{"body_width_mm": float(v), "body_depth_mm": 1.0, "lung_fraction": float(v),
             "lung_left_share": float("nan")} for v in range(10)]
    fake = [dict(r, body_width_mm=r["body_width_mm"] + 3.0) for r in real]
    d = factor_distances(real, fake)
    assert d["w1_body_width_mm"] == pytest.approx(3.0 / np.std(np.arange(10.0)))
    assert d["w1_lung_fraction"] == 0.0 and math.isnan(d["w1_body_depth_mm"]) and math.isnan(d["w1_lung_left_share"])
    assert d["factors_missing"] == 2 and d["factor_w1"] == pytest.approx(d["w1_body_width_mm"] / 2)


# ------------------------------------------------------------------------------ the study, end to end

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two seeds x real fractions 0 and 0.5, two generations; then the same command again."""
    from medvol.study.recursive import run_recursive_study

    out = tmp_path_factory.mktemp("recursive2d") / "study"
    first = run_recursive_study(CONFIG, out, **ARGS)
    before = _mtimes(out)
    again = run_recursive_study(CONFIG, out, **ARGS)
    return {"out": out, "first": first, "again": again, "before": before}


def test_every_seed_and_fraction_runs_with_generation_0_shared(study):
    out, summary = study["out"], study["first"]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("seed_*/**/gen_*")) == [
        "seed_000/gen_000", "seed_000/real_000/gen_001", "seed_000/real_050/gen_001",
        "seed_001/gen_000", "seed_001/real_000/gen_001", "seed_001/real_050/gen_001"]
    assert [(r["seed"], r["real_fraction"], [g["generation"] for g in r["generations"]]) for r in summary["runs"]] == [
        (0, 0.0, [0, 1]), (0, 0.5, [0, 1]), (1, 0.0, [0, 1]), (1, 0.5, [0, 1])]
    for run in summary["runs"]:
        g0 = run["generations"][0]
        assert g0["checkpoint"].startswith(str(out / f"seed_{run['seed']:03d}" / "gen_000"))
        assert g0["training_data"]["allow_synthetic"] is False
    for name in ("summary.json", "summary.md", "scores.png", "study.json"):
        assert (out / name).is_file()
    assert (out / "seed_000" / "real_050" / "gen_001" / "montage.png").read_bytes()[:4] == b"\x89PNG"


def test_generation_one_trains_on_the_generated_slices_and_the_kept_real_volumes(study):
    from medvol.data.datasets import CachedVolumeDataset, SliceDataset, take_slice
    from medvol.data.io import read_volume

    out = study["out"]
    here = out / "seed_001" / "real_050" / "gen_001"
    manifest = json.loads((here / "cache" / "manifest.json").read_text(encoding="utf-8"))
    synthetic = [v for v in manifest["volumes"] if v["synthetic"] is True]
    real = [v for v in manifest["volumes"] if v["synthetic"] is False]
    # 64 generated slices = two stacks of 32; real fraction 0.5 of 6 real training volumes: 3.
    assert len(synthetic) == 2 and len(real) == 3
    assert {Path(v["source"]).parent for v in synthetic} == {(out / "seed_001" / "gen_000" / "samples").resolve()}
    record = json.loads((here / "scores.json").read_text(encoding="utf-8"))
    assert record["training_data"]["real_kept"] == [f"{v['name']}.nii.gz" for v in real]
    assert record["training_data"]["synthetic_slices"] == 64
    zero = json.loads((out / "seed_001" / "real_000" / "gen_001" / "cache" / "manifest.json").read_text("utf-8"))
    assert [v["synthetic"] for v in zero["volumes"]] == [True, True]
    # The slices generation 1 trains on are the generated slices, unchanged by the cache.
    sample = np.asarray(read_volume(out / "seed_001" / "gen_000" / "samples" / "sample_0001.nii.gz").array)
    slices = SliceDataset(CachedVolumeDataset(here / "cache", "train", allow_synthetic=True), plane="axial", size=32)
    k = [v["name"] for v in manifest["volumes"]].index("sample_0001")
    from medvol.data.preprocess import to_intensity

    cached = to_intensity(slices[k * 32 + 5]["image"][0].numpy(), (-1024.0, 600.0))
    assert np.abs(cached - np.clip(take_slice(sample, "axial", 5), -1024, 600)).max() < 0.05


def test_the_summary_is_the_t_interval_of_the_seeds_scores(study):
    from medvol.study.recursive.aggregate import t_interval

    summary = study["first"]
    rows = {(r["real_fraction"], r["generation"]): r for r in summary["aggregate"]}
    assert sorted(rows) == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    for key in ("factor_w1", "mode_coverage", "recall", "ssim_pairs"):
        values = [r["generations"][1]["scores"][key] for r in summary["runs"] if r["real_fraction"] == 0.5]
        assert rows[(0.5, 1)][key] == t_interval(values)
    for run in summary["runs"]:
        scores = run["generations"][1]["scores"]
        assert scores["n_generated"] == scores["n_real"] == 16 and 0 <= scores["recall"] <= 1
    md = (study["out"] / "summary.md").read_text(encoding="utf-8")
    assert "| 0.5 | 1 | 2 |" in md and "real vs real (floor)" in md and "Student t" in md


def test_the_same_command_again_redoes_nothing(study):
    # Compared as JSON: a score may be NaN (a factor no sample shows), which equals nothing.
    assert json.dumps(study["again"]["runs"]) == json.dumps(study["first"]["runs"])
    after = _mtimes(study["out"])
    moved = [name for name, t in study["before"].items() if after.get(name) != t and "seed_" in name]
    assert moved == []


def test_another_study_in_the_folder_is_refused_and_overwrite_replaces_only_what_medvol_wrote(study, tmp_path):
    import shutil

    from medvol.outputs import MARKER
    from medvol.study.recursive import run_recursive_study

    out = tmp_path / "copy"
    shutil.copytree(study["out"], out)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(MedvolError, match="other settings.*seeds"):
        run_recursive_study(CONFIG, out, **dict(ARGS, seed=[3], generations=1, real_fraction=[0.0]))
    assert (out / "seed_000" / "gen_000" / "scores.json").is_file()
    summary = run_recursive_study(CONFIG, out, **dict(ARGS, seed=[3], generations=1, real_fraction=[0.0]),
                                  overwrite=True)
    assert [r["seed"] for r in summary["runs"]] == [3]
    assert not (out / "seed_000").exists() and (out / "seed_003" / "gen_000" / "scores.json").is_file()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"  # never medvol's to remove
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    assert marker["identity"]["seeds"] == [3] and "notes.txt" not in marker["files"]
    assert "seed_003/gen_000/scores.json" in marker["files"]


def test_overwrite_keeps_a_user_file_inside_the_study_and_refuses_to_write_there(study, tmp_path):
    import shutil

    from medvol.study.recursive import run_recursive_study

    out = tmp_path / "copy"
    shutil.copytree(study["out"], out)
    (out / "real" / "cache" / "mine.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(MedvolError, match="real: exists and was not made by medvol"):
        run_recursive_study(CONFIG, out, **dict(ARGS, seed=[3], generations=1, real_fraction=[0.0]), overwrite=True)
    assert (out / "real" / "cache" / "mine.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.relative_to(out).as_posix() for p in (out / "real").rglob("*")) == ["real/cache",
                                                                                      "real/cache/mine.txt"]


def test_a_folder_with_a_user_file_is_refused_and_left_as_it_was(tmp_path):
    from medvol.study.recursive import run_recursive_study

    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(MedvolError, match="did not write"):
        run_recursive_study(CONFIG, tmp_path, **ARGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_study_in_use_is_refused(tmp_path):
    from medvol.outputs import owned_output
    from medvol.study.recursive import run_recursive_study

    with owned_output(tmp_path / "busy", "study recursive", {"other": 1}):
        with pytest.raises(MedvolError, match="in use"):
            run_recursive_study(CONFIG, tmp_path / "busy", **ARGS)


# ------------------------------------------------------------------------------ refusals

@pytest.mark.parametrize("change, match", [
    (dict(seed=[0, 0]), "given twice"),
    (dict(seed=[0, -1]), "--seed"),
    (dict(real_fraction=[0.25, 0.251]), "share a percentage"),
    (dict(real_fraction=[0.0, 1.5]), "--real-fraction 1.5"),
    (dict(real_fraction=[]), "at least one"),
    (dict(n_score=5), "--n-score 5"),
    (dict(fid_n=1), "--fid-n 1"),
    (dict(fid_n=17), "--fid-n 17"),
    (dict(n_synthetic=8), "--n-synthetic 8: fewer generated slices than --n-score 16"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, change, match):
    from medvol.study.recursive import run_recursive_study

    with pytest.raises(MedvolError, match=match):
        run_recursive_study(CONFIG, tmp_path / "out", **dict(ARGS, **change))
    if "n_synthetic" not in change:  # that one is known once the real slices are counted
        assert not (tmp_path / "out").exists()


def test_cli_refusals_exit_2_with_one_line(tmp_path, capsys):
    from medvol.cli import main

    spade = Path(__file__).resolve().parents[2] / "configs" / "spade_tiny.yaml"
    for argv, match in ((["--seed", "0,x"], "--seed '0,x'"),
                        (["--real-fraction", "0,,1"], "--real-fraction '0,,1'"),
                        (["--real-fraction", "0,2"], "--real-fraction 2"),
                        (["--config", str(spade)], "draws images from masks"),
                        (["--generations", "0"], "--generations 0")):
        code = main(["study", "recursive", *argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and match in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


@pytest.mark.slow  # the Inception network loads and runs on 16 images: about 30 s on a shared CPU
def test_fid_of_the_slices_is_the_frechet_distance_of_their_inception_features():
    from medvol.eval.features import get_extractor
    from medvol.eval.metrics import frechet_distance
    from medvol.study.recursive.slices import score_slices

    try:
        extractor = get_extractor("inception")
    except MedvolError as error:
        pytest.skip(str(error))
    rng = np.random.default_rng(3)
    real = np.clip(rng.normal(-0.5, 0.3, (8, 32, 32)), -1, 1).astype(np.float32)
    fake = np.clip(rng.normal(-0.2, 0.5, (8, 32, 32)), -1, 1).astype(np.float32)
    got = score_slices(real, fake, spacing=(5.0, 5.0), window=(-1024, 600), seed=0, fid=(extractor, 6))
    feats = [extractor._features(x[:6]) for x in (real, fake)]
    assert got["fid_n"] == 6 and got["fid"] == pytest.approx(frechet_distance(*feats), rel=1e-9)
    assert "fid" not in score_slices(real, fake, spacing=(5.0, 5.0), window=(-1024, 600), seed=0)


def test_the_2d_study_config_trains_the_learned_dcgan():
    """configs/studies/recursive_dcgan64.yaml (the default before the 3D CRF-GAN) is
    configs/learn/dcgan_64.yaml's model and optimiser, on phantom slices."""
    from medvol.config import config_to_dict, load_config

    study, learned = (config_to_dict(load_config(name)) for name in (CONFIG, "learn/dcgan_64"))
    assert study["model"] == learned["model"]
    for key in ("lr", "mode", "amp", "beta1"):
        assert study["train"].get(key) == learned["train"].get(key), key
    for key in ("source", "plane", "skip_blank", "batch", "phantom_seed"):
        assert study["data"][key] == learned["data"][key], key


def test_paired_changes_subtract_each_seeds_own_generation_0():
    from medvol.study.recursive.aggregate import paired_changes, t_interval

    def run(seed, fraction, values):
        return {"seed": seed, "real_fraction": fraction,
                "generations": [{"generation": k, "scores": {"recall": v}} for k, v in enumerate(values)]}

    runs = [run(0, 0.0, [0.5, 0.4, 0.1]), run(1, 0.0, [0.9, 0.7, 0.6]), run(2, 0.0, [0.1, 0.1, 0.0]),
            run(0, 0.25, [0.5, 0.5]), run(1, 0.25, [0.9, 1.0])]
    rows = paired_changes(runs, ["recall"])
    assert [(r["real_fraction"], r["generation"], r["seeds"]) for r in rows] == [
        (0.0, 1, [0, 1, 2]), (0.0, 2, [0, 1, 2]), (0.25, 1, [0, 1])]
    assert rows[1]["recall"] == t_interval([0.1 - 0.5, 0.6 - 0.9, 0.0 - 0.1])
    assert rows[2]["recall"]["mean"] == pytest.approx(0.05)


@pytest.mark.slow  # loads the Inception network twice: about 10 s
def test_a_worker_receives_the_fid_extractor_by_name_and_loads_it_again():
    """--jobs N sends each generation's plan to a worker process; the TorchScript extractor does not
    pickle, so it travels as its name and the worker's copy gives the same features."""
    import pickle

    from medvol.eval.features import get_extractor
    from medvol.study.recursive.generation import Plan
    from medvol.study.recursive.study import _portable, _restored

    try:
        extractor = get_extractor("inception")
    except MedvolError as error:
        pytest.skip(str(error))
    plan = Plan(root=Path("x"), cfg=None, real=None, n_synthetic=8, real_kept=[], seed=0, bootstrap=0, device="cpu",
                dims=2, scoring={"real": np.zeros((2, 8, 8), np.float32), "fid": (extractor, 6)})
    with pytest.raises(Exception):
        pickle.dumps(plan)
    sent = pickle.loads(pickle.dumps(_portable(plan)))
    assert sent.scoring["fid"] == ("inception", 6)
    here = _restored(sent)
    images = np.clip(np.random.default_rng(0).normal(0, 0.5, (3, 32, 32)), -1, 1).astype(np.float32)
    assert here.scoring["fid"][1] == 6
    np.testing.assert_allclose(here.scoring["fid"][0]._features(images), extractor._features(images), rtol=1e-5)
    assert _portable(Plan(root=Path("x"), cfg=None, real=None, n_synthetic=8, real_kept=[], seed=0, bootstrap=0,
                          device="cpu", dims=3)).scoring is None
