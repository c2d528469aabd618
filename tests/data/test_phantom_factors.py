"""The phantom population's factors: determinism, recorded factors, measuring them back."""

import json
import math

import numpy as np
import pytest

from medvol.data.io import Volume
from medvol.data.phantom import (ASYMMETRY, CONTINUOUS_FACTORS, DISCRETE_FACTORS, HABITUS, draw_factors,
                                 read_factors, render_phantom, write_phantoms)
from medvol.data.phantom_factors import measure_factors
from medvol.data.preprocess import PreprocessParams, preprocess_aligned
from medvol.errors import MedvolError

# Documented errors (docs/data.md, tools/phantom_factor_errors.py), with margin: mm, HU, ratio.
TOLERANCE = {"body_width_mm": 12.0, "body_depth_mm": 14.0, "lung_ratio": 0.6, "noise_hu": 3.0}
TOLERANCE_CACHE = {"body_width_mm": 12.0, "body_depth_mm": 14.0, "lung_ratio": 0.6, "noise_hu": 7.0}


def test_factors_are_deterministic_and_independent_of_size():
    a, b = render_phantom(32, (3, 1), nodules=True), render_phantom(32, (3, 1), nodules=True)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.factors == b.factors
    small = render_phantom(16, (3, 1), nodules=True).factors
    for key, value in draw_factors((3, 1), nodules=True).items():
        assert small[key] == value == a.factors[key], key
    assert draw_factors((3, 2)) != draw_factors((3, 1))
    for key in CONTINUOUS_FACTORS + DISCRETE_FACTORS:
        assert key in a.factors
    assert a.factors["nodule_count"] == len(a.factors["nodules"]) >= 1
    assert render_phantom(16, (3, 1)).factors["nodule_count"] == 0
    json.dumps(a.factors)  # a sidecar can hold it


def test_population_draws_every_mode():
    draws = [draw_factors((11, i)) for i in range(300)]
    habitus = {h: sum(d["habitus"] == h for d in draws) / len(draws) for h in HABITUS}
    asym = {a: sum(d["asymmetry"] == a for d in draws) / len(draws) for a in ASYMMETRY}
    for name, p in habitus.items():
        assert abs(p - HABITUS[name][0]) < 0.1, (name, p)
    for name, p in asym.items():
        assert abs(p - ASYMMETRY[name][0]) < 0.1, (name, p)
    widths = {h: [2 * d["body_a"] for d in draws if d["habitus"] == h] for h in HABITUS}
    assert max(widths["slim"]) < min(widths["average"]) and max(widths["average"]) < min(widths["broad"])


@pytest.mark.parametrize("size", [32, 64])
def test_measurement_recovers_recorded_factors(size):
    params = PreprocessParams(size=size)
    nodule_errors = []
    for i in range(4 if size == 64 else 8):
        p = render_phantom(size, (2024, i), nodules=i % 2 == 1)
        cached = preprocess_aligned(Volume(array=p.hu, spacing=p.spacing, origin=p.origin), params)
        for m, tolerance in ((measure_factors(p.hu, p.spacing), TOLERANCE),
                             (measure_factors(cached, (380.0 / size,) * 3, window=params.window), TOLERANCE_CACHE)):
            for key, tol in tolerance.items():
                assert abs(m[key] - p.factors[key]) <= tol, (size, i, key, m[key], p.factors[key])
            for key in DISCRETE_FACTORS:
                assert m[key] == p.factors[key], (size, i, key)
            assert m["lung_ml"] == pytest.approx(p.factors["lung_ml"], rel=0.3)
            nodule_errors.append(abs(m["nodule_count"] - p.factors["nodule_count"]))
    # Nodules: documented mean error 0.5 (64^3) to 0.9 (32^3) per volume.
    assert np.mean(nodule_errors) <= (1.0 if size == 64 else 1.5), nodule_errors


def test_measurement_follows_a_changed_volume():
    p = render_phantom(32, (2024, 0))
    m = measure_factors(p.hu, p.spacing)
    noisier = p.hu + np.random.default_rng(0).normal(0, 20, p.hu.shape).astype(np.float32)
    assert measure_factors(noisier, p.spacing)["noise_hu"] == pytest.approx(np.hypot(m["noise_hu"], 20.0), abs=3.0)
    # Nothing to measure (a generated volume can be all air): NaN and unknown, not an error.
    empty = measure_factors(np.full((16, 16, 16), -1.0, np.float32), (23.75,) * 3, window=(-1024, 600))
    assert np.isnan(empty["body_width_mm"]) and empty["mode"] == "unknown/unknown"
    with pytest.raises(MedvolError, match="NaN"):
        measure_factors(np.where(p.hu > 0, np.nan, p.hu), p.spacing)
    with pytest.raises(MedvolError, match="shape"):
        measure_factors(p.hu[0], p.spacing)


@pytest.mark.parametrize("array, spacing, message", [
    (np.zeros((16, 16)), (1.0,) * 3,
     "measure_factors: expected a (z, y, x) volume of at least 8^3, got shape (16, 16)"),
    (np.zeros((4, 16, 16)), (1.0,) * 3,
     "measure_factors: expected a (z, y, x) volume of at least 8^3, got shape (4, 16, 16)"),
    (np.zeros((8, 8, 8)), (1.0, 0.0, 1.0),
     "measure_factors: bad spacing (1.0, 0.0, 1.0): expected three positive mm values"),
    (np.zeros((8, 8, 8)), (1.0, 1.0), "measure_factors: bad spacing (1.0, 1.0): expected three positive mm values"),
    (np.full((8, 8, 8), np.inf), (1.0,) * 3, "measure_factors: the volume holds NaN or infinite voxels"),
    (np.zeros((16, 16, 16)), (1.0,) * 2,
     "measure_slice_factors: expected a (y, x) slice of at least 8^2, got shape (16, 16, 16)"),
    (np.zeros((8, 4)), (1.0,) * 2, "measure_slice_factors: expected a (y, x) slice of at least 8^2, got shape (8, 4)"),
    (np.zeros((8, 8)), (1.0, math.nan),
     "measure_slice_factors: bad spacing (1.0, nan): expected two positive mm values"),
    (np.full((8, 8), np.nan), (1.0,) * 2, "measure_slice_factors: the slice holds NaN or infinite pixels"),
])
def test_volume_and_slice_measurements_name_their_bad_input(array, spacing, message):
    """Both measurements share one check; each error still names its function and its kind of array."""
    from medvol.data.phantom_factors import measure_slice_factors

    measure = measure_slice_factors if message.startswith("measure_slice_factors") else measure_factors
    with pytest.raises(MedvolError) as error:
        measure(array, spacing)
    assert str(error.value) == message


def test_sidecars_and_cache_manifest_record_the_factors(tmp_path):
    from medvol.data.cache import build_cache, load_manifest

    paths = write_phantoms(2, 32, tmp_path / "ph", seed=5)
    for i, path in enumerate(paths):
        assert read_factors(path) == render_phantom(32, (5, i)).factors
    build_cache(tmp_path / "ph", tmp_path / "cache", PreprocessParams(size=32), val_fraction=0.5, seed=0)
    entries = load_manifest(tmp_path / "cache")["volumes"]
    assert sorted(e["phantom_factors"]["mode"] for e in entries) == sorted(read_factors(p)["mode"] for p in paths)


def test_data_phantom_refuses_a_folder_with_user_files(tmp_path, capsys):
    from medvol.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "phantom_0000.nii.gz").write_bytes(b"user data")
    cmd = ["data", "phantom", "--n", "1", "--size", "16", "--out", str(out)]
    for extra in ([], ["--overwrite"]):
        assert main(cmd + extra) == 2
        err = capsys.readouterr().err
        assert "phantom_0000.nii.gz" in err and len(err.strip().splitlines()) == 1, err
        assert (out / "phantom_0000.nii.gz").read_bytes() == b"user data"
        assert not (out / "phantom_0000_mask.nii.gz").exists()
    # The same job continues; another job's outputs need --overwrite, which removes only them.
    clean = tmp_path / "clean"
    write_phantoms(1, 16, clean, seed=1)
    write_phantoms(1, 16, clean, seed=1)
    with pytest.raises(MedvolError, match="another medvol"):
        write_phantoms(1, 16, clean, seed=2)
    write_phantoms(1, 16, clean, seed=2, overwrite=True)
    assert read_factors(clean / "phantom_0000.nii.gz") == render_phantom(16, (2, 0)).factors
