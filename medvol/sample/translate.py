"""The inputs of a translation model (``cyclegan``): the images of a 2D cache, one domain's.

``medvol generate --input CACHE [--direction AB|BA]`` translates every image of a 2D image cache
(all splits, in the cache's name order; ``--n`` takes the first N). The cache must hold the source
domain's images as the model saw them: grey, a side that pools to the model's, and the same
intensity window (a CT cache's HU window). A folder of image files is made into such a cache by
``medvol preprocess --images`` first, with the source domain's options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medvol.errors import MedvolError

DIRECTIONS = ("AB", "BA")


def domain_windows(meta: dict[str, Any]) -> dict[str, Any]:
    """``{"A": window or None, "B": window or None}`` of a cyclegan checkpoint's data facts."""
    return {"A": meta.get("window"), "B": (meta.get("domain_b") or {}).get("window")}


def open_inputs(source: str | os.PathLike, size: int, window, direction: str, n: int | None):
    """The cache ``source`` checked against the model's source domain; ``(dataset, count)``.

    Raises:
        MedvolError: not a 2D image cache, colour images, a side that cannot give ``size``, another
            intensity window than the source domain's, or fewer than ``n`` images.
    """
    from medvol.data.cache_store import MANIFEST, load_manifest
    from medvol.data.image_cache import is_image_cache
    from medvol.data.image_datasets import CachedImageDataset

    folder = Path(source)
    if not folder.is_dir():
        raise MedvolError(f"--input {source}: no such folder (a 2D image cache of domain {direction[0]})")
    if not (folder / MANIFEST).is_file() or not is_image_cache(load_manifest(folder)):
        raise MedvolError(f"--input {source}: not a 2D image cache; make one with medvol preprocess --images "
                          f"(the options domain {direction[0]}'s training cache was made with)")
    try:
        dataset = CachedImageDataset(folder, split="all", size=size)
    except MedvolError as error:
        raise MedvolError(f"--input {source}: {error}") from None
    if dataset.channels != 1:
        raise MedvolError(f"--input {source}: images with {dataset.channels} channels; the model translates grey "
                          "images")
    given = list(dataset.window) if dataset.window is not None else None
    wanted = [float(w) for w in window] if window is not None else None
    if given != wanted:
        raise MedvolError(f"--input {source}: intensity window {given} differs from domain {direction[0]}'s "
                          f"training window {wanted}")
    count = len(dataset) if n is None else n
    if count > len(dataset):
        raise MedvolError(f"--input {source}: {len(dataset)} image(s), --n {n} asked for")
    return dataset, count


def input_images(dataset, count: int) -> Iterator[tuple[np.ndarray, str]]:
    """``(float32 (S, S) image in [-1, 1], its name in the cache)`` of the first ``count`` images."""
    for i in range(count):
        yield dataset[i]["image"][0].numpy(), dataset.names[i]
