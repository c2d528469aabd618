"""The factor metric: W1 against scipy, ~0 within one distribution, growing with a shift, coverage."""

import json

import numpy as np
import pytest

from medvol.data.phantom import render_phantom
from medvol.data.phantom_factors import measure_factors
from medvol.errors import MedvolError
from medvol.eval.factors import factor_scores, wasserstein1

wasserstein_distance = pytest.importorskip("scipy.stats").wasserstein_distance  # the oracle


@pytest.mark.parametrize("n, m", [(1, 1), (5, 9), (40, 17)])
def test_wasserstein1_matches_scipy(n, m):
    rng = np.random.default_rng(n * 100 + m)
    a, b = rng.normal(size=n), rng.exponential(size=m) + 0.3
    assert wasserstein1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-12, abs=1e-12)
    assert wasserstein1(a, a) == 0.0


@pytest.fixture(scope="module")
def measured():
    records = []
    for i in range(32):
        p = render_phantom(32, (77, i))
        records.append(measure_factors(p.hu, p.spacing))
    return records


def test_metric_is_near_its_floor_within_one_distribution_and_grows_with_a_shift(measured):
    real, fake = measured[:16], measured[16:]
    same = factor_scores(real, fake)
    for key in ("body_width_mm", "noise_hu", "lung_ml"):
        assert same["continuous"][key]["w1_norm"] < 1.0, key
    for shift in (0.5, 1.0, 2.0):
        std = np.std([r["body_width_mm"] for r in real])
        shifted = [dict(r, body_width_mm=r["body_width_mm"] + shift * std) for r in fake]
        scores = factor_scores(real, shifted)["continuous"]["body_width_mm"]
        oracle = wasserstein_distance([r["body_width_mm"] for r in real], [r["body_width_mm"] for r in shifted])
        assert scores["w1"] == pytest.approx(oracle, rel=1e-12)
        assert scores["w1_norm"] == pytest.approx(oracle / std, rel=1e-12)
        assert scores["w1_norm"] > shift - same["continuous"]["body_width_mm"]["w1_norm"]
    assert factor_scores(real, fake)["continuous"]["noise_hu"] == same["continuous"]["noise_hu"]


def test_mode_coverage_drops_when_a_mode_is_removed(measured):
    real, fake = measured[:16], measured[16:]
    modes = sorted({r["mode"] for r in real})
    full = factor_scores(real, real)["modes"]
    assert full["coverage"] == 1.0 and full["missing"] == []
    dropped = modes[0]
    scores = factor_scores(real, [r for r in real if r["mode"] != dropped])["modes"]
    assert scores["coverage"] == pytest.approx((len(modes) - 1) / len(modes))
    assert scores["missing"] == [dropped] and dropped not in scores["fake"]
    assert sum(scores["real"].values()) == 16


def test_metric_refuses_too_few_volumes(measured):
    with pytest.raises(MedvolError, match="at least 2 real"):
        factor_scores(measured[:1], measured)


def test_evaluate_cli_factors(tmp_path, capsys):
    from medvol.cli import main
    from medvol.data.phantom import write_phantoms

    base = ["evaluate", "--size", "32", "--n", "4", "--metrics", "factors"]
    assert main(base + ["--real", "phantom:1", "--fake", "phantom:2", "--out", str(tmp_path / "ev")]) == 0
    assert "mode coverage" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "scores.json").read_text(encoding="utf-8"))
    assert report["factors"]["n"] == [4, 4] and "body_width_mm" in report["factors"]["continuous"]
    assert "heart_x_mm" not in report["factors"]["continuous"]  # measured, not scored (docs/data.md)
    assert "Phantom factors" in (tmp_path / "ev" / "scores.md").read_text(encoding="utf-8")
    # Volumes that are not phantoms (no factor sidecars): one line, exit 2, nothing written.
    paths = write_phantoms(2, 32, tmp_path / "plain", seed=3)
    for path in paths:
        path.with_name(path.name.replace(".nii.gz", ".factors.json")).unlink()
    assert main(base + ["--real", str(tmp_path / "plain"), "--fake", "phantom:2", "--out", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err
    assert "only applies to phantom data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev2" / "scores.json").exists()
