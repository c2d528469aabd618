"""The default recursive study (the learned 32^3 CRF-GAN) at a plumbing size: phantom factors per
generation, the t intervals over seeds against scipy, generation 0 shared, two generations at a time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medvol.errors import MedvolError

ROOT = Path(__file__).resolve().parents[2]
# The default config at a plumbing size: 16 phantoms (12 train / 4 val), 3 training steps per
# generation, 6 generated volumes, two seeds x real fractions 0 and 0.5, generations 0 and 1.
TINY = ["train.iterations=3", "data.phantom_n=16", "train.ckpt_every=3", "train.log_every=3"]
ARGS = dict(generations=2, real_fraction=[0.0, 0.5], seed=[0, 1], n_synthetic=6, feature_iters=3, bootstrap=0,
            device="cpu", overrides=TINY)
KEYS = ("factor_w1", "mode_coverage", "w1_body_width_mm", "w1_lung_ml", "recall", "msssim")


# Six generations in two worker processes, the domain network and the floor: about 50 CPU s (150 s
# wall on the shared machine), so slow; the config and argument checks below are fast.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from medvol.study.recursive import run_recursive_study

    out = tmp_path_factory.mktemp("recursive_default") / "study"
    summary = run_recursive_study(out=out, jobs=2, **ARGS)  # the default config
    return {"out": out, "summary": summary}


def _records(out: Path) -> dict[tuple[int, float, int], dict]:
    """Every generation's scores.json read from disk: (seed, fraction, k) -> record (k = 0 under both)."""
    found = {}
    for path in out.glob("seed_*/**/scores.json"):
        if "eval" in path.parts:
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        for f in ((0.0, 0.5) if record["generation"] == 0 else (record["real_fraction"],)):
            found[(record["seed"], f, record["generation"])] = record
    return found


def test_the_default_study_is_the_learned_crfgan():
    """configs/learn/crfgan_32.yaml's model and optimiser, on its 256 phantoms."""
    from medvol.config import config_to_dict, load_config, resolve_config
    from medvol.study.recursive.study import DEFAULT_CONFIG

    assert resolve_config(DEFAULT_CONFIG).resolve() == (ROOT / "configs" / "studies" / "recursive_crfgan32.yaml")
    study, learned = (config_to_dict(load_config(name)) for name in (DEFAULT_CONFIG, "learn/crfgan_32"))
    assert study["model"] == learned["model"]
    for key in ("lr", "mode", "amp", "iterations", "threads"):
        assert study["train"].get(key) == learned["train"].get(key), key
    for key in ("source", "batch", "phantom_n", "phantom_seed"):
        assert study["data"][key] == learned["data"][key], key


@slow
def test_every_generation_has_the_phantom_factor_scores_of_its_samples(study):
    """Oracle: the factors of the written samples and the real val volumes, measured here and
    scored with medvol.eval.factors (the study scores the same samples regenerated in [-1, 1])."""
    from medvol.data.io import read_volume
    from medvol.data.phantom_factors import measure_factors
    from medvol.eval.factors import factor_scores

    out = study["out"]
    records = _records(out)
    assert sorted(records) == [(s, f, k) for s in (0, 1) for f in (0.0, 0.5) for k in (0, 1)]

    def measured(files):
        vols = [read_volume(p) for p in files]
        return [measure_factors(np.asarray(v.array, dtype=np.float32), v.spacing) for v in vols]

    real = measured(sorted((out / "real" / "val").glob("*.nii.gz")))
    assert len(real) == 4
    for (seed, fraction, k), record in records.items():
        scores = record["scores"]
        for key in KEYS:
            assert isinstance(scores[key], float), key
        expected = factor_scores(real, measured(record["samples"]))
        for name in ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio"):
            want, got = expected["continuous"][name]["w1_norm"], scores[f"w1_{name}"]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=0.05, abs=0.05), name
        assert scores["mode_coverage"] == expected["modes"]["coverage"]
        finite = [scores[f"w1_{n}"] for n in ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio")
                  if math.isfinite(scores[f"w1_{n}"])]
        assert scores["factor_w1"] == pytest.approx(np.mean(finite))
    floor = study["summary"]["floor"]
    assert 0 <= floor["mode_coverage"] <= 1 and floor["factor_w1"] >= 0


@slow
def test_the_summary_is_scipys_t_interval_over_the_seeds(study):
    from scipy import stats

    records = _records(study["out"])
    rows = {(r["real_fraction"], r["generation"]): r for r in study["summary"]["aggregate"]}
    assert sorted(rows) == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    for (fraction, k), row in rows.items():
        assert row["seeds"] == [0, 1]
        for key in KEYS:
            x = np.array([records[(s, fraction, k)]["scores"][key] for s in (0, 1)])
            if not np.isfinite(x).all():
                continue
            cell = row[key]
            assert cell["mean"] == pytest.approx(x.mean(), rel=1e-12, abs=1e-15)
            if x[0] == x[1]:
                assert cell["low"] == cell["high"] == pytest.approx(x[0])
                continue
            low, high = stats.t.interval(0.95, 1, loc=x.mean(), scale=stats.sem(x))
            assert (cell["low"], cell["high"]) == pytest.approx((low, high), rel=1e-9), (fraction, k, key)
    md = (study["out"] / "summary.md").read_text(encoding="utf-8")
    assert "mode coverage" in md and "| 0.5 | 1 | 2 |" in md


@slow
def test_generation_0_is_shared_and_later_ones_train_on_their_own_mix(study):
    out, records = study["out"], _records(study["out"])
    for s in (0, 1):
        assert records[(s, 0.0, 0)] is records[(s, 0.5, 0)] or records[(s, 0.0, 0)] == records[(s, 0.5, 0)]
        assert not (out / f"seed_{s:03d}" / "real_000" / "gen_000").exists()
        data = [records[(s, f, 1)]["training_data"] for f in (0.0, 0.5)]
        # 12 real training volumes: 0 and 6 of them kept beside the 6 generated ones.
        assert [(d["synthetic"], d["real"]) for d in data] == [(6, 0), (6, 6)]
        assert all((out / f"seed_{s:03d}" / f"real_{p:03d}" / "gen_001" / "montage.png").is_file() for p in (0, 50))
    for record in records.values():
        cpu = record["cpu_seconds"]
        assert 0 < cpu["train"] <= cpu["total"] and cpu["total"] == pytest.approx(sum(
            cpu[k] for k in ("data", "train", "generate", "score")))
    assert study["summary"]["cpu_seconds"] == pytest.approx(sum(
        records[(s, f, k)]["cpu_seconds"]["total"] for s in (0, 1) for f, k in ((0.0, 0), (0.0, 1), (0.5, 1))))
    # The two seeds' runs differ: each is its own draw of the study.
    assert records[(0, 0.0, 0)]["seeds"] != records[(1, 0.0, 0)]["seeds"]


def test_jobs_must_be_a_positive_integer(tmp_path):
    from medvol.study.recursive import run_recursive_study

    for bad in (0, 1.5, True):
        with pytest.raises(MedvolError, match="--jobs"):
            run_recursive_study(out=tmp_path / "o", jobs=bad, **ARGS)
    assert not (tmp_path / "o").exists()


def test_generation_0_of_every_seed_comes_first_then_each_fraction_whole():
    from medvol.study.recursive.study import _schedule

    plans = {(s, f): None for s in (0, 1, 2) for f in (0.0, 0.25)}
    order = _schedule(plans, 3, 3, set())
    assert order == [(0, 0, 0.0), (0, 1, 0.0), (0, 2, 0.0),
                     (1, 0, 0.0), (1, 1, 0.0), (1, 2, 0.0), (2, 0, 0.0), (2, 1, 0.0), (2, 2, 0.0),
                     (1, 0, 0.25), (1, 1, 0.25), (1, 2, 0.25), (2, 0, 0.25), (2, 1, 0.25), (2, 2, 0.25)]
    # A shorter command than the study asked before lists only what is done beyond it.
    assert _schedule(plans, 3, 2, {(1, 0.25, 2)}) == [
        (0, 0, 0.0), (0, 1, 0.0), (0, 2, 0.0), (1, 0, 0.0), (1, 1, 0.0), (1, 2, 0.0),
        (1, 0, 0.25), (1, 1, 0.25), (1, 2, 0.25), (2, 1, 0.25)]
