"""The PyTorch dataset of a 2D image cache (:mod:`medvol.data.image_cache`), for the 2D models.

Items are ``{"image": FloatTensor[C', s, s], "label": int}``, as :class:`medvol.data.datasets.SliceDataset`
gives for slices of volumes: the image channels (1 grey, 3 RGB) in [-1, 1], then with ``masks`` the
binary mask channel (-1 / 1: 1 where the cached mask is nonzero; what ``spade`` and ``pix2pix``
are conditioned on), or with ``mask_channels`` K the mask's classes 1..K one-hot
(:func:`medvol.data.paired.one_hot_channels`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medvol.errors import MedvolError

SPLITS = ("train", "val", "all")


class CachedImageDataset(Dataset):
    """The images of a 2D cache, memory-mapped.

    Args:
        cache_dir: a cache built by :func:`medvol.data.image_cache.build_image_cache`.
        split: ``"train"``, ``"val"`` or ``"all"``.
        allow_synthetic: accept entries marked synthetic (refused by default, one line).
        size: side s of the items; a divisor of the cache's S (area-averaged image, max-pooled mask);
            None keeps S.
        masks: add the binary mask channel (every item needs a mask).
        mask_channels: K > 0 adds K one-hot channels of the mask instead.
        labels: ``"volume"`` (each entry's class ``label``) or ``"mask"`` (1 when its mask has a
            nonzero pixel, 0 otherwise).
        keep_class: keep only the items of this label; None keeps all.
        content_only: drop blank images (every pixel at -1).

    Attributes:
        spacing: (row, column) mm of the items' pixels (median over the split); window: the HU
        window of CT slices, else None; params: the cache's :class:`ImageParams`; entries, names,
        synthetic, mask_labels, has_labels, classes, channels.

    Example:
        >>> ds = CachedImageDataset("tumour64", masks=True)     # doctest: +SKIP
        >>> ds[0]["image"].shape                                 # doctest: +SKIP
        torch.Size([2, 64, 64])
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str = "train", allow_synthetic: bool = False, *,
                 size: int | None = None, masks: bool = False, mask_channels: int = 0, labels: str = "volume",
                 keep_class: int | None = None, content_only: bool = False):
        from medvol.data.cache_store import entry_file, load_manifest
        from medvol.data.image_cache import ImageParams, is_image_cache
        from medvol.data.provenance import refuse_synthetic_entries

        if split not in SPLITS:
            raise MedvolError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        if labels not in ("volume", "mask"):
            raise MedvolError(f"slice_labels: {labels!r} is not one of volume, mask")
        if masks and mask_channels:
            raise MedvolError("masks: the binary mask channel and mask_channels (the mask's one-hot channels) "
                              "exclude each other; choose one")
        self.cache_dir = Path(cache_dir)
        self.manifest = load_manifest(self.cache_dir)
        if not is_image_cache(self.manifest):
            raise MedvolError(f"{self.cache_dir}: a 3D volume cache, not a 2D image cache")
        self.params = ImageParams.from_dict(self.manifest["params"])
        entries = [e for e in self.manifest["volumes"] if split == "all" or e.get("split") == split]
        if not entries:
            raise MedvolError(f"{self.cache_dir}: the cache has no {split!r} images")
        self.synthetic = refuse_synthetic_entries(self.cache_dir, entries, split, allow_synthetic)
        self.side = self.params.size
        self.size = self.side if size is None else int(size)
        if self.size < 1 or self.side % self.size:
            raise MedvolError(f"size: images of side {self.size} cannot be pooled from the cache's {self.side} "
                              "(need a divisor)")
        self.masks, self.mask_channels, self.labels = bool(masks), int(mask_channels), labels
        self.mask_labels = tuple(self.manifest.get("mask_labels") or ())
        self.classes = self.manifest.get("classes")
        self.window = tuple(self.params.window) if self.params.source == "slices" and self.params.modality == "ct" \
            else None
        needs_mask = self.masks or self.mask_channels > 0
        if needs_mask:
            bare = [e["name"] for e in entries if not isinstance(e.get("labels"), str)]
            if bare:
                raise MedvolError(f"{self.cache_dir}: {len(bare)} of its {len(entries)} {split} images have no mask "
                                  f"(e.g. {bare[0]!r}); mask-conditioned training needs a mask for every image")
        if self.mask_channels and len(self.mask_labels) < self.mask_channels:
            raise MedvolError(f"{self.cache_dir}: its masks have {len(self.mask_labels)} class(es), fewer than "
                              f"model.mask_channels {self.mask_channels}")
        kept = []
        for entry in entries:
            label = self._entry_label(entry)
            if keep_class is not None and label != keep_class:
                continue
            kept.append((entry, label))
        self.entries = [e for e, _ in kept]
        self._labels = [label for _, label in kept]
        self.files = [entry_file(self.cache_dir, e) for e in self.entries]
        self.label_files = [entry_file(self.cache_dir, e, "labels") if needs_mask else None for e in self.entries]
        if content_only:
            keep = [i for i in range(len(self.entries)) if float(self._array(i).max()) > -1.0]
            self.entries = [self.entries[i] for i in keep]
            self._labels = [self._labels[i] for i in keep]
            self.files = [self.files[i] for i in keep]
            self.label_files = [self.label_files[i] for i in keep]
        if not self.entries:
            raise MedvolError(f"{self.cache_dir}: no {split} images left (slice_class {keep_class}"
                              f"{', blank images skipped' if content_only else ''})")
        self.names = [e["name"] for e in self.entries]
        self.channels = int(self._array(0).shape[0])
        try:
            spacings = np.asarray([[float(s) for s in e.get("spacing") or (1.0, 1.0)] for e in self.entries])
        except (TypeError, ValueError):
            raise MedvolError(f"{self.cache_dir / 'manifest.json'}: an entry's spacing is not two numbers") from None
        if spacings.ndim != 2 or spacings.shape[1] != 2 or not np.isfinite(spacings).all():
            raise MedvolError(f"{self.cache_dir / 'manifest.json'}: an entry's spacing is not two numbers")
        factor = self.side // self.size
        self.spacing = tuple(float(s) * factor for s in np.median(spacings, axis=0))

    def _entry_label(self, entry: dict) -> int:
        if self.labels == "mask":
            return int(any(int(v) > 0 for v in entry.get("label_values") or []))
        return int(entry.get("label", 0))

    @property
    def has_labels(self) -> bool:
        return all(isinstance(e.get("labels"), str) for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def label(self, index: int) -> int:
        return self._labels[index]

    def _array(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise MedvolError(f"{path}: unreadable cached image ({str(error).splitlines()[0]}); rebuild the cache") \
                from None
        if array.ndim != 3 or array.shape[1:] != (self.side, self.side) or array.dtype != np.float32:
            raise MedvolError(f"{path}: {array.dtype} array of shape {array.shape}, expected float32 "
                              f"(C, {self.side}, {self.side}) as the manifest says")
        return array

    def image_and_labels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, S, S), mask (S, S) uint8)`` of item ``index`` at the cache's side S.

        Raises:
            MedvolError: the item has no mask, or its file is missing or damaged (names it).
        """
        return np.array(self._array(index)), entry_labels2d(self.cache_dir, self.entries[index], self.side)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image = torch.from_numpy(np.array(self._array(index), dtype=np.float32))
        factor = self.side // self.size
        if factor > 1:
            image = torch.nn.functional.avg_pool2d(image[None], factor)[0]
        if self.masks or self.mask_channels:
            _, labels = self.image_and_labels(index)
            mask = torch.from_numpy(labels.astype(np.float32))[None]
            if factor > 1:
                mask = torch.nn.functional.max_pool2d(mask[None], factor)[0]
            if self.masks:
                image = torch.cat([image, (mask > 0).float() * 2 - 1])
            else:
                from medvol.data.paired import one_hot_channels

                image = torch.cat([image, torch.from_numpy(one_hot_channels(mask[0].numpy(), self.mask_channels))])
        return {"image": image, "label": self._labels[index]}


def entry_labels2d(cache_dir: Path, entry: dict, side: int) -> np.ndarray:
    """The uint8 ``(S, S)`` mask of a 2D cache entry, checked against the manifest.

    Raises:
        MedvolError: the entry has no mask, or its file is missing, unreadable or of another shape.
    """
    from medvol.data.cache_read import _read_cached
    from medvol.data.cache_store import entry_file

    if not isinstance(entry.get("labels"), str):
        raise MedvolError(f"{cache_dir}: image {entry.get('name')!r} has no mask")
    return _read_cached(entry_file(cache_dir, entry, "labels"), "mask", (side, side), np.uint8)
