"""PyTorch datasets of preprocessed volumes, and of their 2D axial slices.

Items are dicts ``{"image": FloatTensor[1, S, S, S] in [-1, 1], "label": int}`` (slices:
``FloatTensor[1, S, S]``). Every dataset exposes ``spacing`` (z, y, x mm of its preprocessed voxels)
and ``window`` (the HU window that [-1, 1] stands for, None for MR) so generated volumes can be
written back in physical units (:func:`medvol.data.preprocess.to_intensity`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medvol.errors import MedvolError

SPLITS = ("train", "val", "all")


class PhantomVolumeDataset(Dataset):
    """Phantoms generated and preprocessed on the fly; item i is the same for every epoch.

    Item i renders :func:`medvol.data.phantom.make_phantom` with the seed ``(seed, i)`` (the file
    ``phantom_<i>`` that ``medvol data phantom --seed <seed>`` writes) and preprocesses it, with
    :func:`medvol.data.preprocess.preprocess_aligned` (numpy alone, the same result) for the default
    CT protocol (LPS, aspect kept),
    else :func:`medvol.data.preprocess.preprocess_volume` (SimpleITK and MONAI).

    Args:
        size: output cube edge S (32, 64, 128, 256 or 512).
        length: number of items.
        seed: dataset seed.
        nodules: odd items carry lung nodules and have label 1, even items none and label 0
            (a balanced two-class set for conditional models); without it every label is 0.
        params: preprocessing parameters (default: the CT protocol at ``size``).

    Example:
        >>> ds = PhantomVolumeDataset(64, length=8, seed=0)     # doctest: +SKIP
        >>> ds[0]["image"].shape                                 # doctest: +SKIP
        torch.Size([1, 64, 64, 64])
    """

    def __init__(self, size: int, length: int, seed: int = 0, nodules: bool = False, params=None):
        from medvol.data.phantom import FOV_XY_MM, FOV_Z_MM
        from medvol.data.preprocess import PreprocessParams

        self.params = params if params is not None else PreprocessParams(size=size)
        if self.params.size != size:
            raise MedvolError(f"params.size {self.params.size} differs from size {size}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise MedvolError(f"invalid dataset length {length!r}: expected a positive integer")
        self.size, self.length, self.seed, self.nodules = int(size), length, int(seed), bool(nodules)
        self.window = self.params.intensity_window
        if self.params.keep_aspect:
            # The phantom's longest physical extent (the in-plane FOV) spans the S output voxels.
            self.spacing = (max(FOV_XY_MM, FOV_Z_MM) / size,) * 3
        else:
            self.spacing = (FOV_Z_MM / size, FOV_XY_MM / size, FOV_XY_MM / size)

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> int:
        return int(self.nodules and index % 2 == 1)

    def volume(self, index: int) -> np.ndarray:
        """The preprocessed float32 (S, S, S) array of item ``index``."""
        from medvol.data.phantom import make_phantom
        from medvol.data.preprocess import preprocess_aligned, preprocess_volume

        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index %= self.length
        volume, _ = make_phantom(self.size, (self.seed, index), nodules=bool(self.label(index)))
        p = self.params
        if p.modality == "ct" and p.keep_aspect and p.orient in (None, "LPS"):  # the default: numpy does it
            return preprocess_aligned(volume, p)
        return preprocess_volume(volume, p)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.from_numpy(self.volume(index))[None], "label": self.label(index)}


class CachedVolumeDataset(Dataset):
    """Volumes of a cache built by :func:`medvol.data.cache.build_cache`, memory-mapped.

    Args:
        cache_dir: the cache folder (with ``manifest.json``).
        split: ``"train"``, ``"val"`` or ``"all"``.

    Attributes:
        spacing: median output spacing (z, y, x mm) over the split's volumes.
        spacings: per-item output spacing.
        window: HU window of the cache's CT scaling, None for MR.
        names: per-item volume names.
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str = "train"):
        from medvol.data.cache import load_manifest
        from medvol.data.preprocess import PreprocessParams

        if split not in SPLITS:
            raise MedvolError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        self.cache_dir = Path(cache_dir)
        self.manifest = load_manifest(self.cache_dir)
        self.params = PreprocessParams.from_dict(self.manifest["params"])
        self.entries = [v for v in self.manifest["volumes"] if split == "all" or v["split"] == split]
        if not self.entries:
            raise MedvolError(f"{self.cache_dir}: the cache has no {split!r} volumes")
        self.split = split
        self.size = self.params.size
        self.window = self.params.intensity_window
        self.names = [v["name"] for v in self.entries]
        self.spacings = [tuple(float(s) for s in v["spacing"]) for v in self.entries]
        self.spacing = tuple(float(s) for s in np.median(np.asarray(self.spacings), axis=0))

    def __len__(self) -> int:
        return len(self.entries)

    def label(self, index: int) -> int:
        return int(self.entries[index].get("label", 0))

    def volume(self, index: int) -> np.ndarray:
        """The memory-mapped float32 (S, S, S) array of item ``index`` (read-only)."""
        path = self.cache_dir / self.entries[index]["file"]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise MedvolError(f"{path}: unreadable cached volume ({error}); rebuild the cache") from None
        if array.shape != (self.size,) * 3:
            raise MedvolError(f"{path}: shape {array.shape} does not match the cache size {self.size}")
        return array

    def __getitem__(self, index: int) -> dict:
        image = torch.from_numpy(np.array(self.volume(index), dtype=np.float32))[None]
        return {"image": image, "label": self.label(index)}


class SliceDataset(Dataset):
    """The 2D axial slices of a volume dataset, for 2D models.

    Item ``k`` is slice ``k % S`` of volume ``k // S`` (or the k-th kept slice with
    ``content_only``): ``{"image": FloatTensor[1, S, S], "label": int}``.

    Args:
        volumes: a :class:`PhantomVolumeDataset` or :class:`CachedVolumeDataset` (anything with
            ``volume(i)``, ``label(i)``, ``__len__``, ``spacing`` and ``window``).
        content_only: drop slices that are entirely padding/background (every voxel at -1); this
            scans every volume once.

    Attributes:
        spacing: (y, x) mm of the slice pixels; window: as the volume dataset's.
    """

    def __init__(self, volumes, content_only: bool = False):
        self.volumes = volumes
        self.window = volumes.window
        self.spacing = tuple(volumes.spacing[1:])
        self._cached_index: int | None = None
        self._cached: np.ndarray | None = None
        first = volumes.volume(0)
        self.depth = int(first.shape[0])
        if content_only:
            index = []
            for v in range(len(volumes)):
                array = first if v == 0 else volumes.volume(v)
                keep = np.flatnonzero(np.asarray(array).reshape(self.depth, -1).max(axis=1) > -1.0)
                index.extend((v, int(z)) for z in keep)
            self.index = index
        else:
            self.index = None

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.volumes) * self.depth

    def _volume(self, v: int) -> np.ndarray:
        # Consecutive slices come from the same volume: keep the last one (phantoms are rendered).
        if self._cached_index != v:
            self._cached, self._cached_index = self.volumes.volume(v), v
        return self._cached

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} slices")
        k %= len(self)
        v, z = self.index[k] if self.index is not None else divmod(k, self.depth)
        image = torch.from_numpy(np.array(self._volume(v)[z], dtype=np.float32))[None]
        return {"image": image, "label": self.volumes.label(v)}
