"""Unpaired training items of two 2D image sets (domain A and domain B), for ``cyclegan``.

Item ``k`` is ``{"image": [2, s, s], "label": 0}``: channel 0 image ``k mod n_A`` of domain A,
channel 1 image ``pi(k) mod n_B`` of domain B, where ``pi`` is a permutation of the item indices
drawn from ``seed`` alone. The training loader shuffles the items (``seed + epoch``), so the order
of the A images and that of the B images are two independent seeded shuffles; the B partner of an
A image stays the same from epoch to epoch, which no loss reads (CycleGAN never compares an A
image with a B image), while every batch is a fresh mixture of both sets. There are
``max(n_A, n_B)`` items, so every image of the larger set is seen once per epoch and those of the
smaller set about ``max / n`` times.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from medvol.errors import MedvolError


class UnpairedImageDataset(Dataset):
    """Domain A's and domain B's images side by side as two channels, unpaired.

    Args:
        a, b: datasets of ``{"image": [1, s, s], ...}`` items (:class:`CachedImageDataset`).
        seed: the seed of B's permutation of the items.
        names: how the two sources are named in errors (``data.source ...``, ``data.cache_b ...``).

    Attributes:
        domain_a, domain_b: the two datasets; ``spacing``, ``window``, ``entries``, ``params`` and
        ``synthetic`` are domain A's (what generation records of the training data).

    Raises:
        MedvolError: either set empty, images of different sides or more than one channel.
    """

    def __init__(self, a: Dataset, b: Dataset, seed: int = 0, names: tuple[str, str] = ("domain A", "domain B")):
        for data, name in zip((a, b), names):
            if len(data) == 0:
                raise MedvolError(f"{name}: no images")
        shape_a, shape_b = tuple(a[0]["image"].shape), tuple(b[0]["image"].shape)
        for shape, name in ((shape_a, names[0]), (shape_b, names[1])):
            if shape[0] != 1:
                raise MedvolError(f"{name}: images with {shape[0]} channels; cyclegan translates grey images "
                                  "(preprocess with --colour grey)")
        if shape_a != shape_b:
            raise MedvolError(f"{names[1]}: images of shape {list(shape_b)}, but {names[0]} has {list(shape_a)}; "
                              "both domains need the same side")
        self.domain_a, self.domain_b = a, b
        self.length = max(len(a), len(b))
        self.partner = torch.randperm(self.length, generator=torch.Generator().manual_seed(int(seed))).tolist()
        for key in ("spacing", "window", "entries", "params", "synthetic"):
            if hasattr(a, key):
                setattr(self, key, getattr(a, key))

    def __len__(self) -> int:
        return self.length

    def indices(self, k: int) -> tuple[int, int]:
        """``(A index, B index)`` of item ``k``."""
        return k % len(self.domain_a), self.partner[k] % len(self.domain_b)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < self.length:
            raise IndexError(f"index {k} out of range for {self.length} items")
        i, j = self.indices(k)
        image = torch.cat([self.domain_a[i]["image"], self.domain_b[j]["image"]])
        return {"image": image, "label": 0}
