"""tools/compare_seeds.py: its run syntax, its interval, its factor numbers and its table; and the
pieces it added to tools/cpu_budget.py and tools/learn_check.py."""

import math
import sys

import numpy as np
import pytest


def test_parse_run(compare_seeds):
    assert compare_seeds.parse_run("HA-GAN=configs/x.yaml model.name=hagan train.lr.G=2e-4") == (
        "HA-GAN", "configs/x.yaml", ["--model.name", "hagan", "--train.lr.G", "2e-4"])
    assert compare_seeds.parse_run("A=c.yaml") == ("A", "c.yaml", [])
    for bad in ("c.yaml", "=c.yaml", "../x=c.yaml", "A=c.yaml name=hagan", "A=c.yaml model.name"):
        with pytest.raises(compare_seeds.MedvolError):
            compare_seeds.parse_run(bad)


def test_t_interval_closed_form(compare_seeds):
    mean, lo, hi = compare_seeds.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert compare_seeds.t_interval([5.0, None, float("nan")])[0] == 5.0
    assert math.isnan(compare_seeds.t_interval([5.0])[1])


def _phantoms(n, seed, size=32):
    from medvol.config import DataConfig
    from medvol.train.data import build_dataset

    data = build_dataset(DataConfig(source="phantom", phantom_n=n, phantom_seed=seed, workers=0), size, dims=3)
    return np.stack([np.asarray(data[i]["image"], dtype=np.float32) for i in range(n)])


def test_factor_numbers_are_zero_for_the_real_set_and_grow_when_a_mode_is_gone(compare_seeds):
    real = _phantoms(12, 1000)
    same = compare_seeds.factor_numbers(real, real, 32)
    assert same["factor_w1_mean"] == 0 and same["factor_w1_anatomy"] == 0 and same["mode_coverage"] == 1
    assert same["factor_floor_mean"] > 0  # two halves of 12 phantoms differ
    # Only the volumes of the most common mode, repeated: its other modes are missing.
    modes = same["factors"]["modes"]["real"]
    assert len(modes) > 1
    from medvol.data.phantom_factors import measure_factors

    spacing, window = compare_seeds.geometry(32)
    measured = [measure_factors(v[0], spacing, window=window)["mode"] for v in real]
    top = max(set(measured), key=measured.count)
    one_mode = real[[m == top for m in measured]]
    narrowed = compare_seeds.factor_numbers(one_mode, real, 32)
    assert narrowed["mode_coverage"] == pytest.approx(1 / len(modes))
    assert narrowed["factor_w1_mean"] > 0


def test_markdown_table(compare_seeds):
    def run(w1, recall):
        return {"iteration": 100, "cpu_s": 50.0, "ssim_pairwise_fake": 0.4, "fake_std_over_samples": 0.2,
                "precision": 0.5, "recall": recall, "coverage": 0.3, "nn_train_fake": 3.0, "factor_w1_mean": w1,
                "mode_coverage": 0.5, "factor_floor_mean": 0.4, "ssim_pairwise_real": 0.45,
                "real_std_over_samples": 0.19, "nn_train_heldout": 2.0,
                "prdc_pooled_train_items": {"precision": 1.0, "recall": 0.9, "coverage": 0.8},
                "factors": {"continuous": {"lung_ml": {"w1_norm": w1, "floor_norm": 0.4},
                                           "noise_hu": {"w1_norm": 10 * w1, "floor_norm": 0.5}},
                            "modes": {"missing": ["slim/none"]}}}
    numbers = {("A", 0): run(1.0, 0.0), ("A", 1): run(2.0, 0.5), ("A", 2): run(3.0, 1.0)}
    table = compare_seeds.summarise(["A"], [0, 1, 2], numbers)
    assert table["A"]["factor_w1_mean"]["mean"] == 2.0 and table["A"]["recall"]["seeds"] == [0.0, 0.5, 1.0]
    text = compare_seeds.markdown(table, {"command": "c", "seeds": [0, 1, 2], "budget": "b", "n": 8,
                                          "eval_seed": 1000, "machine": "m", "date": "d"})
    half = 4.302652729911275 / math.sqrt(3)
    assert f"| 2.00 ({2 - half:.2f}..{2 + half:.2f}; 1.00 / 2.00 / 3.00) |" in text
    assert "| lung_ml | 0.40 | 2.00 (" in text and "A: slim/none / slim/none / slim/none" in text
    # Scored before the anatomy means existed: derived from the stored factors (lung_ml only here).
    assert table["A"]["factor_w1_anatomy"]["seeds"] == [1.0, 2.0, 3.0]
    assert "anatomy 0.40." in text


def test_cpu_budget_sends_the_commands_output_to_a_file(cpu_budget, tmp_path):
    with open(tmp_path / "log", "w") as log:
        result = cpu_budget.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                                budget=None, watch=None, stdout=log)
    assert result["returncode"] == 0
    assert (tmp_path / "log").read_text(encoding="utf-8").split() == ["out", "err"]


def test_pairwise_ssim_in_processes_equals_one_process(compare_seeds):
    import learn_check

    items = np.random.default_rng(0).uniform(-1, 1, (4, 1, 12, 12, 12)).astype(np.float32)
    items[1] = items[0]
    assert learn_check.pairwise_ssim(items, workers=3) == learn_check.pairwise_ssim(items, workers=1)
    from skimage.metrics import structural_similarity

    pairs = [structural_similarity(items[i, 0], items[j, 0], data_range=2.0) for i in range(4) for j in range(i + 1, 4)]
    assert learn_check.pairwise_ssim(items, workers=2) == pytest.approx(np.mean(pairs))
