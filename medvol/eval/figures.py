"""The figures of ``medvol evaluate``: feature-space scatter (PCA, UMAP), the memorisation montage
and a run's score curve, each returned as PNG bytes so that the outputs are written all at once
(:mod:`medvol.outputs`). Matplotlib is an optional extra: without it the figures are skipped,
every number is in scores.json anyway."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None  # figures need the [eval] extra; every number is in scores.json anyway
    return plt


def _save(fig, path: Path) -> bool:
    from medvol.utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def _png(fig) -> bytes:
    """The figure as PNG bytes (written with the other outputs, all at once)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _finished_png(plt, fig) -> bytes:
    """``fig`` laid out, as PNG bytes (:func:`_png`), and closed."""
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def _scatter_png(plt, real: np.ndarray, fake: np.ndarray, xlabel: str, ylabel: str, title: str) -> bytes:
    """Real (dots) and fake (crosses) points ``(N, 2)`` of one 2D embedding (PCA, UMAP) as PNG bytes."""
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.scatter(real[:, 0], real[:, 1], s=14, label=f"real ({len(real)})", alpha=0.8)
    ax.scatter(fake[:, 0], fake[:, 1], s=14, marker="x", label=f"fake ({len(fake)})", alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _finished_png(plt, fig)


def pca_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both sets projected on the two leading principal axes of the pooled, centred features;
    also the explained variance ratios."""
    z = np.concatenate([a, b])
    mean = z.mean(axis=0)
    _, sv, vt = np.linalg.svd(z - mean, full_matrices=False)
    ratio = sv**2 / max((sv**2).sum(), 1e-300)
    return (a - mean) @ vt[:2].T, (b - mean) @ vt[:2].T, ratio[:2]


def _plot_scatter(extractor: str, real: np.ndarray, fake: np.ndarray, unit: str = "volume") -> bytes | None:
    plt = _pyplot()
    if plt is None or len(real) + len(fake) < 3:
        return None
    pr, pf, ratio = pca_2d(real, fake)
    return _scatter_png(plt, pr, pf, f"PC1 ({100 * ratio[0]:.0f}% of variance)",
                        f"PC2 ({100 * ratio[1]:.0f}%)" if len(ratio) > 1 else "PC2",
                        f"{extractor} features, one point per {unit}")


def umap_2d(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both sets embedded together in 2D by UMAP (umap-learn; imported here, an optional extra):
    Euclidean, ``min(15, N - 1)`` neighbours, seeded (which also makes it single-threaded)."""
    import umap

    z = np.concatenate([a, b]).astype(np.float64)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(z) - 1), random_state=seed, n_jobs=1,
                        init="random")
    e = reducer.fit_transform(z)
    return e[:len(a)], e[len(a):]


def _plot_umap(extractor: str, real: np.ndarray, fake: np.ndarray, unit: str = "volume", *,
               seed: int = 0) -> tuple[bytes | None, str]:
    """The UMAP figure as PNG bytes, or None and the one-line reason it was skipped."""
    import importlib.util

    if importlib.util.find_spec("umap") is None:
        return None, "features_umap.png skipped: umap-learn is not installed (pip install 'medvol[umap]')"
    if len(real) + len(fake) < 4:
        return None, f"features_umap.png skipped: UMAP needs at least 4 points, got {len(real) + len(fake)}"
    plt = _pyplot()
    if plt is None:
        return None, "features_umap.png skipped: matplotlib is not installed (pip install 'medvol[eval]')"
    er, ef = umap_2d(real, fake, seed)
    return _scatter_png(plt, er, ef, "UMAP 1", "UMAP 2",
                        f"{extractor} features (UMAP, seed {seed}), one point per {unit}"), ""


def _plot_montage(pairs, fake_vols: dict, train_vols: dict, fake_idx, train_idx) -> bytes | None:
    """The closest generated / training pairs, central axial slices: one column per pair, the
    generated volume on top, its nearest training volume below, each captioned right above its
    own image (:mod:`medvol.preview`)."""
    from medvol.preview import labelled_grid, pillow_available, png_bytes, to_grey

    if not pairs or not pillow_available():
        return None
    top, bottom = [], []
    for (fname, tname, dist), fi, ti in zip(pairs, fake_idx, train_idx):
        fake, real = fake_vols[int(fi)], train_vols[int(ti)]
        top.append((f"d={dist:.3g} generated {fname}", to_grey(fake[fake.shape[0] // 2], (-1, 1))))
        bottom.append((f"training {tname}", to_grey(real[real.shape[0] // 2], (-1, 1))))
    return png_bytes(labelled_grid([top, bottom], title="closest generated / training pairs, central axial "
                                                 "slices (d: feature distance)"))


def _plot_curve(rows, best: str, best_it: int) -> bytes | None:
    plt = _pyplot()
    if plt is None:
        return None
    its = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(its, [r[2][best] for r in rows], marker="o")
    ax.axvline(best_it, color="grey", linestyle=":", label=f"best ({best_it})")
    ax.set_xlabel("iteration")
    ax.set_ylabel(best)
    ax.legend()
    return _finished_png(plt, fig)
