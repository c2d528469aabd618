"""The distances of medvol.eval.metrics against independent references.

Oracles: pytorch-fid's and MONAI's Fréchet distance (scipy sqrtm), the closed form for diagonal
Gaussians, the ``prdc`` package, naive double loops for the kernel estimators, scipy's pdist for
the median bandwidth.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medvol.errors import MedvolError
from medvol.eval import metrics as M


def gaussian(rng, n, d, shift=0.0, scale=None):
    a = rng.standard_normal((n, d))
    if scale is not None:
        a = a * scale
    return a + shift


# ------------------------------------------------------------------------------------- Fréchet


@pytest.mark.parametrize("d", [64, 128, 256])
def test_frechet_matches_pytorch_fid_and_monai(d, seeded_rng):
    from pytorch_fid.fid_score import calculate_frechet_distance
    from monai.metrics.fid import get_fid_score

    rng = seeded_rng
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    real = gaussian(rng, 3 * d, d) @ mix
    fake = gaussian(rng, 3 * d, d, shift=0.3) @ (mix + 0.1 * np.eye(d))
    ours = M.frechet_distance(real, fake)
    mu1, s1 = M.gaussian_stats(real)
    mu2, s2 = M.gaussian_stats(fake)
    oracle = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(oracle, rel=1e-6, abs=1e-8)
    monai = float(get_fid_score(torch.from_numpy(fake), torch.from_numpy(real)))
    assert ours == pytest.approx(monai, rel=1e-5)


@pytest.mark.parametrize("n, m, d", [(40, 30, 100), (30, 40, 100), (99, 12, 100), (5, 5, 300)])
def test_frechet_with_fewer_samples_than_dimensions_equals_the_eigen_form(n, m, d, seeded_rng):
    # Below N = D the samples' SVD replaces the D x D eigen form; both must give one value.
    mix = seeded_rng.standard_normal((d, d)) / math.sqrt(d)
    real = gaussian(seeded_rng, n, d) @ mix
    fake = gaussian(seeded_rng, m, d, shift=0.2) @ (mix + 0.1 * np.eye(d))
    with pytest.warns(M.SmallSampleWarning):
        ours = M.frechet_distance(real, fake)
    eigen = M.frechet_distance_from_stats(*M.gaussian_stats(real), *M.gaussian_stats(fake))
    # The eigen form takes square roots of the D - N round-off eigenvalues (~1e-15 each, so
    # ~3e-8 each after the root) of a singular matrix; the SVD form has none: agree to 1e-6.
    assert ours == pytest.approx(eigen, rel=1e-6)
    with pytest.warns(M.SmallSampleWarning):
        assert abs(M.frechet_distance(real, real)) < 1e-9


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(3)
    d = 50
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = M.frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_invariances(seeded_rng):
    x = gaussian(seeded_rng, 400, 32) @ seeded_rng.standard_normal((32, 32))
    y = gaussian(seeded_rng, 400, 32, shift=0.5)
    assert abs(M.frechet_distance(x, x)) < 1e-8
    assert M.frechet_distance(x, y) == pytest.approx(M.frechet_distance(y, x), rel=1e-8)
    delta = seeded_rng.standard_normal(32)
    assert M.frechet_distance(x, x + delta) == pytest.approx(float(delta @ delta), rel=1e-7)


def test_frechet_sample_size_bias():
    """Two samples of one Gaussian: FID falls roughly as 1/N (about D^2 / 2N)."""
    rng = np.random.default_rng(11)
    d = 64
    values = {n: M.frechet_distance(gaussian(rng, n, d), gaussian(rng, n, d))
              for n in (250, 1000, 4000)}
    assert values[250] > values[1000] > values[4000] > 0
    assert values[250] / values[1000] == pytest.approx(4.0, rel=0.3)
    assert values[250] == pytest.approx(d * d / (2 * 250), rel=0.3)


def test_frechet_small_n_warns_and_bad_input_refused(seeded_rng):
    with pytest.warns(M.SmallSampleWarning, match="equal N"):
        M.frechet_distance(gaussian(seeded_rng, 10, 20), gaussian(seeded_rng, 10, 20))
    with pytest.raises(MedvolError, match="NaN"):
        x = gaussian(seeded_rng, 10, 3)
        x[2, 1] = np.nan
        M.frechet_distance(x, x)
    with pytest.raises(MedvolError, match="dimension"):
        M.frechet_distance(gaussian(seeded_rng, 10, 3), gaussian(seeded_rng, 10, 4))
    with pytest.raises(MedvolError, match=r"\[N, D\]"):
        M.frechet_distance(np.zeros(10), np.zeros(10))


# ----------------------------------------------------------------------------------------- KID


def naive_mmd2(x, y, kernel):
    n, m = len(x), len(y)
    sxx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_kid_estimator_against_double_loop(seeded_rng):
    x = gaussian(seeded_rng, 30, 6)
    y = gaussian(seeded_rng, 30, 6, shift=0.4)
    cubic = lambda a, b: (a @ b / 6 + 1.0) ** 3  # noqa: E731
    # one subset of all samples: a permutation of each set, which MMD does not see
    got = M.kid(x, y, subsets=1, subset_size=30)
    assert got["mean"] == pytest.approx(naive_mmd2(x, y, cubic), rel=1e-10)


def test_kid_zero_for_one_distribution_positive_for_shift(seeded_rng):
    x = gaussian(seeded_rng, 600, 16)
    y = gaussian(seeded_rng, 600, 16)
    same = M.kid(x, y, subsets=50, subset_size=200, seed=1)
    assert abs(same["mean"]) < 3 * same["std"]
    shifted = M.kid(x, y + 0.5, subsets=50, subset_size=200, seed=1)
    assert shifted["mean"] > 10 * shifted["std"] > 0
    assert M.kid(x, y, subsets=5, subset_size=100, seed=4) == M.kid(x, y, subsets=5,
                                                                      subset_size=100, seed=4)


# ----------------------------------------------------------------------------------------- MMD


def test_mmd_against_double_loop_and_median(seeded_rng):
    from scipy.spatial.distance import pdist

    x = gaussian(seeded_rng, 25, 5)
    y = gaussian(seeded_rng, 35, 5, shift=0.7)
    sigma = float(np.median(pdist(np.concatenate([x, y]))))
    got = M.mmd(x, y)
    assert got["bandwidth"] == pytest.approx(sigma, rel=1e-12)
    gauss = lambda a, b: math.exp(-float((a - b) @ (a - b)) / (2 * sigma**2))  # noqa: E731
    assert got["mmd2"] == pytest.approx(naive_mmd2(x, y, gauss), rel=1e-10)
    fixed = M.mmd(x, y, bandwidth=2.0)
    gauss2 = lambda a, b: math.exp(-float((a - b) @ (a - b)) / 8.0)  # noqa: E731
    assert fixed["mmd2"] == pytest.approx(naive_mmd2(x, y, gauss2), rel=1e-10)
    assert M.mmd(x, y + 2.0)["mmd2"] > got["mmd2"] > 0


def test_mmd_refuses_degenerate_bandwidth():
    z = np.zeros((10, 3))
    with pytest.raises(MedvolError, match="median pairwise distance is 0"):
        M.mmd(z, z)
    with pytest.raises(MedvolError, match="bandwidth"):
        M.mmd(np.eye(3), np.eye(3), bandwidth=-1.0)


# ---------------------------------------------------------------------------------------- PRDC


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_prdc_package(k, seeded_rng):
    prdc_pkg = pytest.importorskip("prdc")
    real = gaussian(seeded_rng, 200, 8)
    fake = gaussian(seeded_rng, 150, 8, shift=0.5, scale=1.3)
    ours = M.prdc(real, fake, k=k)
    oracle = prdc_pkg.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(oracle[key]), abs=1e-12), key


def test_prdc_identical_sets_with_duplicates():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((20, 4))
    real = np.concatenate([base] * 6)  # every point has 5 exact duplicates: radii are 0
    got = M.prdc(real, real.copy(), k=5)
    assert all(np.isfinite(v) for v in got.values())
    assert got["precision"] == got["recall"] == got["coverage"] == 1.0
    assert got["density"] == pytest.approx(6 / 5)


def test_prdc_separates_disjoint_sets(seeded_rng):
    real = gaussian(seeded_rng, 100, 4)
    far = gaussian(seeded_rng, 100, 4, shift=50.0)
    got = M.prdc(real, far, k=5)
    assert got["precision"] == got["recall"] == got["density"] == got["coverage"] == 0.0
    with pytest.raises(MedvolError, match="k must be"):
        M.prdc(real[:5], far[:5], k=5)


# -------------------------------------------------------------------------------- memorisation


def test_memorization_flags_planted_copies():
    rng = np.random.default_rng(8)
    train = rng.standard_normal((60, 10))
    heldout = rng.standard_normal((40, 10))
    novel = rng.standard_normal((20, 10))
    exact = train[[3, 17]]
    near = train[[41]] + 1e-3 * rng.standard_normal((1, 10))
    fake = np.concatenate([novel, exact, near])
    got = M.memorization(train, fake, heldout)
    assert got["nearest_train"][20:].tolist() == [3, 17, 41]
    assert got["likely_copy"][20:].all()
    assert not got["authentic"][20:].any()
    assert got["distance"][20] == 0.0
    assert got["likely_copy"][:20].mean() < 0.15
    # a new sample of the training distribution is nearer its nearest training sample than that
    # sample's own neighbour about half the time (as held-out real samples are)
    assert 0.3 < got["authentic"][:20].mean() < 0.85
    assert 0.3 < M.memorization(train, heldout, heldout)["authenticity"] < 0.85
    assert got["copy_fraction"] == pytest.approx(got["likely_copy"].mean())


def test_authenticity_uses_the_training_index():
    """The radius is that of the nearest *training* sample, not of the training row that has the
    generated sample's index (the bug of a widely copied implementation)."""
    train = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [30.0, 0.0]])
    # radii (k = 1): 0.1, 0.1, 9.9, 20.0
    fake = np.array([[10.5, 0.0], [30.0, 5.0]])
    got = M.memorization(train, fake, heldout=np.array([[5.0, 0.0]]))
    assert got["nearest_train"].tolist() == [2, 3]
    # fake 0: distance 0.5 < radius 9.9 of train 2 -> not authentic (train row 0 has radius 0.1)
    # fake 1: distance 5 < radius 20 of train 3 -> not authentic (train row 1 has radius 0.1)
    assert got["authentic"].tolist() == [False, False]
    assert got["train_radius"].tolist() == pytest.approx([9.9, 20.0])


# ----------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_and_groups_resample_volumes(seeded_rng):
    x = gaussian(seeded_rng, 120, 3)
    y = gaussian(seeded_rng, 120, 3, shift=1.0)
    mean_gap = lambda a, b: float(np.linalg.norm(a.mean(0) - b.mean(0)))  # noqa: E731
    got = M.bootstrap(mean_gap, x, y, n_boot=100, seed=2)
    assert got["ci_low"] <= got["bias_corrected"] <= got["ci_high"]
    assert got["ci_low"] < math.sqrt(3) < got["ci_high"]
    assert got["n_real"] == got["n_fake"] == 120
    # 40 volumes of 3 slices: whole volumes are drawn, so each draw has a multiple of 3 rows
    groups = np.repeat(np.arange(40), 3)
    rows_mod_3 = lambda a, b: float(len(a) % 3 + len(b) % 3)  # noqa: E731
    g = M.bootstrap(rows_mod_3, x, y, n_boot=20, real_groups=groups, fake_groups=groups)
    assert g["n_real"] == g["n_fake"] == 40
    assert g["ci_low"] == g["ci_high"] == 0.0
    with pytest.raises(MedvolError, match="groups"):
        M.bootstrap(mean_gap, x, y, n_boot=5, real_groups=groups[:10])


def test_torch_input_and_float32_are_float64_inside():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16))
    y = rng.standard_normal((300, 16)) + 0.2
    a = M.frechet_distance(x, y)
    b = M.frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert a == b
    for (p, q) in itertools.product([x], [y.astype(np.float32)]):
        assert M.frechet_distance(p, q) == pytest.approx(a, rel=1e-5)
