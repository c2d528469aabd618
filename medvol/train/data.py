"""Training data: the dataset named by ``cfg.data`` and a resumable, rank-sharded loader.

The index stream is a pure function of ``(seed, rank, world_size, samples already consumed)``:
each epoch is a fresh permutation drawn from ``seed + epoch``, split across ranks like
``DistributedSampler``. Resuming at iteration ``i`` restarts the stream at ``i * batch`` samples,
so no sampler state needs saving and prefetching workers never make it drift. The datasets are
deterministic per index (the phantom of index ``k`` is always the same volume), so which worker
loads an item does not change it.
"""

from __future__ import annotations

import math
import random
import signal
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medvol.config import DataConfig
from medvol.errors import MedvolError


def build_dataset(data: DataConfig, size: int, dims: int = 3, channels: int = 1,
                  mask_channels: int = 0, seed: int = 0) -> Dataset:
    """The training dataset of ``data.source``: ``"phantom"`` or a preprocessing cache folder.

    Args:
        data: the data section.
        size: the model's side S.
        dims: 3 for volumes ``[1 + K, S, S, S]``; 2 for the slices of a 2D model ``[channels, S, S]``
            (:class:`medvol.data.datasets.SliceDataset` with the ``data.plane`` ... keys).
        channels: 2D only: image channels the model expects (2 with ``data.masks``, 1 + K with
            ``mask_channels``).
        mask_channels: K > 0 (paired image + mask models): the image is followed by the label
            map's classes 1..K one-hot as -1 / +1 (:mod:`medvol.data.paired`).
        seed: with ``data.cache_b`` (cyclegan): the seed of domain B's shuffle
            (:class:`medvol.data.unpaired.UnpairedImageDataset`).

    Raises:
        MedvolError: the folder is missing, holds no volumes, or volumes of another size, or
            volumes marked synthetic without ``data.allow_synthetic``; with ``mask_channels``, data
            without label maps or with fewer than K classes.
    """
    if data.cache_b is not None:
        return _unpaired(data, size, dims, channels, seed)
    if data.source != "phantom" and _is_image_cache(data.source):
        return _images(data, size, dims, channels, mask_channels)
    if data.source == "phantom":
        from medvol.data.datasets import PhantomVolumeDataset

        dataset = PhantomVolumeDataset(size, data.phantom_n, seed=data.phantom_seed,
                                       nodules=data.phantom_nodules)
    else:
        from medvol.data.datasets import CachedVolumeDataset

        folder = Path(data.source)
        if not folder.is_dir():
            raise MedvolError(f"data.source {folder}: no such folder (expected 'phantom' or a preprocessing cache)")
        dataset = CachedVolumeDataset(folder, split=data.split, allow_synthetic=data.allow_synthetic)
    if len(dataset) == 0:
        raise MedvolError(f"data.source {data.source}: no {data.split} volumes found")
    if mask_channels:
        _check_mask_source(dataset, data, mask_channels)
    if dims == 2:
        return _slices(dataset, data, size, channels, mask_channels)
    shape = tuple(dataset[0]["image"].shape)
    if shape != (1, size, size, size):
        raise MedvolError(f"data.source {data.source}: volumes have shape {shape}, "
                          f"model.size {size} needs (1, {size}, {size}, {size})")
    if mask_channels:
        from medvol.data.paired import PairedVolumeDataset

        return PairedVolumeDataset(dataset, mask_channels, f"data.source {data.source}")
    return dataset


def _is_image_cache(source: str) -> bool:
    """Whether ``source`` is a 2D image cache (:mod:`medvol.data.image_cache`); a folder that is no
    cache at all is left to the volume path, which says so."""
    from medvol.data.cache_store import MANIFEST, load_manifest
    from medvol.data.image_cache import is_image_cache

    folder = Path(source)
    return (folder / MANIFEST).is_file() and is_image_cache(load_manifest(folder))


def _images(data: DataConfig, size: int, dims: int, channels: int, mask_channels: int) -> Dataset:
    """The images of a 2D cache for a 2D model, with the channels the model expects."""
    from medvol.data.image_datasets import CachedImageDataset

    if dims != 2:
        raise MedvolError(f"data.source {data.source}: a 2D image cache; 3D models train on volume caches "
                          "(medvol preprocess without --images)")
    try:
        dataset = CachedImageDataset(data.source, split=data.split, allow_synthetic=data.allow_synthetic,
                                     size=size, masks=data.masks, mask_channels=mask_channels,
                                     labels=data.slice_labels, content_only=data.skip_blank,
                                     keep_class=None if data.slice_class < 0 else data.slice_class)
    except MedvolError as error:
        raise MedvolError(f"data.source {data.source}: {error}") from None
    want = dataset.channels + int(data.masks) + mask_channels
    if channels != want:
        extra = f", model.mask_channels {mask_channels}" if mask_channels else ""
        raise MedvolError(f"model.channels: {channels} does not match the data's {want} ({dataset.channels} image "
                          f"channel(s) of {data.source}, data.masks {str(data.masks).lower()}{extra})")
    return dataset


def _unpaired(data: DataConfig, size: int, dims: int, channels: int, seed: int) -> Dataset:
    """Domain A (``data.source``) and domain B (``data.cache_b``), two grey 2D image caches of one
    side, unpaired (:class:`medvol.data.unpaired.UnpairedImageDataset`)."""
    from medvol.data.image_datasets import CachedImageDataset
    from medvol.data.unpaired import UnpairedImageDataset

    keys = (("data.source", data.source), ("data.cache_b", data.cache_b))
    for key, source in keys:
        folder = Path(source)
        if source == "phantom" or not folder.is_dir():
            raise MedvolError(f"{key} {source}: no such folder (each domain is a 2D image cache: medvol preprocess "
                              "--images)")
        if not _is_image_cache(source):
            raise MedvolError(f"{key} {source}: not a 2D image cache (medvol preprocess --images makes one)")
    if Path(data.source).resolve() == Path(data.cache_b).resolve():
        raise MedvolError(f"data.cache_b {data.cache_b}: the same cache as data.source; the two domains need two "
                          "caches")
    if dims != 2 or channels != 2:
        raise MedvolError(f"data.cache_b {data.cache_b}: two domains are for cyclegan (2D, model channels 2)")
    sets = []
    for key, source in keys:
        try:
            sets.append(CachedImageDataset(source, split=data.split, allow_synthetic=data.allow_synthetic, size=size,
                                           content_only=data.skip_blank,
                                           keep_class=None if data.slice_class < 0 else data.slice_class))
        except MedvolError as error:
            raise MedvolError(f"{key} {source}: {error}") from None
    a, b = sets
    if a.side != b.side:
        raise MedvolError(f"data.cache_b {data.cache_b}: images of side {b.side}, data.source's are {a.side}; "
                          "preprocess both domains at one --size")
    for key, source, dataset in ((*keys[0], a), (*keys[1], b)):
        if dataset.channels != 1:
            raise MedvolError(f"{key} {source}: images with {dataset.channels} channels; cyclegan translates grey "
                              "images (preprocess with --colour grey)")
    return UnpairedImageDataset(a, b, seed, names=(f"data.source {data.source}", f"data.cache_b {data.cache_b}"))


def _check_mask_source(dataset: Dataset, data: DataConfig, k: int) -> None:
    """Refuse label maps that cannot give the model's K classes (before anything is trained)."""
    from medvol.data.paired import require_labels

    names = require_labels(dataset, k, f"data.source {data.source}")
    if data.source == "phantom" and "nodules" in names and not data.phantom_nodules:
        raise MedvolError(f"model.mask_channels {k}: the phantom's class {names.index('nodules') + 1} (nodules) "
                          "never appears without data.phantom_nodules true")


def _slices(volumes: Dataset, data: DataConfig, size: int, channels: int, mask_channels: int = 0) -> Dataset:
    from medvol.data.datasets import SliceDataset

    want = 1 + int(data.masks) + mask_channels
    if channels != want:
        extra = f", model.mask_channels {mask_channels}" if mask_channels else ""
        raise MedvolError(f"model.channels: {channels} does not match the data's {want} "
                          f"(data.masks {str(data.masks).lower()}{extra})")
    side = int(volumes[0]["image"].shape[-1])
    if side < size or side % size:
        raise MedvolError(f"data.source {data.source}: volumes of side {side} cannot give slices of "
                          f"model.size {size} (need a divisor of {side})")
    try:
        return SliceDataset(volumes, content_only=data.skip_blank, plane=data.plane, size=size, masks=data.masks,
                            labels=data.slice_labels, keep_class=None if data.slice_class < 0 else data.slice_class,
                            mask_channels=mask_channels)
    except MedvolError as error:
        raise MedvolError(f"data.{error}") from None


class StreamSampler(Sampler[int]):
    """Endless, resumable stream of dataset indices for one rank.

    Args:
        length: dataset length.
        seed: base seed; epoch ``e`` is ``randperm(length)`` drawn from ``seed + e``.
        rank, world_size: this rank's share (every rank gets ``ceil(length / world_size)`` per
            epoch; the permutation is padded by wrapping around, as ``DistributedSampler`` does).
        start: samples this rank already consumed (``iteration * batch``).
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.per_rank = math.ceil(length / world_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_rank * self.world_size
        perm = (perm * math.ceil(total / self.length))[:total]
        return perm[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.epoch_indices(epoch)[offset:]
            epoch, offset = epoch + 1, 0


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the main process stops
    # between two steps and checkpoints, which needs its workers alive until then.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # numpy and python RNGs are not reseeded per worker by PyTorch; derive them from torch's.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, data: DataConfig, *, seed: int, rank: int = 0, world_size: int = 1,
                start_iteration: int = 0, pin_memory: bool = False, batches_per_step: int = 1) -> DataLoader:
    """An endless ``DataLoader`` of ``data.batch`` volumes per rank, resumed at ``start_iteration``.

    ``batches_per_step`` > 1 (a WGAN critic trained ``n_critic`` times per G update) makes each
    loaded batch that many real batches of ``data.batch``, concatenated along the batch dimension.

    Loading runs in ``data.workers`` worker processes (0 = in the main process). Its own
    ``generator`` keeps the loader from drawing on the global torch RNG, which the training step
    owns.
    """
    per_step = data.batch * batches_per_step
    sampler = StreamSampler(len(dataset), seed=seed, rank=rank, world_size=world_size,
                            start=start_iteration * per_step)
    workers = data.workers
    return DataLoader(
        dataset,
        batch_size=per_step,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=data.prefetch if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + 7919 * rank),
    )


def data_meta(dataset: Dataset, data: DataConfig) -> dict:
    """Facts generation needs about the training volumes: spacing (z, y, x mm), direction (ITK's
    row-major 3x3), modality and HU window (None for MR); and how many volumes, how many of them
    synthetic (the provenance of what the model learnt from).

    For the slices of a 2D model, ``spacing`` is the (row, column) pixel spacing; ``plane`` and
    ``volume_spacing`` (the (z, y, x) spacing of the volumes the slices were cut from, after the
    slice pooling) let ``medvol generate --volume`` stack generated slices into volumes, and
    ``direction`` is the volumes' direction.

    A paired image + mask dataset (``mask_channels`` K > 0) adds ``mask_labels``, the names of
    classes 1..K, which generation records beside the label maps it writes.
    """
    spacing = getattr(dataset, "spacing", None)
    window = getattr(dataset, "window", None)
    volumes = getattr(dataset, "volumes", dataset)  # a SliceDataset's volume dataset
    params = getattr(volumes, "params", None)
    meta = {
        "source": data.source,
        "spacing": [float(s) for s in spacing] if spacing is not None else [1.0, 1.0, 1.0],
        "direction": list(training_direction(volumes)),
        "modality": getattr(params, "modality", "ct"),
        "window": [float(w) for w in window] if window is not None else None,
        "volumes": len(volumes),
        "synthetic_volumes": len(getattr(volumes, "synthetic", ())),
    }
    if getattr(dataset, "mask_channels", 0):
        meta["mask_labels"] = list(dataset.mask_labels)
    domain_b = getattr(dataset, "domain_b", None)
    if domain_b is not None:  # cyclegan: translations into B are written in B's intensity
        b_window = getattr(domain_b, "window", None)
        meta["volumes"] = len(dataset.domain_a)
        meta["domain_b"] = {"source": data.cache_b, "images": len(domain_b),
                            "spacing": [float(s) for s in domain_b.spacing],
                            "window": [float(w) for w in b_window] if b_window is not None else None}
    if volumes is not dataset:
        factor = dataset.depth // dataset.size
        meta["plane"] = dataset.plane
        meta["volume_spacing"] = [float(s) * factor for s in volumes.spacing]
    return meta


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def training_direction(dataset: Dataset) -> tuple[float, ...]:
    """The direction of the training volumes' voxel axes: the most common among a cache's entries.

    Newer caches record each entry's ``direction``; for older ones it follows from the source's
    ``original_direction`` and the cache's ``orient``. Phantoms are axis-aligned (identity).
    """
    entries = getattr(dataset, "entries", None)
    if not entries:
        return _IDENTITY
    orient = getattr(getattr(dataset, "params", None), "orient", None)
    counts: dict[tuple[float, ...], int] = {}
    for entry in entries:
        if entry.get("direction") is not None:
            direction = tuple(float(d) for d in entry["direction"])
        elif entry.get("original_direction") is not None:
            original = tuple(float(d) for d in entry["original_direction"])
            direction = oriented_direction(original, orient) if orient else original
        else:
            direction = _IDENTITY
        key = tuple(round(d, 6) + 0.0 for d in direction)
        counts[key] = counts.get(key, 0) + 1
    return max(counts, key=counts.get)


#: Orientation letters: the physical LPS axis each names and the sign of its direction.
_LETTERS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def oriented_direction(direction: tuple[float, ...], code: str = "LPS") -> tuple[float, ...]:
    """The direction after reordering and flipping the index axes to run closest to ``code``.

    What SimpleITK's ``DICOMOrient(image, code)`` does to an image's direction: each index axis
    goes to the place of the letter naming the physical axis it runs most along, pointing the
    letter's way.
    """
    targets = [_LETTERS[letter] for letter in code.upper()]
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    out = np.zeros_like(matrix)
    for column in range(3):
        axis = int(np.argmax(np.abs(matrix[:, column])))
        place = next(i for i, (target, _) in enumerate(targets) if target == axis)
        out[:, place] = matrix[:, column] * np.sign(matrix[axis, column]) * targets[place][1]
    return tuple(float(d) + 0.0 for d in out.ravel())
