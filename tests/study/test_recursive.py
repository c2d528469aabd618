"""``medvol study recursive`` with a 3D model end to end on tiny settings: generations, mixing, resume,
refusals (the 2D path, seeds x fractions and intervals: test_recursive_2d.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medvol.errors import MedvolError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "recursive_demo.yaml"
# 8 phantoms (6 train / 2 val), 4 iterations per generation, 3 generated volumes per generation.
TINY = ["train.iterations=4", "data.phantom_n=8", "train.ckpt_every=2", "train.log_every=2"]
ARGS = dict(real_fraction=0.5, n_synthetic=3, seed=1, feature_iters=3, bootstrap=0, device="cpu", overrides=TINY)


G0 = Path("seed_001") / "gen_000"
G1 = Path("seed_001") / "real_050" / "gen_001"


def _gens(summary):
    return summary["runs"][0]["generations"]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# The end-to-end study (three calls, two generations) takes about 35 CPU seconds: slow. Fast siblings
# below guard its parts: the generation cache, a finished generation left alone, the report.
slow_study = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One generation, then the same command with two: the second call must continue."""
    from medvol.study.recursive import run_recursive_study

    out = tmp_path_factory.mktemp("recursive") / "study"
    first = run_recursive_study(CONFIG, out, generations=1, **ARGS)
    gen0 = _mtimes(out / G0)
    second = run_recursive_study(CONFIG, out, generations=2, **ARGS)
    snapshot = {"gen1_scores": json.loads((out / G1 / "scores.json").read_text(encoding="utf-8"))}
    # An interrupted generation: everything but its scores.json is there.
    (out / G1 / "scores.json").unlink()
    snapshot.update(checkpoints=_mtimes(out / G1 / "run" / "checkpoints"), gen0=_mtimes(out / G0))
    third = run_recursive_study(CONFIG, out, generations=2, **ARGS)
    return {"out": out, "first": first, "second": second, "third": third, "gen0_before": gen0,
            "before_third": snapshot}


@slow_study
def test_every_generation_is_scored_and_plotted(study):
    out, summary = study["out"], study["second"]
    assert [g["generation"] for g in _gens(summary)] == [0, 1]
    for g in _gens(summary):
        scores = g["scores"]
        for key in ("fid", "precision", "recall", "coverage", "msssim", "authenticity", "copy_fraction", "hu_w1"):
            assert isinstance(scores[key], float), key
        assert scores["n_generated"] == 3 and scores["n_real_val"] == 2
        here = out / (G0 if g["generation"] == 0 else G1)
        assert json.loads((here / "scores.json").read_text(encoding="utf-8"))["scores"] == scores
        assert (here / "montage.png").stat().st_size > 1000
        assert len(list((here / "samples").glob("sample_*.nii.gz"))) == 3
        assert (here / "eval" / "scores.json").is_file()
    floor = summary["floor"]
    assert floor["fid"] >= 0 and 0 <= floor["authenticity"] <= 1 and floor["hu_w1"] >= 0
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "| 0.5 | 0 | 1 |" in md and "| 0.5 | 1 | 1 |" in md and "real vs real (floor)" in md
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["runs"] == study["third"]["runs"]


@slow_study
def test_resume_continues_at_the_second_generation_without_redoing_the_first(study):
    assert [g["generation"] for g in _gens(study["first"])] == [0]
    assert _mtimes(study["out"] / G0) == study["gen0_before"]
    assert _gens(study["second"])[0] == _gens(study["first"])[0]


@slow_study
def test_generation_one_trains_on_marked_synthetic_and_the_kept_real_volumes(study):
    out, summary = study["out"], study["second"]
    manifest = json.loads((out / G1 / "cache" / "manifest.json").read_text(encoding="utf-8"))
    synthetic = [v for v in manifest["volumes"] if v["synthetic"] is True]
    real = [v for v in manifest["volumes"] if v["synthetic"] is False]
    # --real-fraction 0.5 of 6 real training volumes: 3 real beside the 3 generated ones, all in train.
    assert len(synthetic) == 3 and len(real) == 3
    assert all(v["split"] == "train" for v in manifest["volumes"])
    g0_samples = _gens(summary)[0]["seeds"]["samples"]
    assert all(v["provenance"]["seed"] == g0_samples and v["provenance"]["synthetic"] is True for v in synthetic)
    assert all("provenance" not in v or not v["provenance"] for v in real)
    assert sorted(v["name"] for v in real) == sorted(Path(p).name.split(".")[0]
                                                   for p in _gens(summary)[1]["training_data"]["real_kept"])
    gen_dir = out / G0 / "samples"
    assert {Path(v["source"]).parent for v in synthetic} == {gen_dir.resolve()}
    g1 = _gens(summary)[1]["training_data"]
    assert (g1["allow_synthetic"], g1["synthetic"], g1["real"]) == (True, 3, 3)
    g0 = _gens(summary)[0]["training_data"]
    assert (g0["allow_synthetic"], g0["synthetic"], g0["real"]) == (False, 0, 6)
    run_cfg = (out / G1 / "run" / "config.yaml").read_text(encoding="utf-8")
    assert "allow_synthetic: true" in run_cfg
    assert "allow_synthetic: false" in (out / G0 / "run" / "config.yaml").read_text(encoding="utf-8")


@slow_study
def test_generations_differ_in_seed_by_one_rule(study):
    from medvol.study.recursive.generation import generation_seeds

    g = _gens(study["second"])
    assert g[0]["seeds"] == generation_seeds(1, 0) and g[1]["seeds"] == generation_seeds(1, 1)
    assert g[0]["seeds"] != g[1]["seeds"] and generation_seeds(1, 1) == generation_seeds(1, 1)
    assert g[0]["iterations"] == g[1]["iterations"] == 4


@slow_study
def test_an_interrupted_generation_is_scored_again_without_retraining(study):
    out, before = study["out"], study["before_third"]
    assert (out / G1 / "scores.json").is_file()
    assert _mtimes(out / G1 / "run" / "checkpoints") == before["checkpoints"]
    assert _mtimes(out / G0) == before["gen0"]
    again, first = _gens(study["third"])[1]["scores"], before["gen1_scores"]["scores"]
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert again["hu_w1"] == pytest.approx(first["hu_w1"], rel=1e-9)


@slow_study
def test_a_folder_of_another_study_is_refused(study):
    from medvol.study.recursive import run_recursive_study

    with pytest.raises(MedvolError, match="other settings.*seeds"):
        run_recursive_study(CONFIG, study["out"], generations=2, **dict(ARGS, seed=2))
    with pytest.raises(MedvolError, match="train.iterations"):
        run_recursive_study(CONFIG, study["out"], generations=2, **dict(ARGS, overrides=[*TINY, "train.iterations=5"]))


def test_a_study_in_use_is_refused(tmp_path):
    from medvol.outputs import owned_output
    from medvol.study.recursive import run_recursive_study

    with owned_output(tmp_path / "busy", "study recursive", {"another": "study"}):
        with pytest.raises(MedvolError, match="in use by another medvol study recursive"):
            run_recursive_study(CONFIG, tmp_path / "busy", generations=1, **ARGS)


def test_a_folder_with_other_files_is_refused(tmp_path):
    from medvol.study.recursive import run_recursive_study

    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(MedvolError, match="holds files medvol did not write"):
        run_recursive_study(CONFIG, tmp_path, generations=1, **ARGS)


@pytest.mark.parametrize("change, match", [
    (dict(generations=0), "--generations 0"),
    (dict(generations=2.5), "--generations 2.5"),
    (dict(real_fraction=1.5), "--real-fraction 1.5"),
    (dict(real_fraction=-0.1), "--real-fraction -0.1"),
    (dict(n_synthetic=1), "--n-synthetic 1"),
    (dict(seed=-1), "--seed -1"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, change, match):
    from medvol.study.recursive import run_recursive_study

    kwargs = dict(ARGS, generations=1)
    kwargs.update(change)
    with pytest.raises(MedvolError, match=match):
        run_recursive_study(CONFIG, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    from medvol.cli import main

    for argv, match in ((["--config", str(tmp_path / "nope.yaml"), "--generations", "2"], "does not exist"),
                        (["--config", str(CONFIG), "--generations", "0"], "--generations 0"),
                        (["--config", str(CONFIG), "--generations", "2", "--real-fraction", "2"], "--real-fraction 2")):
        code = main(["study", "recursive", *argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and match in err and len(err.splitlines()) == 1, err


def test_a_mask_conditional_2d_model_is_refused(tmp_path):
    from medvol.study.recursive import run_recursive_study

    cfg = Path(__file__).resolve().parents[2] / "configs" / "spade_tiny.yaml"
    with pytest.raises(MedvolError, match="draws images from masks"):
        run_recursive_study(cfg, tmp_path / "o", generations=1, **dict(ARGS, overrides=[]))


def test_a_generation_cache_holds_the_synthetic_and_real_volumes_all_in_train(tmp_path):
    """Without training: generated-looking files (marked) and real phantoms into one cache."""
    import numpy as np

    from medvol.data.io import read_volume
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams
    from medvol.data.provenance import write_synthetic
    from medvol.study.recursive.generation import build_generation_cache

    real = write_phantoms(3, 32, tmp_path / "real", seed=4)
    fake = []
    for i, path in enumerate(write_phantoms(5, 32, tmp_path / "made", seed=8)):
        volume = read_volume(path)
        volume.array = np.asarray(volume.array, dtype=np.float32)
        fake.append(tmp_path / "gen" / f"sample_{i:04d}.nii.gz")
        write_synthetic(volume, fake[-1], {"model": "test", "seed": i})
    counts = build_generation_cache(tmp_path / "cache", fake, real, PreprocessParams(size=32))
    assert counts == {"synthetic": 5, "real": 3}
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert [v["split"] for v in manifest["volumes"]] == ["train"] * 8
    marked = sorted(v["name"] for v in manifest["volumes"] if v["synthetic"] is True)
    assert marked == [f"sample_{i:04d}" for i in range(5)]


def test_a_finished_generation_is_read_back_not_redone(tmp_path):
    from medvol.study.recursive.generation import Plan, run_generation

    record = {"generation": 1, "scores": {"fid": 1.0}, "seconds": {"total": 2.0}}
    here = tmp_path / "seed_000" / "real_000" / "gen_001"
    here.mkdir(parents=True)
    (here / "scores.json").write_text(json.dumps(record))
    # Nothing else exists: any step it tried (cache, training, scoring) would fail.
    plan = Plan(root=tmp_path, cfg=None, real=None, n_synthetic=2, real_kept=[], seed=0, bootstrap=0, device="cpu")
    assert run_generation(plan, 1) == record
    (here / "scores.json").write_text(json.dumps(dict(record, generation=2)))
    # A scores.json of another generation does not count as done: the generation starts, and
    # stops at once, generation 0 having left no samples here.
    with pytest.raises(MedvolError, match="gen_000/samples: 0 volumes, expected 2"):
        run_generation(plan, 1)


def test_the_summary_table_and_plot_show_every_generation_and_the_floor(tmp_path):
    from medvol.study.recursive.aggregate import aggregate, t_interval
    from medvol.study.recursive.report import plot_series, scores_plot, summary_markdown
    from medvol.study.recursive.scoring import SCORES

    def scores(base):
        return {key: base + i / 10 for i, key in enumerate(SCORES)}

    def run(seed, fraction):
        return {"seed": seed, "real_fraction": fraction,
                "generations": [{"generation": k, "seed": seed, "real_fraction": 0.0 if k == 0 else fraction,
                                 "scores": scores(float(k) + seed + (fraction if k else 0)),
                                 "seconds": {"total": 3.0}} for k in range(3)]}

    runs = [run(s, f) for s in (0, 1) for f in (0.0, 0.5)]
    summary = {"study": {"config_path": "c.yaml", "model": "crfgan@32", "dims": 3, "iterations": 4,
                         "real_cache": "r", "n_real_train": 6, "n_real_val": 2, "n_synthetic": 3,
                         "real_fractions": [0.0, 0.5], "seeds": [0, 1], "bootstrap": 0, "domain_features": "d.pt",
                         "interval": "95 % Student t interval of the mean over the seeds"},
               "floor": scores(100.0), "wall_seconds": 9.0, "runs": runs,
               "aggregate": aggregate(runs, list(SCORES))}
    md = summary_markdown(summary)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[:2] for r in rows[1:7]] == [["| 0", "0"], ["| 0", "1"], ["| 0", "2"], ["| 0.5", "0"],
                                                     ["| 0.5", "1"], ["| 0.5", "2"]]
    # generation 1, fraction 0.5, FID: seeds give 1.5 and 2.5 -> mean 2 and its t interval.
    fid = t_interval([1.5, 2.5])
    assert rows[5].split(" | ")[3] == f"{fid['mean']:.3g} [{fid['low']:.3g}, {fid['high']:.3g}]"
    assert rows[7].startswith("| real vs real (floor) |") and " 100 |" in rows[7]
    series = plot_series(summary)
    assert list(series) == list(SCORES)
    for i, key in enumerate(SCORES):
        line = series[key]["fractions"][0.5]
        assert line["generations"] == [0, 1, 2]
        assert line["mean"] == pytest.approx([0.5 + i / 10, 2.0 + i / 10, 3.0 + i / 10])
        assert series[key]["floor"] == pytest.approx(100 + i / 10)
        expected = [(k, k + s + (0.5 if k else 0) + i / 10) for s in (0, 1) for k in range(3)]
        assert sorted(line["seeds"]) == sorted(expected)
    path = scores_plot(tmp_path / "scores.png", summary)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # about 12 CPU seconds: real data, floor scores, then two training steps
def test_an_interrupted_study_advises_what_continues_it(tmp_path, monkeypatch, capfd):
    """Issue 22: Ctrl-C during a generation's training names the way on that the study has (run it
    again), not `--resume auto`, which `medvol study recursive` does not accept."""
    import signal

    from medvol.cli import main
    from medvol.train import trainer

    real_build = trainer.build_system

    def build_interrupting(cfg):
        system = real_build(cfg)
        step = system.train_step

        def interrupted(real, optimizers, iteration, **kwargs):
            losses = step(real, optimizers, iteration, **kwargs)
            if iteration == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return losses

        system.train_step = interrupted
        return system

    monkeypatch.setattr(trainer, "build_system", build_interrupting)
    argv = ["study", "recursive", "--config", str(CONFIG), "--generations", "1", "--n-synthetic", "3",
            "--feature-iters", "3", "--bootstrap", "0", "--device", "cpu", "--out", str(tmp_path / "s"),
            *[f"--set={o}" for o in TINY]]
    assert main(argv) == 130
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("medvol study: interrupted by SIGINT at iteration 2; saved ")
    assert "--resume" not in last and "run the same medvol study recursive command again" in last
