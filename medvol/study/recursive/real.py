"""The real side of a recursive study: the real cache, its train/val volumes on disk, the domain
feature network, and the real-vs-real floor of every score.

Layout under ``DIR/real/``::

    phantoms/     the config's phantoms as CT files (only when ``data.source`` is ``phantom``)
    cache/        their preprocessing cache, split into train / val (phantom source only; a
                  config that names a cache uses that cache as it is)
    train/ val/   the real cache's train and val volumes as NIfTI in HU: real volumes mixed into
                  later generations come from train/, and the floor scores train/ against val
    domain.pt     3D: the domain feature network (``medvol features train``) fitted on the train split
    floor/        the floor's evaluation reports; floor.json its scores

Every step is skipped when its output exists: each is written atomically (files renamed into
place, folders filled under a temporary name), so a present output is a complete one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medvol.config import TrainConfig
from medvol.errors import MedvolError

log = logging.getLogger("medvol.study")


@dataclasses.dataclass
class RealData:
    """The real data of a study, prepared by :func:`prepare_real`.

    Attributes:
        cache: the real preprocessing cache (train and val splits).
        manifest_sha256: :func:`manifest_sha256` of the cache when the study began using it.
        size: the volumes' side S.
        modality: ``"ct"`` or ``"mr"``.
        window: the CT window (HU) the cache scales with; None for MR.
        train_files, val_files: the split's volumes as NIfTI (HU for CT), in manifest order.
        domain: the domain feature network's file (None for a 2D study, which scores on
            weight-free features, :mod:`.slices`).
        images: the real data is a 2D image cache (``medvol preprocess --images``): its train
            images are written to ``train/`` as one-slice NIfTI (in HU for CT slices, else in
            [-1, 1]) and ``val_files`` are the cache's val arrays.
    """

    cache: Path
    manifest_sha256: str
    size: int
    modality: str
    window: tuple[float, float] | None
    train_files: list[Path]
    val_files: list[Path]
    domain: Path | None
    images: bool = False

    @property
    def value_range(self) -> tuple[float, float]:
        """The intensity range histograms are taken over: the window (HU), or [-1, 1] for MR."""
        return tuple(self.window) if self.window is not None else (-1.0, 1.0)

    def split_arrays(self, split: str) -> list[np.ndarray]:
        """The cache's ``split`` volumes in physical units (HU for CT), float32 (S, S, S) each."""
        from medvol.data.datasets import CachedVolumeDataset
        from medvol.data.preprocess import to_intensity

        data = CachedVolumeDataset(self.cache, split=split)
        return [np.asarray(to_intensity(np.asarray(data.volume(i), dtype=np.float32), self.window),
                           dtype=np.float32) for i in range(len(data))]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_sha256(cache: Path) -> str:
    """SHA-256 of what the study depends on in a cache: its parameters and every entry's name,
    source checksum and split (not the manifest's bytes: each ``build_cache`` run that reuses
    every volume still stamps the manifest with its time)."""
    from medvol.data.cache import load_manifest

    manifest = load_manifest(cache)
    content = {"params": manifest["params"],
               "volumes": sorted([e["name"], e.get("checksum"), e.get("split")] for e in manifest["volumes"])}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def real_cache(cfg: TrainConfig, root: Path, *, val_fraction: float, seed: int) -> Path:
    """The real cache: the config's cache, or one built under ``root`` from its phantoms.

    Phantoms are written with the config's ``phantom_n``, ``phantom_seed`` and ``phantom_nodules``
    (the volumes ``medvol train`` would draw on the fly) and split with ``val_fraction`` and
    ``seed`` so that generated volumes are scored against real ones no generation trained on.
    """
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    data = cfg.data
    if data.source != "phantom":
        cache = Path(data.source)
        if not (cache / "manifest.json").is_file():
            raise MedvolError(f"data.source {cache}: not a medvol cache (the recursive study needs 'phantom' "
                              "or a folder built by `medvol preprocess`)")
        return cache
    phantoms = root / "phantoms"
    expected = [phantoms / f"phantom_{i:04d}.nii.gz" for i in range(data.phantom_n)]
    if not all(p.is_file() for p in expected):  # each file is written atomically
        log.info("writing %d phantoms to %s", data.phantom_n, phantoms)
        write_phantoms(data.phantom_n, cfg.model.size, phantoms, seed=data.phantom_seed,
                       nodules=data.phantom_nodules)
    cache = root / "cache"
    # Idempotent: a finished cache with the same sources and parameters is reused as it is.
    build_cache(expected, cache, PreprocessParams(size=cfg.model.size), val_fraction=val_fraction, seed=seed)
    return cache


def export_split(cache: Path, split: str, folder: Path) -> list[Path]:
    """Write the ``split`` volumes of ``cache`` into ``folder`` as NIfTI (once: the folder appears
    complete or not at all)."""
    from medvol.data.cache import load_entry, load_manifest
    from medvol.data.io import write_volume
    from medvol.utils import atomic_dir

    names = [e["name"] for e in load_manifest(cache)["volumes"] if e["split"] == split]
    files = [folder / f"{name}.nii.gz" for name in names]
    if folder.is_dir() and sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(p.name for p in files):
        return files
    with atomic_dir(folder) as tmp:
        os.chmod(tmp, 0o777 & ~_umask())  # a temporary folder is private; the result is not
        for name in names:
            write_volume(load_entry(cache, name, physical=True), tmp / f"{name}.nii.gz")
    return files


def prepare_real(cfg: TrainConfig, root: Path, *, val_fraction: float, seed: int, feature_iters: int | None,
                 expected_sha256: str | None = None) -> RealData:
    """Build (or find) everything real the study needs under ``root`` (module docstring).

    Args:
        cfg: the study's config (its ``data`` section names the real data).
        root: ``DIR/real``.
        val_fraction, seed: the split of a phantom cache.
        feature_iters: iterations of the domain feature network's training; None: no network
            (a 2D study).
        expected_sha256: the real cache's manifest digest recorded when the study began (None
            for a new study): a cache that changed since is refused, since the generations
            already done were trained and scored on the old one.

    Raises:
        MedvolError: a cache that is no cache, changed, holds synthetic volumes, has volumes of
            another size, or fewer than two train or val volumes.
    """
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.eval.domain import train_domain_features

    cache = real_cache(cfg, root, val_fraction=val_fraction, seed=seed)
    digest = manifest_sha256(cache)
    if expected_sha256 is not None and digest != expected_sha256:
        raise MedvolError(f"real cache {cache} changed since this study began (content sha256 "
                          f"{digest[:12]}... vs {expected_sha256[:12]}...); start a new study with another --out")
    if is_image_source(cache):
        if feature_iters is not None:
            raise MedvolError(f"real cache {cache}: a 2D image cache; the 3D models need a volume cache "
                              "(medvol preprocess without --images)")
        return _prepare_images(cfg, root, cache, digest)
    counts = {}
    for split in ("train", "val"):
        # Refuses synthetic entries: generation 0 must learn from real volumes only.
        data = CachedVolumeDataset(cache, split=split)
        if data.size != cfg.model.size:  # 2D too: generated stacks of S slices join real volumes
            raise MedvolError(f"real cache {cache}: volumes are {data.size}^3, model.size is {cfg.model.size}")
        counts[split] = len(data)
        if len(data) < 2:
            raise MedvolError(f"real cache {cache}: {len(data)} {split} volume(s); the study needs at least 2 "
                              "(more phantoms with --data.phantom_n, or another --val-fraction)")
    params = data.params
    train_files = export_split(cache, "train", root / "train")
    val_files = export_split(cache, "val", root / "val")
    domain = root / "domain.pt" if feature_iters is not None else None
    if domain is not None and not domain.is_file():  # written atomically by train_domain_features
        log.info("training the domain feature network on %d real volumes (%d iterations)",
                 counts["train"], feature_iters)
        train_domain_features(cache, domain, iters=feature_iters, seed=seed, log_every=0)
    return RealData(cache=cache, manifest_sha256=digest, size=params.size, modality=params.modality,
                    window=params.intensity_window, train_files=train_files, val_files=val_files,
                    domain=domain)


def is_image_source(cache: Path) -> bool:
    """Whether the study's real cache is a 2D image cache (``medvol preprocess --images``)."""
    from medvol.data.cache_store import load_manifest
    from medvol.data.image_cache import is_image_cache

    return is_image_cache(load_manifest(cache))


def image_dataset(cfg: TrainConfig, cache: Path, split: str):
    """The non-blank (with ``data.skip_blank``) images of a 2D cache's ``split`` at ``model.size``,
    as training reads them; one grey channel."""
    from medvol.data.image_datasets import CachedImageDataset

    try:
        data = CachedImageDataset(cache, split=split, size=cfg.model.size, content_only=cfg.data.skip_blank)
    except MedvolError as error:
        raise MedvolError(f"real cache {cache}: {error}") from None
    if data.channels != 1:
        raise MedvolError(f"real cache {cache}: {data.channels}-channel images; the recursive study scores grey "
                          "images (build the cache with --colour grey)")
    return data


def image_unit(images: np.ndarray, window) -> np.ndarray:
    """Images in [-1, 1] in the unit a 2D model's samples are written in: HU for CT slices (the
    cache's window), [-1, 1] otherwise."""
    from medvol.data.preprocess import to_intensity

    return np.asarray(to_intensity(images, window), dtype=np.float32) if window is not None else images


def _prepare_images(cfg: TrainConfig, root: Path, cache: Path, digest: str) -> RealData:
    """:func:`prepare_real` for a 2D image cache: its train images written once to ``root/train``
    as one-slice NIfTI (what a generation's training folder takes beside the generated images)."""
    from medvol.data.io import Volume, write_volume
    from medvol.utils import atomic_dir

    sets = {split: image_dataset(cfg, cache, split) for split in ("train", "val")}
    for split, data in sets.items():
        if len(data) < 2:
            raise MedvolError(f"real cache {cache}: {len(data)} {split} image(s); the study needs at least 2")
    train, window = sets["train"], sets["train"].window
    folder = root / "train"
    files = [folder / f"{name}.nii.gz" for name in train.names]
    if not (folder.is_dir() and sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(p.name for p in files)):
        with atomic_dir(folder) as tmp:
            os.chmod(tmp, 0o777 & ~_umask())
            for i, name in enumerate(train.names):
                image = image_unit(train[i]["image"][0].numpy(), window)
                write_volume(Volume(image[None], spacing=(1.0, *train.spacing)), tmp / f"{name}.nii.gz")
    return RealData(cache=cache, manifest_sha256=digest, size=cfg.model.size, modality=train.params.modality,
                    window=window, train_files=files, val_files=list(sets["val"].files), domain=None, images=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object written by this study, or None when absent or unreadable (to be redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any], what: str) -> None:
    """``data`` as JSON at ``path``, atomically."""
    from medvol.utils import checked_write

    with checked_write(path, what) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
