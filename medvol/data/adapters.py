"""A medvol cache as a MONAI ``Dataset`` or a TorchIO ``SubjectsDataset``.

Orientation, once for every function here:

- **The cache** holds each volume as a (D, H, W) = (z, y, x) array (NumPy / SimpleITK order: the
  last axis varies fastest). Its manifest gives ``spacing`` along those axes, (z, y, x) mm, the
  ``origin`` (x, y, z) of voxel (0, 0, 0) and the 3x3 ``direction`` cosines, both in ITK's
  **LPS** physical space (x grows to the patient's Left, y to Posterior, z to Superior), as
  DICOM, ITK and SimpleITK use.
- **MONAI and TorchIO** index a volume the other way round, (x, y, z) = ITK's index (i, j, k) or
  NIfTI's voxel order, with a channel first: ``[1, W, H, D]``. Their affines are 4x4 voxel-to-
  world matrices in **RAS** (x to the Right, y Anterior, z Superior), as nibabel and NIfTI use:
  the LPS matrix with its first two rows negated.

So the adapters transpose every array to ``[1, x, y, z]`` and give an RAS affine, which is what
MONAI's ``LoadImage`` (with ``ensure_channel_first``) and TorchIO return for the same volume
written as NIfTI by ``medvol preprocess --export-nifti``; the tests check both against such
files. Intensities stay the cache's ([-1, 1]); label maps are uint8 class ids (names in the
manifest's ``mask_labels``).

MONAI and TorchIO are imported only when an adapter is called; neither is a dependency of medvol
(MONAI comes with ``[data]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medvol.errors import MedvolError

#: Multiply an LPS affine by this on the left to get the RAS one (and back).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def entry_affine(entry: dict[str, Any], space: str = "RAS") -> np.ndarray:
    """The 4x4 voxel-to-world matrix of a cache entry for the (x, y, z) = (i, j, k) index order.

    Column c of the 3x3 part is ITK's direction column c scaled by the spacing along index axis
    c (the manifest's ``spacing`` reversed: it is z, y, x); the last column is the origin. In
    ``"LPS"`` this is ITK's own mapping; ``"RAS"`` (MONAI's and TorchIO's default) negates the
    first two rows.
    """
    if space not in ("RAS", "LPS"):
        raise MedvolError(f"space {space!r}: choose RAS or LPS")
    try:
        spacing_xyz = np.asarray(entry["spacing"], dtype=np.float64)[::-1]
        direction = np.asarray(entry["direction"], dtype=np.float64).reshape(3, 3)
        origin = np.asarray(entry["origin"], dtype=np.float64).reshape(3)
    except (KeyError, TypeError, ValueError):
        raise MedvolError(f"cache entry {entry.get('name')!r}: no valid spacing/origin/direction (a cache "
                          "of manifest format 1; rebuild it with `medvol preprocess`)") from None
    if spacing_xyz.shape != (3,) or not np.isfinite(direction).all() or not (spacing_xyz > 0).all():
        raise MedvolError(f"cache entry {entry.get('name')!r}: invalid spacing {entry['spacing']!r}")
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing_xyz[None, :]
    affine[:3, 3] = origin
    return LPS_TO_RAS @ affine if space == "RAS" else affine


def cache_items(cache_dir: str | os.PathLike, split: str = "all", allow_synthetic: bool = False) -> list[dict]:
    """One dict per volume of the cache's ``split``: the list a MONAI ``Dataset`` takes.

    Keys: ``image`` (the ``.npy`` path), ``label`` (the label map's ``.npy`` path; only for a
    volume that has one), ``name``, ``split``, and the geometry in the (x, y, z) index order of
    the tensors :class:`LoadCachedVolume` makes of them: ``spacing`` (x, y, z mm), ``origin``
    (LPS x, y, z mm of voxel (0, 0, 0), as in the manifest), ``direction`` (3x3 LPS direction
    cosines, columns along x, y, z, as in the manifest), ``affine`` (4x4 RAS).

    Raises:
        MedvolError: not a cache, an unknown or empty split, synthetic volumes without
            ``allow_synthetic``, or a manifest file name that leads outside the cache.
    """
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.outputs import safe_relpath

    data = CachedVolumeDataset(cache_dir, split=split, allow_synthetic=allow_synthetic)
    items = []
    for entry in data.entries:
        item = {
            "image": str(safe_relpath(data.cache_dir, entry["file"], "volume file")),
            "name": entry["name"],
            "split": entry["split"],
            "spacing": tuple(float(s) for s in entry["spacing"])[::-1],
            "origin": tuple(float(o) for o in entry["origin"]),
            "direction": np.asarray(entry["direction"], dtype=np.float64).reshape(3, 3),
            "affine": entry_affine(entry, "RAS"),
        }
        if isinstance(entry.get("labels"), str):
            item["label"] = str(safe_relpath(data.cache_dir, entry["labels"], "label map file"))
        items.append(item)
    return items


def _read(path: str, dtype, size: int | None = None) -> np.ndarray:
    """The cached (z, y, x) array at ``path`` as an (x, y, z) array of ``dtype``."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable cached array ({error}); rebuild the cache") from None
    if array.ndim != 3 or (size is not None and array.shape != (size,) * 3):
        raise MedvolError(f"{path}: shape {array.shape} is not the cache's volume shape")
    return np.ascontiguousarray(np.asarray(array, dtype=dtype).transpose(2, 1, 0))


class LoadCachedVolume:
    """MONAI-style dictionary transform: the paths of :func:`cache_items` to ``MetaTensor`` s.

    ``image`` becomes float32 and ``label`` uint8, both ``[1, x, y, z]`` (the cache's (z, y, x)
    array transposed, channel first) with the item's RAS ``affine`` and ``space`` ``"RAS"`` in
    their metadata, like MONAI's ``LoadImaged(..., ensure_channel_first=True)`` on the exported
    NIfTI file. A plain callable, so that importing this module does not import MONAI.
    """

    def __call__(self, item: dict) -> dict:
        from monai.data import MetaTensor
        from monai.utils import MetaKeys, SpaceKeys

        out = dict(item)
        for key, dtype in (("image", np.float32), ("label", np.uint8)):
            if key not in item:
                continue
            array = _read(item[key], dtype)
            meta = {MetaKeys.ORIGINAL_AFFINE: item["affine"],
                    MetaKeys.SPACE: SpaceKeys.RAS, MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
                    "filename_or_obj": item[key], "spacing": np.asarray(item["spacing"])}
            out[key] = MetaTensor(array[None], affine=item["affine"], meta=meta)
        return out


def to_monai(cache_dir: str | os.PathLike, split: str = "all", transform: Callable | None = None,
             allow_synthetic: bool = False):
    """A ``monai.data.Dataset`` of the cache's ``split``; volumes are read when an item is.

    Each item is a dict (:func:`cache_items`) whose ``image`` (and ``label`` where the volume has a
    label map) are ``MetaTensor`` s ``[1, x, y, z]`` with RAS affines (:class:`LoadCachedVolume`),
    then passed through ``transform`` (e.g. a ``monai.transforms.Compose`` of dictionary
    transforms keyed ``image`` / ``label``).

    Example:
        >>> ds = to_monai("cache64", split="train")                                # doctest: +SKIP
        >>> ds[0]["image"].shape, ds[0]["image"].affine.shape                      # doctest: +SKIP
        (torch.Size([1, 64, 64, 64]), torch.Size([4, 4]))
    """
    try:
        from monai.data import Dataset
        from monai.transforms import Compose
    except ImportError:
        raise MedvolError("to_monai needs MONAI: pip install 'medvol[data]'") from None
    steps = [LoadCachedVolume()] + ([transform] if transform is not None else [])
    return Dataset(data=cache_items(cache_dir, split, allow_synthetic), transform=Compose(steps))


def to_torchio(cache_dir: str | os.PathLike, split: str = "all", transform: Callable | None = None,
               allow_synthetic: bool = False):
    """A ``torchio.SubjectsDataset`` of the cache's ``split``; volumes are read lazily.

    One ``Subject`` per volume with ``image`` (``ScalarImage``, float32) and, where the volume has
    a label map, ``label`` (``LabelMap``, class ids), each ``[1, x, y, z]`` with the RAS affine
    TorchIO uses; plus ``name``, ``split`` and the geometry keys of :func:`cache_items`.

    Raises:
        MedvolError: TorchIO is not installed (it is optional: ``pip install torchio``), or what
            :func:`cache_items` refuses.
    """
    try:
        import torchio as tio
    except ImportError:
        raise MedvolError("to_torchio needs TorchIO: pip install torchio") from None
    import torch

    def reader(dtype, affine):
        return lambda path: (torch.from_numpy(_read(str(path), dtype)[None]), affine)

    subjects = []
    for item in cache_items(cache_dir, split, allow_synthetic):
        images = {}
        for key, kind, dtype in (("image", tio.ScalarImage, np.float32), ("label", tio.LabelMap, np.uint8)):
            if key in item:
                images[key] = kind(Path(item[key]), reader=reader(dtype, item["affine"]))
        meta = {k: v for k, v in item.items() if k not in ("image", "label", "affine")}
        subjects.append(tio.Subject(**images, **meta))
    return tio.SubjectsDataset(subjects, transform=transform)
