"""The data of the downstream classification study (``--task classify``): images with a class.

Every set is a :class:`~medvol.study.downstream.data.LabelledSet` whose items are ``(image float32
in [-1, 1], 0 or 1)``: 1 positive (the thesis's TB), 0 negative (normal). The task is binary, as the
thesis's accuracy with false positives and false negatives is.

- Real data: a medvol cache; ``train`` trains, ``val`` (held out) is scored. The class of a volume
  comes from its manifest entry: ``--classify-by FACTOR`` reads a discrete phantom factor that
  ``medvol preprocess`` kept from the ``.factors.json`` sidecar of ``medvol data phantom``
  (``asymmetry``: none / left_small / right_small; ``habitus``; ``mode``), ``--classify-by label``
  the entry's integer class ``label``.
  ``--positive V,V`` names the values that are positive, every other value is negative
  (default: every value but ``none`` for ``asymmetry``, every label but 0 for ``label``).
- Synthetic data: a folder with ``negative/`` and ``positive/`` inside, each holding images marked
  synthetic as ``medvol generate`` writes them (one generator per class, as the thesis trained
  one GAN per class); every file is checked like the segmentation sources (marked synthetic, voxels
  matching the sidecar), masks are not needed.
- Dimension: volumes (S³) train a 3D network. 2D synthetic images (s², s dividing S) make the
  study 2D: the real items are then the central axial slice of each volume, area-pooled to s.
- A 2D image cache (``medvol preprocess --images``, manifest ``"dims": 2``) as the real data: its
  grey images (S²) are the real items, area-pooled to s, each with its class ``label``
  (``--classes folders`` or ``--select-class``; :func:`medvol.data.image_cache.read_image_labels`);
  ``--classify-by label`` only, and ``--positive`` takes class names or label numbers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from medvol.errors import MedvolError
from medvol.study.downstream.data import LabelledSet, _is_2d, _read_array, checked_synthetic, pool_slice, scaled_image

#: The class subfolders of a synthetic source, in label order.
CLASS_DIRS = ("negative", "positive")
#: What ``--positive`` means when not given: every value but these.
DEFAULT_NEGATIVE = {"asymmetry": "none", "label": "0"}


def _value(entry: dict, by: str, cache: str) -> str:
    """The class value of a manifest entry under ``--classify-by by``, as a string."""
    if by == "label":
        return str(int(entry.get("label", 0)))
    factors = entry.get("phantom_factors")
    if not isinstance(factors, dict):
        raise MedvolError(f"--real {cache}: volume {entry.get('name')!r} records no phantom factors; "
                          f"--classify-by {by} reads them (make the scans with `medvol data phantom`, which writes "
                          "the .factors.json sidecars, or use --classify-by label)")
    if by not in factors:
        discrete = sorted(k for k, v in factors.items() if isinstance(v, str))
        raise MedvolError(f"--classify-by {by}: volume {entry.get('name')!r} has no such factor (discrete ones: "
                          f"{', '.join(discrete)})")
    value = factors[by]
    if not isinstance(value, str):
        raise MedvolError(f"--classify-by {by}: a continuous factor ({value!r}); classes need a discrete one "
                          "(asymmetry, habitus, mode)")
    return value


def class_rule(cache: str, by: str, positive: Sequence[str] | None) -> tuple[str, list[str], list[str]]:
    """``(by, positive values, negative values)`` over the whole cache, checked.

    Raises:
        MedvolError: no ``--positive`` where there is no default, a positive value the cache never
            has, or a rule that leaves one class empty in the cache.
    """
    from medvol.data.cache import load_manifest

    manifest = load_manifest(cache)
    entries = manifest["volumes"]
    if manifest.get("dims") == 2:
        if by != "label":
            raise MedvolError(f"--classify-by {by}: {cache} is a 2D image cache; its images carry a class label "
                              "only (--classify-by label)")
        classes = manifest.get("classes") or []
        positive = None if positive is None else [str(classes.index(v)) if v in classes else v for v in positive]
    values = sorted({_value(e, by, cache) for e in entries})
    if positive is None:
        if by not in DEFAULT_NEGATIVE:
            raise MedvolError(f"--classify-by {by}: give --positive VALUE[,VALUE] (its values here: "
                              f"{', '.join(values)})")
        positive = [v for v in values if v != DEFAULT_NEGATIVE[by]]
    unknown = [v for v in positive if v not in values]
    if unknown:
        raise MedvolError(f"--positive {unknown[0]}: no volume of {cache} has {by} {unknown[0]!r} "
                          f"(its values: {', '.join(values)})")
    negative = [v for v in values if v not in positive]
    if not positive or not negative:
        raise MedvolError(f"--classify-by {by} --positive {','.join(positive)}: every volume of {cache} falls in one "
                          f"class (values: {', '.join(values)}); a classifier needs both")
    return by, list(positive), negative


def open_real_classes(cache: str, split: str, rule: tuple[str, list[str], list[str]]) -> LabelledSet:
    """The ``split`` of a cache as volumes with their class (0/1) by ``rule`` (:func:`class_rule`).

    Raises:
        MedvolError: no such cache or split, synthetic entries (refused as real), or a training
            split without both classes.
    """
    from medvol.data.cache import load_manifest
    from medvol.data.datasets import CachedVolumeDataset

    if load_manifest(cache).get("dims") == 2:
        return _real_images(cache, split, rule)
    by, positive, _ = rule
    dataset = CachedVolumeDataset(cache, split=split)
    labels = [int(_value(e, by, cache) in positive) for e in dataset.entries]
    if split == "train" and len(set(labels)) < 2:
        raise MedvolError(f"--real {cache}: its train split holds only {'positive' if labels[0] else 'negative'} "
                          f"volumes under --classify-by {by}; a classifier needs both classes")

    def load(index: int) -> tuple[np.ndarray, int]:
        return np.array(dataset.volume(index), dtype=np.float32), labels[index]

    info = {"cache": str(Path(cache).resolve()), "split": split, "n": len(dataset), "names": list(dataset.names),
            "manifest_sha256": hashlib.sha256((Path(cache) / "manifest.json").read_bytes()).hexdigest(),
            "size": dataset.size, "positive": int(sum(labels)), "negative": int(len(labels) - sum(labels))}
    return LabelledSet(f"real-{split}", 3, [f"cache:{n}" for n in dataset.names], load, info)


def _real_images(cache: str, split: str, rule: tuple[str, list[str], list[str]]) -> LabelledSet:
    """The ``split`` of a 2D image cache as grey images ``(S, S)`` with their class (0/1) by ``rule``."""
    from medvol.data.image_cache import read_image_labels
    from medvol.data.image_datasets import CachedImageDataset

    images = CachedImageDataset(cache, split=split)  # refuses an empty split and synthetic entries
    if images.channels != 1:
        raise MedvolError(f"--real {cache}: a 2D cache of {images.channels}-channel (RGB) images; the classifier "
                          "reads grey images (rebuild it with medvol preprocess --images images --colour grey)")
    found = read_image_labels(cache, split=split)
    labels = [int(str(label) in rule[1]) for label in found["labels"]]
    if split == "train" and len(set(labels)) < 2:
        raise MedvolError(f"--real {cache}: its train split holds only {'positive' if labels[0] else 'negative'} "
                          f"images under --classify-by label; a classifier needs both classes")

    def load(index: int) -> tuple[np.ndarray, int]:
        return np.load(found["files"][index]).astype(np.float32)[0], labels[index]

    info = {"cache": str(Path(cache).resolve()), "split": split, "n": len(labels), "names": found["names"],
            "manifest_sha256": hashlib.sha256(found["manifest"].read_bytes()).hexdigest(), "dims": 2,
            "size": images.side, "classes": found["classes"], "positive": int(sum(labels)),
            "negative": int(len(labels) - sum(labels))}
    return LabelledSet(f"real-{split}", 2, [f"cache:{n}" for n in found["names"]], load, info)


def central_slices(volumes: LabelledSet, side: int) -> LabelledSet:
    """The central axial slice of each volume, area-pooled to ``side``, with the volume's class."""
    size = volumes.info["size"]
    if size % side:
        raise MedvolError(f"2D images of side {side} cannot be pooled from volumes of side {size} (need a divisor)")

    def load(index: int) -> tuple[np.ndarray, int]:
        image, label = volumes.load(index)
        return pool_slice(image[image.shape[0] // 2], np.zeros(image.shape[1:], np.uint8), side)[0], label

    return LabelledSet(volumes.name, 2, [f"{item}#central" for item in volumes.items], load,
                       dict(volumes.info, side=side))


def open_synthetic_classes(name: str, folder: str | Path, *, size: int, window: tuple[float, float] | None,
                           n: int | None) -> LabelledSet:
    """A synthetic source for classification: ``folder/negative/`` and ``folder/positive/``, checked.

    Args:
        name: the source's NAME.
        folder: the folder holding the two class folders.
        size: the real volumes' side S (a 3D image must be S³, a 2D one s² with s | S).
        window: the cache's CT window (HU files are scaled with it), None for MR.
        n: use the first ``n`` images of each class (name order); None: all.

    Raises:
        MedvolError: a missing class folder, one without images, an image not marked synthetic or
            changed since generation, mixed dimensions, a wrong shape.
    """
    from medvol.data.discover import discover

    folder = Path(folder)
    what = f"--synthetic {name}={folder}"
    if folder.is_file():
        raise MedvolError(f"{what}: a file; a classification source is a folder with negative/ and positive/ (write "
                          "each class with `medvol generate CKPT --out DIR/<class>` of a model trained on that class)")
    if not folder.is_dir():
        raise MedvolError(f"{what}: no such folder")
    files: list[tuple[Path, int]] = []
    records = []
    for label, sub in enumerate(CLASS_DIRS):
        path = folder / sub
        if not path.is_dir():
            raise MedvolError(f"{what}: has no {sub}/ folder; a classification source holds negative/ and positive/, "
                              "the images of each class (e.g. `medvol generate` of one model per class)")
        found = [f for f in discover(path) if f.is_file()] if any(path.iterdir()) else []
        found = [f for f in found if not f.name.split(".")[0].endswith(("_mask", "_seg"))]
        if not found:
            raise MedvolError(f"{what}: {sub}/ holds no images")
        files += [(f, label) for f in (found[:n] if n else found)]
    dims = 2 if _is_2d(files[0][0]) else 3
    for path, _ in files:
        is_2d = _is_2d(path)
        if (2 if is_2d else 3) != dims:
            raise MedvolError(f"{what}: mixes 2D images and 3D volumes ({files[0][0].name}, {path.name})")
        records.append(checked_synthetic(what, path, is_2d)["record"] or {})

    def load(index: int) -> tuple[np.ndarray, int]:
        path, label = files[index]
        image, _ = _read_array(path, dims)
        return scaled_image(path, image, dims=dims, size=size, window=window), label

    digest = hashlib.sha256()
    for (path, label), record in zip(files, records):
        digest.update(f"{CLASS_DIRS[label]}/{path.name}:{record.get('voxels_sha256')}\n".encode())
    info = {"folder": str(folder.resolve()), "n": len(files), "dims": dims,
            "positive": sum(label for _, label in files), "negative": sum(1 - label for _, label in files),
            "fingerprint": digest.hexdigest(),
            "checkpoint_sha256": sorted({str(r["checkpoint_sha256"]) for r in records if r.get("checkpoint_sha256")}),
            "models": sorted({str(r.get("model")) for r in records if r.get("model")})}
    return LabelledSet(name, dims, [f"{CLASS_DIRS[label]}/{path.name}" for path, label in files], load, info)
