"""FID of a synthetic source against the held-out real volumes, through :mod:`medvol.eval`.

Volumes: the ``domain`` extractor (:mod:`medvol.eval.domain`: medvol's own autoencoder trained on
the real training volumes; the study trains one into its folder unless given a file). 2D slices:
the FID Inception network on single images (``inception``). The real side is the cache's ``val``
split (for 2D its axial slices that show anatomy, or a 2D cache's images, pooled to the synthetic side), the fake side
exactly the synthetic items the U-Nets train on. The Fréchet distance is
:func:`medvol.eval.metrics.frechet_distance` of the per-volume (per-image) feature vectors.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from medvol.errors import MedvolError
from medvol.study.downstream.data import LabelledSet, real_slices


def domain_weights(cache: str, out_dir: Path, given: str | None, iters: int, log) -> Path:
    """The domain feature file: ``given``, or ``out_dir/domain_features.pt`` (trained once)."""
    if given is not None:
        if not Path(given).is_file():
            raise MedvolError(f"--features {given}: no such file (train one with `medvol features train`)")
        return Path(given)
    path = out_dir / "domain_features.pt"
    if not path.is_file():
        from medvol.eval.domain import train_domain_features

        log(f"training the domain feature network on {cache} (train split, {iters} iterations) for FID")
        train_domain_features(cache, path, iters=iters, seed=0, log_every=0)
    return path


def extractor(dims: int, weights: Path | None, device: str):
    from medvol.eval.features import get_extractor

    return get_extractor(f"domain:{weights}" if dims == 3 else "inception", device=device, batch=16)


def _stream(data: LabelledSet):
    for index in range(len(data)):
        yield data.items[index], data.load(index)[0]


def check_sizes(name: str, real_val: LabelledSet, synthetic: LabelledSet, *, dims: int, side: int | None) -> None:
    """Refuse, before any network is trained, a FID that cannot be computed: fewer than 2 items a side.

    Raises:
        MedvolError: one line naming the side that is too small.
    """
    from_volumes = dims == 2 and real_val.dims == 3
    real = len(real_slices(real_val, side)) if from_volumes else len(real_val)
    unit = "slices" if from_volumes else ("images" if dims == 2 else "volumes")
    if real < 2:
        raise MedvolError(f"--real {real_val.info.get('cache')}: its val split gives {real} held-out {unit}; the FID "
                          f"of --synthetic {name} needs at least 2 (rebuild the cache with a larger --val-fraction)")
    if len(synthetic) < 2:
        raise MedvolError(f"--synthetic {name}: {len(synthetic)} item(s); its FID needs at least 2")


def fid(real_val: LabelledSet, synthetic: LabelledSet, ext, *, side: int | None, memo: dict) -> dict:
    """``{"fid", "n_real", "n_synthetic", "extractor", "warning"}`` of one synthetic source.

    ``memo`` keeps the real features between sources (extracted once per extractor).
    """
    from medvol.eval.evaluate import volume_vectors
    from medvol.eval.metrics import frechet_distance

    key = (ext.name, side)
    if key not in memo:
        real = real_slices(real_val, side) if ext.dims == 2 and real_val.dims == 3 else real_val
        memo[key] = volume_vectors(ext.extract(_stream(real)))
    real_vectors = memo[key]
    fake_vectors = volume_vectors(ext.extract(_stream(synthetic)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = frechet_distance(real_vectors, fake_vectors)
    notes = sorted({str(w.message) for w in caught})
    return {"fid": float(value), "n_real": int(len(real_vectors)), "n_synthetic": int(len(fake_vectors)),
            "extractor": ext.info(), "warning": "; ".join(notes) or None,
            "real": "val split " + ("volumes" if ext.dims == 3 else "axial slices" if real_val.dims == 3 else "images")}

