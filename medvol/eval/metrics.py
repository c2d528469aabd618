"""Distances between a set of real and a set of generated feature vectors.

Every function takes feature arrays of shape ``[N, D]`` (numpy or torch, any float dtype) and
computes in float64. Nothing here knows where the features came from; the extractors and the
provenance live in :mod:`medvol.eval.features` and the command.

Written here rather than taken from a library, with the libraries as test oracles:

- the Fréchet distance uses the symmetric eigen form, because ``scipy.linalg.sqrtm`` (what
  pytorch-fid calls) is slow at D = 2048, can return complex noise, and loses its ``disp``
  argument in scipy 1.18; with fewer samples than dimensions it works on the samples instead
  (the same value from an N x N singular value decomposition);
- precision / recall / density / coverage count a point on the boundary of a k-NN ball as inside
  (``<=``), where the ``prdc`` package uses ``<``: with exact duplicates the k-NN radius is 0 and
  the strict rule would call identical sets disjoint;
- pairwise distances are computed from coordinate differences (``torch.cdist`` without the
  matrix-product shortcut), so that duplicates are at distance exactly 0.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from medvol.errors import MedvolError


class SmallSampleWarning(UserWarning):
    """A score computed from fewer samples than it needs to be comparable."""


def as_features(x, name: str = "features", min_rows: int = 2) -> np.ndarray:
    """``x`` as a float64 ``[N, D]`` array, refusing what no metric can use."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise MedvolError(f"{name}: expected a [N, D] feature array, got shape {tuple(a.shape)}")
    if a.shape[0] < min_rows:
        raise MedvolError(f"{name}: needs at least {min_rows} samples, got {a.shape[0]}")
    if a.shape[1] < 1:
        raise MedvolError(f"{name}: feature dimension is 0")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise MedvolError(f"{name}: {bad} of {a.shape[0]} feature vectors contain NaN or inf")
    return a


def _same_dim(a: np.ndarray, b: np.ndarray, names=("real", "fake")) -> None:
    if a.shape[1] != b.shape[1]:
        raise MedvolError(
            f"{names[0]} has feature dimension {a.shape[1]} but {names[1]} has {b.shape[1]}"
        )


def pairwise_distances(a, b) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]`` in float64, exact 0 for identical rows."""
    ta = torch.as_tensor(np.asarray(a, dtype=np.float64))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64))
    return torch.cdist(ta, tb, compute_mode="donot_use_mm_for_euclid_dist").numpy()


def warn_small_n(n: int, dim: int, score: str) -> None:
    """FID-type scores are biased upward as N falls, strongly once N is below D."""
    if n < dim:
        warnings.warn(
            f"{score}: N = {n} samples for feature dimension {dim}; the covariance is singular "
            "and the score is strongly biased by N. Compare scores only at equal N.",
            SmallSampleWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- Fréchet distance


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof = 1, as FID implementations use) of ``[N, D]``."""
    f = as_features(features)
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).

    tr sqrt(S1 S2) equals tr sqrt(S1^1/2 S2 S1^1/2) (the two matrices are similar), and the
    latter is symmetric positive semi-definite, so one ``eigh`` and one ``eigvalsh`` give it
    without a general matrix square root. Eigenvalues below 0 (round-off) count as 0. The raw
    value is returned: for two samples of one distribution it can be a tiny negative number.
    """
    mu1 = np.asarray(mu1, dtype=np.float64).reshape(-1)
    mu2 = np.asarray(mu2, dtype=np.float64).reshape(-1)
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    for name, m in (("sigma1", s1), ("sigma2", s2)):
        if m.shape != (d, d):
            raise MedvolError(f"{name}: expected a {d}x{d} covariance, got {m.shape}")
    if mu2.shape[0] != d:
        raise MedvolError(f"mu2 has dimension {mu2.shape[0]}, mu1 has {d}")
    root1 = _psd_sqrt(s1)
    inner = root1 @ ((s2 + s2.T) / 2) @ root1
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance(real, fake) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (FID on Inception).

    With fewer samples than dimensions in both sets (the usual case at small N: a few hundred
    2.5D slices for 2048 Inception features), the D x D covariances are never formed: see
    :func:`_frechet_from_samples`, which gives the same value in O(N^2 D) instead of O(D^3).
    """
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    _same_dim(r, f)
    warn_small_n(min(len(r), len(f)), r.shape[1], "Frechet distance")
    if max(len(r), len(f)) < r.shape[1]:
        return _frechet_from_samples(r, f)
    return frechet_distance_from_stats(*gaussian_stats(r), *gaussian_stats(f))


def _frechet_from_samples(r: np.ndarray, f: np.ndarray) -> float:
    """The Fréchet distance from the centred samples ``X [n, D]``, ``Y [m, D]`` directly.

    With S1 = X'X / (n-1) and S2 = Y'Y / (m-1), the non-zero eigenvalues of S1 S2 are those of
    (X Y')(X Y')' / ((n-1)(m-1)) (AB and BA share them), so tr sqrt(S1 S2) is the sum of the
    singular values of X Y' over sqrt((n-1)(m-1)); tr S1 is the squared norm of X over (n-1).
    An n x m SVD replaces two D x D eigendecompositions (at D = 2048 and N = 256 slices, a
    bootstrap of 50 rounds over three planes drops from minutes to a second).
    """
    x = r - r.mean(axis=0)
    y = f - f.mean(axis=0)
    n, m = len(x), len(y)
    tr_covmean = float(np.linalg.svd(x @ y.T, compute_uv=False).sum()) / math.sqrt((n - 1) * (m - 1))
    diff = r.mean(axis=0) - f.mean(axis=0)
    return float(diff @ diff + (x * x).sum() / (n - 1) + (y * y).sum() / (m - 1) - 2.0 * tr_covmean)


# ------------------------------------------------------------------------------- kernel scores


def _unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """The unbiased U-statistic estimate of MMD^2 from the three kernel blocks."""
    n, m = kxx.shape[0], kyy.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/D by default (the KID kernel)."""
    g = 1.0 / a.shape[1] if gamma is None else gamma
    return (g * (a @ b.T) + coef0) ** degree


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> dict:
    """Kernel Inception distance: unbiased MMD^2 with the cubic kernel over random subsets.

    Each of ``subsets`` rounds draws ``min(subset_size, N_real, N_fake)`` samples from each set
    without replacement (seeded); the result is the mean and standard deviation over rounds.
    """
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    _same_dim(r, f)
    if subsets < 1:
        raise MedvolError(f"kid: subsets must be >= 1, got {subsets}")
    m = min(subset_size, len(r), len(f))
    if m < 2:
        raise MedvolError(f"kid: subset size must be >= 2, got {m}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = r[rng.choice(len(r), m, replace=False)]
        y = f[rng.choice(len(f), m, replace=False)]
        kern = lambda a, b: polynomial_kernel(a, b, degree, gamma, coef0)  # noqa: E731
        values[i] = _unbiased_mmd2(kern(x, x), kern(y, y), kern(x, y))
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if subsets > 1 else 0.0,
        "subsets": subsets,
        "subset_size": m,
        "seed": seed,
    }


def median_bandwidth(real, fake) -> float:
    """The median heuristic: the median Euclidean distance between distinct pooled samples."""
    z = np.concatenate([as_features(real, "real"), as_features(fake, "fake")])
    d = pairwise_distances(z, z)
    off = d[~np.eye(len(z), dtype=bool)]
    sigma = float(np.median(off))
    if sigma <= 0.0:
        raise MedvolError("mmd: the median pairwise distance is 0 (over half the samples are "
                          "identical); give a bandwidth")
    return sigma


def mmd(real, fake, bandwidth: float | str = "median") -> dict:
    """Unbiased MMD^2 with the Gaussian kernel k = exp(-|x - y|^2 / (2 sigma^2)).

    ``bandwidth="median"`` sets sigma to the median pairwise distance of the pooled samples (the
    heuristic of HA-GAN's evaluation, which applies it to MedicalNet features of whole volumes).
    MONAI's ``MMDMetric`` is a different quantity: a linear kernel on voxel intensities of paired
    images, not a distribution distance on features.
    """
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    _same_dim(r, f)
    if bandwidth == "median":
        sigma = median_bandwidth(r, f)
    else:
        sigma = float(bandwidth)
        if not (sigma > 0.0 and math.isfinite(sigma)):
            raise MedvolError(f"mmd: bandwidth must be a positive number, got {bandwidth!r}")

    def gauss(a, b):
        return np.exp(-pairwise_distances(a, b) ** 2 / (2.0 * sigma**2))

    return {"mmd2": _unbiased_mmd2(gauss(r, r), gauss(f, f), gauss(r, f)), "bandwidth": sigma}


# ------------------------------------------------------------------ precision / recall / ...


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each sample to its k-th nearest other sample (0 when it has k duplicates)."""
    d = pairwise_distances(features, features)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def prdc_neighbours(k: int, n_real: int, n_fake: int) -> int:
    """The ``k`` of :func:`prdc` that ``n_real`` and ``n_fake`` samples allow: ``k``, or fewer.

    Every sample's k-NN ball needs ``k`` other samples of its own set, so ``k`` is at most
    ``min(n_real, n_fake) - 1``; below 1 no ball exists.

    Raises:
        MedvolError: ``k`` below 1, or a set of fewer than 2 samples.
    """
    if k < 1:
        raise MedvolError(f"prdc: k must be at least 1 (--k), got {k}")
    usable = min(k, n_real - 1, n_fake - 1)
    if usable < 1:
        raise MedvolError(f"prdc needs at least 2 real and 2 generated samples, got {n_real} and {n_fake}")
    return usable


def prdc(real, fake, k: int = 5) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    A sample counts as inside another's k-NN ball when its distance is <= the radius (closed
    ball; see the module note on ties). Density can exceed 1.
    """
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    _same_dim(r, f)
    if not 1 <= k < min(len(r), len(f)):
        raise MedvolError(f"prdc: k must be in [1, {min(len(r), len(f)) - 1}] for "
                          f"{len(r)} real and {len(f)} fake samples, got {k}")
    real_r = knn_radii(r, k)
    fake_r = knn_radii(f, k)
    d = pairwise_distances(r, f)  # [real, fake]
    in_real_ball = d <= real_r[:, None]
    return {
        "precision": float(in_real_ball.any(axis=0).mean()),
        "recall": float((d <= fake_r[None, :]).any(axis=1).mean()),
        "density": float(in_real_ball.sum() / (k * len(f))),
        "coverage": float((d.min(axis=1) <= real_r).mean()),
        "k": k,
    }


# ------------------------------------------------------------------------------ memorisation


def memorization(train, fake, heldout, k: int = 1, copy_quantile: float = 0.01,
                 copy_ratio: float = 0.5) -> dict:
    """How close generated samples sit to the training set, against held-out real samples.

    For each generated sample: its nearest training sample and the distance to it. The same
    distance for each held-out real sample (never trained on) is the reference: a generated
    sample closer to a training sample than ``copy_ratio`` times the ``copy_quantile`` quantile
    of held-out distances is flagged as a likely copy. (With few held-out samples the quantile is
    their minimum, which a new sample of the same distribution undercuts with probability about
    1 / (n_heldout + 1); the ratio keeps such samples from being flagged.) Authenticity (Alaa et al. 2022) of a generated sample
    is whether it lies farther from its nearest training sample than that training sample's own
    nearest other training sample; the radius is looked up by the *training* index found for the
    generated sample (a widely copied implementation indexes it with the generated index).
    """
    t = as_features(train, "train")
    g = as_features(fake, "fake")
    h = as_features(heldout, "heldout", min_rows=1)
    _same_dim(t, g, ("train", "fake"))
    _same_dim(t, h, ("train", "heldout"))
    if not 0.0 <= copy_quantile < 1.0:
        raise MedvolError(f"memorization: copy_quantile must be in [0, 1), got {copy_quantile}")
    d_gt = pairwise_distances(g, t)
    nearest = d_gt.argmin(axis=1)
    d_fake = d_gt[np.arange(len(g)), nearest]
    d_held = pairwise_distances(h, t).min(axis=1)
    train_radius = knn_radii(t, k)
    if not copy_ratio > 0.0:
        raise MedvolError(f"memorization: copy_ratio must be positive, got {copy_ratio}")
    threshold = copy_ratio * float(np.quantile(d_held, copy_quantile))
    authentic = d_fake > train_radius[nearest]
    copies = d_fake < threshold
    return {
        "nearest_train": nearest,
        "distance": d_fake,
        "train_radius": train_radius[nearest],
        "authentic": authentic,
        "likely_copy": copies,
        "heldout_distance": d_held,
        "copy_threshold": threshold,
        "authenticity": float(authentic.mean()),
        "copy_fraction": float(copies.mean()),
        "median_distance_fake": float(np.median(d_fake)),
        "median_distance_heldout": float(np.median(d_held)),
    }


# ----------------------------------------------------------------------------- Inception Score


def inception_score(logits, splits: int = 10, seed: int | None = 0) -> dict:
    """Inception Score of class logits ``[N, K]`` (Salimans et al. 2016), with its split spread.

    p(y|x) = softmax(logits); the rows are shuffled (``seed``; ``None`` keeps their order) and
    cut into ``splits`` near-equal parts; in each part IS = exp(mean_x KL(p(y|x) || p(y))) with
    p(y) that part's mean prediction. The score is the mean over parts and ``std`` their
    standard deviation (ddof = 0, as the original code and torch-fidelity report it). The
    value depends on N through the parts' size, so scores compare only at equal N and splits.
    """
    x = as_features(logits, "logits", min_rows=1)
    if x.shape[1] < 2:
        raise MedvolError(f"logits: need at least 2 classes, got {x.shape[1]}")
    if not isinstance(splits, (int, np.integer)) or not 1 <= splits <= len(x):
        raise MedvolError(f"inception score: splits must be an integer in [1, {len(x)}] for "
                          f"{len(x)} samples, got {splits!r}")
    z = x - x.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    if seed is not None:
        log_p = log_p[np.random.default_rng(seed).permutation(len(log_p))]
    values = np.empty(splits)
    for i, part in enumerate(np.array_split(log_p, splits)):
        p = np.exp(part)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(p.mean(axis=0))
            # 0 * log 0 = 0: a class a row gives probability 0 adds nothing to its KL.
            kl = np.where(p > 0, p * (part - log_marginal), 0.0).sum(axis=1)
        values[i] = math.exp(float(kl.mean()))
    return {"mean": float(values.mean()), "std": float(values.std()), "splits": int(splits),
            "n": len(x), "classes": int(x.shape[1]), "seed": seed}


# -------------------------------------------------------------------------------- bootstrap


INTERVALS = ("basic", "percentile")


def bootstrap_interval(value: float, draws, level: float = 0.95, method: str = "basic") -> dict:
    """A bootstrap interval from the full-sample ``value`` and the resampled ``draws``.

    ``"basic"`` (pivotal): [2 value - q_hi, 2 value - q_lo], q the draws' quantiles. It assumes
    that the error of the estimate (value - truth) is distributed like that of a resample (draw -
    value), so it moves the interval down by the bias the resamples show. This is the interval
    for a biased plug-in estimate such as the Fréchet distance, whose resamples sit above it:
    there the percentile interval can miss its own estimate and covers the true distance rarely
    (0 % in the test at D = 16, N = 60; the basic interval 95 %). It is centred on the
    bias-corrected estimate 2 value - mean(draws) (returned as ``bias_corrected``), not on
    ``value``, which lies above it when the bias is larger than the spread.

    ``"percentile"``: [q_lo, q_hi], the spread of the resampled score. It suits an unbiased
    estimate (the MMD U-statistic), for which the basic interval would correct a bias that only
    the resampling creates (duplicated samples), and it is what PRDC reports (read it as spread).
    """
    if method not in INTERVALS:
        raise MedvolError(f"bootstrap: unknown interval {method!r}; choose from {', '.join(INTERVALS)}")
    d = np.asarray(draws, dtype=np.float64)
    q_lo, q_hi = (float(q) for q in np.quantile(d, [(1 - level) / 2, (1 + level) / 2]))
    out = {"interval": method, "std": float(d.std(ddof=1)), "bias": float(d.mean() - value)}
    if method == "basic":
        out.update(ci_low=2.0 * value - q_hi, ci_high=2.0 * value - q_lo,
                   bias_corrected=float(2.0 * value - d.mean()))
    else:
        out.update(ci_low=q_lo, ci_high=q_hi)
    return out


def bootstrap(score: Callable[[np.ndarray, np.ndarray], float], real, fake, n_boot: int = 200,
              seed: int = 0, level: float = 0.95, real_groups: Sequence | None = None,
              fake_groups: Sequence | None = None, method: str = "basic") -> dict:
    """The score and a bootstrap interval (:func:`bootstrap_interval`), resampling volumes.

    ``real_groups`` / ``fake_groups`` give the volume each feature row belongs to (2.5D features
    are several slices per volume, which are correlated): whole volumes are resampled with
    replacement, so N is the number of volumes, not of slices. Without groups every row is its
    own volume. ``method="basic"`` suits biased plug-in scores (the Fréchet distance),
    ``"percentile"`` unbiased ones (MMD^2).
    """
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    if n_boot < 2:
        raise MedvolError(f"bootstrap: n_boot must be >= 2, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise MedvolError(f"bootstrap: level must be in (0, 1), got {level}")
    if method not in INTERVALS:
        raise MedvolError(f"bootstrap: unknown interval {method!r}; choose from {', '.join(INTERVALS)}")

    def index(groups, n, name):
        g = np.arange(n) if groups is None else np.asarray(groups)
        if g.shape != (n,):
            raise MedvolError(f"bootstrap: {name}_groups has {g.shape[0] if g.ndim else 0} "
                              f"entries for {n} feature rows")
        ids, inverse = np.unique(g, return_inverse=True)
        return [np.flatnonzero(inverse == i) for i in range(len(ids))]

    rows_r = index(real_groups, len(r), "real")
    rows_f = index(fake_groups, len(f), "fake")
    rng = np.random.default_rng(seed)
    value = float(score(r, f))
    values = np.empty(n_boot)
    for i in range(n_boot):
        pick_r = np.concatenate([rows_r[j] for j in rng.integers(0, len(rows_r), len(rows_r))])
        pick_f = np.concatenate([rows_f[j] for j in rng.integers(0, len(rows_f), len(rows_f))])
        values[i] = float(score(r[pick_r], f[pick_f]))
    return {
        "value": value,
        **bootstrap_interval(value, values, level, method),
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "n_real": len(rows_r),
        "n_fake": len(rows_f),
    }


SCORES: Mapping[str, Callable] = {
    "fid": frechet_distance,
    "kid": kid,
    "mmd": mmd,
    "prdc": prdc,
    "is": inception_score,
}
