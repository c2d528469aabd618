"""tools/eval_table.py: curves, table and figure from real `medvol evaluate` outputs of several runs."""

import csv
import json

import numpy as np
import pytest

from medvol.eval.evaluate import evaluate


def _evaluation(folder, real, fakes, n_boot=5):
    """An evaluation folder as `medvol evaluate --run` leaves it: iter_<N>/scores.json per checkpoint."""
    for it, fake in fakes.items():
        path = folder / f"fake_{it}.npy"
        np.save(path, fake)
        evaluate(str(real), str(path), folder / f"iter_{it:07d}", metrics=("fid", "kid", "mmd", "prdc"),
                 n_boot=n_boot)


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    real = tmp_path / "real.npy"
    np.save(real, rng.normal(size=(24, 6)))
    a, b = tmp_path / "eval_a", tmp_path / "eval_b"
    a.mkdir()
    b.mkdir()
    _evaluation(a, real, {50: rng.normal(size=(24, 6)) + 1.0, 100: rng.normal(size=(24, 6)) + 0.2})
    _evaluation(b, real, {40: rng.normal(size=(24, 6)) + 2.0, 80: rng.normal(size=(24, 6)) + 1.5})
    cpu_a, cpu_b = tmp_path / "a.json", tmp_path / "b.json"
    cpu_a.write_text(json.dumps({"cpu_s": 200.0, "max_rss_mib": 300.5, "checkpoints": [
        {"iteration": 50, "cpu_s": 101.0}, {"iteration": 100, "cpu_s": 200.0}]}))
    cpu_b.write_text(json.dumps({"cpu_s": 201.0, "max_rss_mib": 280.0, "checkpoints": [
        {"iteration": 40, "cpu_s": 99.0}, {"iteration": 80, "cpu_s": 201.0}]}))
    return tmp_path, real, [("A", str(a), str(cpu_a)), ("B", str(b), str(cpu_b))]


def test_curves_table_and_figure_hold_the_evaluations_numbers(eval_table, two_runs):
    tmp, _, runs = two_runs
    written = eval_table.build(runs, tmp / "out", tmp / "img" / "curves.png")
    with open(written["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["iteration"], r["cpu_s"]) for r in rows] == [
        ("A", "50", "101.0"), ("A", "100", "200.0"), ("B", "40", "99.0"), ("B", "80", "201.0")]
    for row, (label, folder, _), it in zip(rows, [runs[0], runs[0], runs[1], runs[1]], (50, 100, 40, 80)):
        scores = json.loads((tmp / folder / f"iter_{it:07d}" / "scores.json").read_text(encoding="utf-8"))
        s = scores["extractors"][0]["scores"]
        assert float(row["precomputed:features/fid"]) == pytest.approx(s["features/fid"]["value"])
        assert float(row["precomputed:features/fid:lo"]) == pytest.approx(s["features/fid"]["ci_low"])
        assert float(row["precomputed:features/fid:hi"]) == pytest.approx(s["features/fid"]["ci_high"])
        assert float(row["precomputed:features/kid:std"]) == pytest.approx(s["features/kid"]["std"])
        assert float(row["precomputed:features/recall"]) == pytest.approx(s["features/recall"]["value"])
    table = written["table"].read_text(encoding="utf-8")
    last_a = json.loads((tmp / "eval_a" / "iter_0000100" / "scores.json").read_text(encoding="utf-8"))["extractors"][0]["scores"]
    last_b = json.loads((tmp / "eval_b" / "iter_0000080" / "scores.json").read_text(encoding="utf-8"))["extractors"][0]["scores"]
    line_a = next(line for line in table.splitlines() if line.startswith("| A | 100 |"))
    line_b = next(line for line in table.splitlines() if line.startswith("| B | 80 |"))
    for line, s, cpu, it in ((line_a, last_a, 200.0, 100), (line_b, last_b, 201.0, 80)):
        fid = s["features/fid"]
        assert (f"{eval_table.fmt(fid['value'])} ({eval_table.fmt(fid['ci_low'])}.."
                f"{eval_table.fmt(fid['ci_high'])})") in line
        assert eval_table.fmt(s["features/mmd"]["value"]) in line
        assert f"| {cpu / it:.2f} |" in line
    # B is farther from the real features than A at its last checkpoint; the table keeps that order.
    assert last_b["features/fid"]["value"] > last_a["features/fid"]["value"]
    assert "N = 24 real / 24 generated" in table
    # At N = 24 every KID subset (size min(1000, N)) is the whole set: no spread is claimed.
    kid_rows = [line for line in table.splitlines() if "| precomputed |" in line]
    assert len(kid_rows) == 2
    assert all("(one subset: the whole set)" in r and "±" not in r for r in kid_rows)
    png = written["figure"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_runs_scored_differently_are_refused(eval_table, two_runs):
    tmp, real, runs = two_runs
    c = tmp / "eval_c"
    c.mkdir()
    _evaluation(c, real, {50: np.random.default_rng(1).normal(size=(12, 6))})  # another N fake
    with pytest.raises(eval_table.TableError, match=r"n \(24, 12\) differs"):
        eval_table.build(runs + [("C", str(c), "-")], tmp / "out")
    assert not (tmp / "out" / "table.md").exists()
    assert eval_table.main(["--run", "A", runs[0][1], runs[0][2], "--run", "C", str(c), "-",
                            "--out", str(tmp / "out")]) == 2


def test_missing_evaluation_is_one_error(eval_table, tmp_path, capsys):
    assert eval_table.main(["--run", "A", str(tmp_path / "nothing"), "-", "--out", str(tmp_path / "o")]) == 2
    assert "no iter_<N>/scores.json" in capsys.readouterr().err


def test_fmt(eval_table):
    assert eval_table.fmt(21807.4) == "21,807" and eval_table.fmt(0.0123456) == "0.01235"
    assert eval_table.fmt("") == "–" and eval_table.fmt(-1234.5) == "-1,234"
