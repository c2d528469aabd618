"""Scores of ``medvol evaluate``: the metric registry and the scoring of feature sets.

Every metric that ``--metrics`` accepts is a :class:`Metric` registered here, as feature
extractors are (:func:`medvol.eval.features.register_extractor`): its name, what it is a function
of (``kind``), the sample dimensions it applies to, and, for the distances between two feature
sets, the function that computes it from feature arrays (:mod:`medvol.eval.metrics`, float64).
:func:`score_views` scores every registered ``features`` metric on every view with a bootstrap
interval over volumes; the others (KID's subsets, MS-SSIM, memorisation, factors, the Inception
Score, figures) are computed where their inputs are (:mod:`medvol.eval.evaluate`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from medvol.errors import MedvolError
from medvol.eval import metrics as M
from medvol.eval.features import FeatureSet

log = logging.getLogger("medvol.evaluate")

#: What a metric is a function of.
KINDS = {
    "features": "two feature sets, per view; bootstrapped over volumes (or images)",
    "subsets": "two feature sets, per view; spread over random subsets, not bootstrapped",
    "logits": "the generated set's class logits (a logits extractor)",
    "volumes": "the volumes themselves (3D only)",
    "figure": "a figure of the feature space, no score",
}


@dataclass(frozen=True)
class Metric:
    """One name ``--metrics`` accepts.

    Attributes:
        name: the name on the command line and the suffix of its scores (``axial/fid``).
        kind: a key of :data:`KINDS`.
        dims: the sample dimensions it applies to: (2, 3), or (3,) for volume-only metrics.
        score: ``features`` metrics: ``score(real [N, D], fake [M, D], prdc_k) -> {name: value}``
            for one view (a metric may give several values, e.g. prdc's four).
        lower_is_better: whether its values improve downwards (``better`` reads it).
    """

    name: str
    kind: str
    dims: tuple[int, ...] = (2, 3)
    score: Callable[..., dict[str, float]] | None = None
    lower_is_better: bool = False


_METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Make ``metric`` available to ``--metrics`` (a ``features`` metric is then scored by
    :func:`score_views` with its bootstrap interval, like the built-in ones)."""
    if not metric.name or "," in metric.name or "/" in metric.name:
        raise ValueError(f"metric name {metric.name!r} must be non-empty without ',' or '/'")
    if metric.kind not in KINDS:
        raise ValueError(f"metric {metric.name!r}: kind {metric.kind!r} is not one of {', '.join(KINDS)}")
    if metric.kind == "features" and metric.score is None:
        raise ValueError(f"metric {metric.name!r}: a features metric needs its score function")
    _METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The registered metric ``name``.

    Raises:
        MedvolError: unknown name, with the names to choose from.
    """
    if name not in _METRICS:
        raise MedvolError(f"unknown metric {name!r} (--metrics): choose from {', '.join(_METRICS)}")
    return _METRICS[name]


def metric_names(*kinds: str, dims: int | None = None) -> tuple[str, ...]:
    """Registered metric names in registration order, of the given ``kinds`` (all when none)
    and applying to samples of ``dims`` (any when None)."""
    return tuple(m.name for m in _METRICS.values()
                 if (not kinds or m.kind in kinds) and (dims is None or dims in m.dims))


def _fid(a: np.ndarray, b: np.ndarray, prdc_k: int | None) -> dict[str, float]:
    return {"fid": M.frechet_distance(a, b)}


def _mmd(a: np.ndarray, b: np.ndarray, prdc_k: int | None) -> dict[str, float]:
    return {"mmd": M.mmd(a, b)["mmd2"]}


def _prdc(a: np.ndarray, b: np.ndarray, prdc_k: int | None) -> dict[str, float]:
    return {key: val for key, val in M.prdc(a, b, k=prdc_k).items() if key != "k"}


for _metric in (
    Metric("fid", "features", score=_fid, lower_is_better=True),
    Metric("kid", "subsets", lower_is_better=True),
    Metric("mmd", "features", score=_mmd, lower_is_better=True),
    Metric("prdc", "features", score=_prdc),
    Metric("msssim", "volumes", dims=(3,)),
    Metric("memorization", "volumes", dims=(3,)),
    Metric("factors", "volumes", dims=(3, 2)),
    Metric("is", "logits"),
    Metric("umap", "figure"),
):
    register_metric(_metric)

#: The kinds of the distances between two feature sets (what precomputed ``.npy`` features can be
#: scored with, and what needs two samples per set).
DISTANCES = ("features", "subsets")
#: The built-in metrics, in the order ``medvol evaluate`` lists them.
METRICS = metric_names()
#: The built-in distances between two feature sets.
FEATURE_METRICS = metric_names(*DISTANCES)
#: Figures of the feature space asked for like metrics: ``umap`` draws features_umap.png beside
#: the PCA figure (opt-in: umap-learn's first fit in a process compiles for ~20 s).
FIGURE_METRICS = metric_names("figure")


def better(score: str) -> str:
    """``"lower"`` or ``"higher"``: the direction in which ``score`` (e.g. ``mean/fid``) improves."""
    metric = _METRICS.get(score.rsplit("/", 1)[-1])
    return "lower" if metric is not None and metric.lower_is_better else "higher"


def check_counts(report: dict, n: int | None, n_real: int, n_fake: int, unit: str, strict: bool) -> None:
    """Say (or, with ``strict``, refuse) that ``--n`` asked for more than a set holds.

    Scores compare only at equal N (docs: FID is biased in N), so a silent 7-vs-2 is a trap.
    """
    if n is None or (n_real >= n and n_fake >= n):
        return
    text = (f"--n {n}: the real set has {n_real} {unit} and the fake set {n_fake}; "
            f"scoring {n_real} against {n_fake}, not {n} against {n}")
    if strict:
        raise MedvolError(f"{text}; refusing under --strict")
    log.warning("warning: %s", text)
    report.setdefault("warnings", []).append(text)


def check_logits(specs: Sequence[str], extractors: Sequence, metrics: Sequence[str]) -> None:
    """``is`` needs a class-logits extractor, and a logits extractor is there only for ``is``.

    Raises:
        MedvolError: one line naming the option to fix, before any image is read.
    """
    logits = [getattr(ext, "output", "features") == "logits" for ext in extractors]
    if "is" in metrics and not any(logits):
        raise MedvolError("--metrics is: the Inception Score needs class logits; add --features "
                          "inception-logits:PATH (2D images) or inception-logits2.5d:PATH (volumes), "
                          "a local classifier file")
    for spec, is_logits in zip(specs, logits):
        if is_logits and "is" not in metrics:
            raise MedvolError(f"--features {spec}: gives class logits, scored only by the Inception "
                              "Score; add is to --metrics")


def score_is(real: FeatureSet, fake: FeatureSet, *, splits: int, seed: int) -> dict:
    """The Inception Score of the fake logits per view (the real set's beside it as reference)
    and, with several views, their mean. Each score keeps its N, splits and seed."""
    result: dict = {}
    for view, logits in fake.features.items():
        got = M.inception_score(logits, splits=splits, seed=seed)
        ref = M.inception_score(real.features[view], splits=min(splits, len(real.features[view])), seed=seed)
        result[f"{view}/is"] = {"value": got["mean"], "std": got["std"], "spread": "splits",
                                "splits": got["splits"], "n": got["n"], "classes": got["classes"],
                                "seed": seed, "real": {"value": ref["mean"], "std": ref["std"],
                                                       "splits": ref["splits"], "n": ref["n"]}}
    if len(fake.features) > 1:
        views = list(fake.features)
        result["mean/is"] = {"value": float(np.mean([result[f"{v}/is"]["value"] for v in views])),
                             "real": {"value": float(np.mean([result[f"{v}/is"]["real"]["value"]
                                                              for v in views]))}}
    return {"scores": result, "warnings": []}


def volume_vectors(fs: FeatureSet) -> np.ndarray:
    """One vector per volume: the mean of its rows in every view, views concatenated."""
    parts = []
    for view, rows in fs.features.items():
        g = fs.groups[view]
        means = np.zeros((fs.n_volumes, rows.shape[1]))
        for i in range(fs.n_volumes):
            sel = rows[g == i]
            if len(sel):
                means[i] = sel.mean(axis=0)
        parts.append(means)
    return np.concatenate(parts, axis=1)


def _rows(groups: np.ndarray, pick: np.ndarray) -> np.ndarray:
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], pick, side="left")
    ends = np.searchsorted(groups[order], pick, side="right")
    return np.concatenate([order[s:e] for s, e in zip(starts, ends)])


def small_sample_warnings(real: FeatureSet, fake: FeatureSet) -> list[str]:
    """The Frechet distance's small-N warning per view, counting what the docs count: volumes
    (the independent samples; a 2.5D view has several correlated slice rows per volume)."""
    lines = []
    for view, rows in real.features.items():
        n_rows, dim = min(len(rows), len(fake.features[view])), rows.shape[1]
        if n_rows >= dim:
            continue
        per_volume = len(rows) > real.n_volumes or len(fake.features[view]) > fake.n_volumes
        counted = (f"N = {real.n_volumes} real and {fake.n_volumes} generated volumes ({n_rows} feature rows: "
                   "slices, correlated within a volume)" if per_volume
                   else f"N = {n_rows} samples")
        lines.append(f"{view}/fid: {counted} for feature dimension {dim}; the covariance is singular and the "
                     "score is strongly biased by N. Compare scores only at equal N (of volumes and slices).")
    return lines


def interval_for(score: str) -> str:
    """The bootstrap interval a score gets (:func:`medvol.eval.metrics.bootstrap_interval`):
    ``"basic"`` for the Fréchet distance, a plug-in estimate biased upward by an amount the
    resamples measure; ``"percentile"`` (the spread of the resampled score) for the rest."""
    return "basic" if score.rsplit("/", 1)[-1] == "fid" else "percentile"


def score_views(real: FeatureSet, fake: FeatureSet, metrics: Sequence[str], *, k: int = 5,
                kid_subsets: int = 100, kid_subset_size: int = 1000, n_boot: int = 50,
                seed: int = 0, level: float = 0.95, progress=None, desc: str = "bootstrap") -> dict:
    """Every metric on every view, the mean over views, and a bootstrap interval over volumes
    (basic for FID, percentile for the rest: :func:`interval_for`).

    One bootstrap round draws volumes (with replacement) once for the real and once for the fake
    set and applies the draw to every view, so the interval of the mean over views is that of
    one resampled set of volumes. ``progress``: a :func:`medvol.progress.track`-like callable,
    given the rounds and ``desc``.
    """
    bootstrapped = [get_metric(m) for m in metrics if get_metric(m).kind == "features"]
    views = list(real.features)
    if list(fake.features) != views:
        raise MedvolError(f"real and fake features have different views: {views} vs {list(fake.features)}")
    caught: list[str] = []
    prdc_k = None
    if "prdc" in metrics:
        # A small set cannot give k neighbours to each sample: k shrinks to what N allows, said.
        n_real = min(len(real.features[v]) for v in views)
        n_fake = min(len(fake.features[v]) for v in views)
        prdc_k = M.prdc_neighbours(k, n_real, n_fake)
        if prdc_k < k:
            text = (f"prdc: k = {k} needs {k + 1} samples per set, but the real set gives {n_real} and the "
                    f"fake set {n_fake}; scored with k = {prdc_k} (recorded as prdc_k)")
            caught.append(text)

    def scalar_scores(r: dict, f: dict) -> dict[str, float]:
        out: dict[str, float] = {}
        for v in views:
            a, b = r[v], f[v]
            for metric in bootstrapped:
                for key, val in metric.score(a, b, prdc_k).items():
                    out[f"{v}/{key}"] = val
        if len(views) > 1:
            names = dict.fromkeys(key.split("/", 1)[1] for key in out)  # first-seen order
            for name in names:
                out[f"mean/{name}"] = float(np.mean([out[f"{v}/{name}"] for v in views]))
        return out

    r_all = {v: real.features[v] for v in views}
    f_all = {v: fake.features[v] for v in views}
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", M.SmallSampleWarning)
        values = scalar_scores(r_all, f_all)
    if records:
        caught.extend(small_sample_warnings(real, fake))
    result: dict = {name: {"value": val} for name, val in values.items()}
    if n_boot >= 2 and values:
        rng = np.random.default_rng(seed)
        draws: dict[str, list[float]] = {name: [] for name in values}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", M.SmallSampleWarning)
            rounds = range(n_boot) if progress is None else progress(range(n_boot), n_boot, desc, "round")
            for _ in rounds:
                pr = rng.integers(0, real.n_volumes, real.n_volumes)
                pf = rng.integers(0, fake.n_volumes, fake.n_volumes)
                r = {v: real.features[v][_rows(real.groups[v], pr)] for v in views}
                f = {v: fake.features[v][_rows(fake.groups[v], pf)] for v in views}
                try:
                    for name, val in scalar_scores(r, f).items():
                        draws[name].append(val)
                except MedvolError:
                    continue  # a draw too degenerate for a metric (e.g. all one volume) is skipped
        for name, vals in draws.items():
            if len(vals) >= 2:
                result[name].update(M.bootstrap_interval(values[name], vals, level, interval_for(name)),
                                    n_boot=len(vals))
    if "kid" in metrics:
        for v in views:
            m = min(kid_subset_size, len(r_all[v]), len(f_all[v]))
            got = M.kid(r_all[v], f_all[v], subsets=kid_subsets, subset_size=m, seed=seed)
            result[f"{v}/kid"] = {"value": got["mean"], "std": got["std"],
                                  "subsets": got["subsets"], "subset_size": got["subset_size"]}
        if len(views) > 1:
            result["mean/kid"] = {"value": float(np.mean([result[f"{v}/kid"]["value"] for v in views]))}
    scored = {"scores": result, "warnings": caught}
    if prdc_k is not None:
        scored["prdc_k"] = prdc_k
    return scored
