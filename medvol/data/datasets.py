"""PyTorch datasets of preprocessed volumes, and of their 2D slices.

Items are dicts ``{"image": FloatTensor[1, S, S, S] in [-1, 1], "label": int}`` (slices:
``FloatTensor[C, S', S']``, the image channel then the optional mask channel). Every dataset exposes ``spacing`` (z, y, x mm of its preprocessed voxels)
and ``window`` (the HU window that [-1, 1] stands for, None for MR) so generated volumes can be
written back in physical units (:func:`medvol.data.preprocess.to_intensity`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medvol.errors import MedvolError

SPLITS = ("train", "val", "all")
PLANES = ("axial", "coronal", "sagittal")
SLICE_LABELS = ("volume", "mask")


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
        return self._render(index, with_mask=False)[0]

    def volume_and_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(volume(index), mask)``: the nodule mask, uint8 (S, S, S), rendered with the image and
        carried through the same blank-slice handling, resampling and padding (all zeros for an item
        without nodules). Only for the default CT protocol (:func:`preprocess_aligned`)."""
        array, labels = self._render(index, with_mask=True)
        return array, (labels == 2).astype(np.uint8)

    def volume_and_labels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(volume(index), labels)``: the label map, uint8 (S, S, S), 0 background, 1 lungs,
        2 nodules (:data:`mask_labels`; :func:`medvol.data.phantom.phantom_labels`), aligned voxel
        for voxel with the image like :meth:`volume_and_mask`, whose mask is ``labels == 2``.
        Only for the default CT protocol (:attr:`has_labels`)."""
        return self._render(index, with_mask=True)

    @property
    def mask_labels(self) -> tuple[str, ...]:
        """Names of the label map's classes 1, 2: ``("lungs", "nodules")``."""
        from medvol.data.phantom import MASK_LABELS

        return MASK_LABELS

    @property
    def has_labels(self) -> bool:
        """Whether :meth:`volume_and_labels` works: the default CT protocol only."""
        return self._aligned()

    def _aligned(self) -> bool:
        p = self.params
        return p.modality == "ct" and p.keep_aspect and p.orient in (None, "LPS")

    def _render(self, index: int, with_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image, label map or None)`` of item ``index``."""
        from medvol.data.io import Volume
        from medvol.data.phantom import phantom_labels, render_phantom
        from medvol.data.preprocess import preprocess_aligned, preprocess_volume

        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index %= self.length
        phantom = render_phantom(self.size, (self.seed, index), nodules=bool(self.label(index)))
        volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
        if with_mask and not self._aligned():
            raise MedvolError("masks: only phantoms preprocessed with the default CT protocol carry masks")
        if not self._aligned():
            return preprocess_volume(volume, self.params), None
        array = preprocess_aligned(volume, self.params)  # the default: numpy does it
        if not with_mask:
            return array, None
        return array, _align_labels(phantom_labels(phantom), volume, self.params)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.from_numpy(self.volume(index))[None], "label": self.label(index)}


def _align_labels(labels: np.ndarray, volume, params) -> np.ndarray:
    """:func:`_align_mask` for a label map whose classes nest (a higher label painted over a lower
    one): class ``c`` is where the aligned ``labels >= c`` holds and ``labels >= c + 1`` does not.

    Linear resampling and the 0.5 threshold keep the nesting (``labels >= c + 1`` lies inside
    ``labels >= c``), so every voxel gets one integer label; the top class aligns exactly as a
    binary mask of it would.
    """
    out = np.zeros((params.size,) * 3, dtype=np.uint8)
    for c in range(1, int(labels.max()) + 1):
        out += _align_mask(labels >= c, volume, params)
    return out


def _align_mask(mask: np.ndarray, volume, params) -> np.ndarray:
    """The geometry of :func:`medvol.data.preprocess.preprocess_aligned` applied to a label mask.

    Blank slices are found on the image (as for the image itself), the mask is resampled linearly
    without smoothing and thresholded at 0.5, and padded with 0.
    """
    from medvol.data.preprocess import _resample_axis, blank_slice_mask, handle_blank_slices

    blank = blank_slice_mask(np.asarray(volume.array, dtype=np.float32), params.blank_threshold)
    array = handle_blank_slices(np.asarray(mask, dtype=np.float32), blank, params.blank_slices)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    extent = spacing * np.asarray(array.shape)
    iso = max(float(spacing.min()), float(extent.max()) / params.size)
    for axis in range(3):
        array, _ = _resample_axis(array, axis, spacing[axis], iso, max(1, int(round(extent[axis] / iso))))
    size = params.size
    pads = [((size - n) // 2, size - n - (size - n) // 2) for n in array.shape]
    return (np.pad(array, pads) >= 0.5).astype(np.uint8)


def take_slice(array: np.ndarray, plane: str, k: int) -> np.ndarray:
    """Slice ``k`` of a (z, y, x) array: axial ``[k]``; coronal ``[:, k]`` and sagittal ``[:, :, k]``
    with z flipped so that superior is the top row (as radiologists view them)."""
    if plane == "axial":
        return array[k]
    if plane == "coronal":
        return array[::-1, k, :]
    return array[::-1, :, k]


class CachedVolumeDataset(Dataset):
    """Volumes of a cache built by :func:`medvol.data.cache.build_cache`, memory-mapped.

    Args:
        cache_dir: the cache folder (with ``manifest.json``).
        split: ``"train"``, ``"val"`` or ``"all"``.
        allow_synthetic: accept entries marked synthetic (:mod:`medvol.data.provenance`); without
            it a split holding any is refused with one line naming the cache and an entry.

    Attributes:
        spacing: median output spacing (z, y, x mm) over the split's volumes.
        spacings: per-item output spacing.
        window: HU window of the cache's CT scaling, None for MR.
        names: per-item volume names.
        synthetic: names of the items that are synthetic (allowed by ``allow_synthetic``).
        mask_labels: class names of the cache's label maps (label i is ``mask_labels[i - 1]``),
            ``()`` for a cache without them.
        has_labels: every item of the split has a label map (:meth:`volume_and_labels`).
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str = "train", allow_synthetic: bool = False):
        from medvol.data.cache import entry_file, load_manifest
        from medvol.data.preprocess import PreprocessParams
        from medvol.data.provenance import refuse_synthetic_entries

        if split not in SPLITS:
            raise MedvolError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        self.cache_dir = Path(cache_dir)
        self.manifest = load_manifest(self.cache_dir)
        if self.manifest.get("dims") == 2:
            raise MedvolError(f"{self.cache_dir}: a 2D image cache (medvol preprocess --images); it trains the "
                              "2D models, not a volume model")
        self.params = PreprocessParams.from_dict(self.manifest["params"])
        self.entries = [v for v in self.manifest["volumes"] if split == "all" or v["split"] == split]
        if not self.entries:
            raise MedvolError(f"{self.cache_dir}: the cache has no {split!r} volumes")
        self.synthetic = refuse_synthetic_entries(self.cache_dir, self.entries, split, allow_synthetic)
        self.split = split
        self.size = self.params.size
        self.window = self.params.intensity_window
        self.names = [v["name"] for v in self.entries]
        # Checked once here: a link out of the cache is refused before training starts.
        self.files = [entry_file(self.cache_dir, v) for v in self.entries]
        self.spacings = [tuple(float(s) for s in v["spacing"]) for v in self.entries]
        self.spacing = tuple(float(s) for s in np.median(np.asarray(self.spacings), axis=0))
        self.mask_labels = tuple(self.manifest.get("mask_labels") or ())

    @property
    def has_labels(self) -> bool:
        return all(isinstance(e.get("labels"), str) for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def label(self, index: int) -> int:
        return int(self.entries[index].get("label", 0))

    def volume(self, index: int) -> np.ndarray:
        """The memory-mapped float32 (S, S, S) array of item ``index`` (read-only)."""
        path = self.files[index]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise MedvolError(f"{path}: unreadable cached volume ({error}); rebuild the cache") from None
        if array.shape != (self.size,) * 3:
            raise MedvolError(f"{path}: shape {array.shape} does not match the cache size {self.size}")
        return array

    def volume_and_labels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(volume(index), labels)``: the label map, uint8 (S, S, S) on the volume's grid.

        Raises:
            MedvolError: the item has no label map (names the cache and the volume), or its file
                is missing or damaged (names the file).
        """
        from medvol.data.cache import entry_labels

        return self.volume(index), entry_labels(self.cache_dir, self.manifest, self.entries[index])

    def volume_and_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(volume(index), mask)``: uint8 (S, S, S), 1 where the label map is nonzero (any class):
        the binary mask channel of ``data.masks`` (``spade``, ``pix2pix``).

        Raises:
            MedvolError: as :meth:`volume_and_labels`.
        """
        array, labels = self.volume_and_labels(index)
        return array, (labels > 0).astype(np.uint8)

    def __getitem__(self, index: int) -> dict:
        image = torch.from_numpy(np.array(self.volume(index), dtype=np.float32))[None]
        return {"image": image, "label": self.label(index)}


class SliceDataset(Dataset):
    """The 2D slices of a volume dataset in one plane, for 2D models.

    Without filtering, item ``k`` is slice ``k % S`` of volume ``k // S``; with ``content_only``,
    ``labels="mask"`` or ``keep_class`` the kept ``(volume, slice)`` pairs are listed once at
    construction (every volume is read once). Items: ``{"image": FloatTensor[C, s, s], "label": int}``
    with C = 1, or 2 with ``masks`` (the image, then the mask as -1 / 1, generated with the image),
    or 1 + K with ``mask_channels`` K (the image, then the label map's classes 1..K one-hot as -1 / 1,
    :func:`medvol.data.paired.one_hot_channels`).

    Args:
        volumes: a :class:`PhantomVolumeDataset` or :class:`CachedVolumeDataset` (anything with
            ``volume(i)``, ``label(i)``, ``__len__``, ``spacing`` and ``window``; with ``masks`` or
            ``labels="mask"`` also ``volume_and_mask(i)``, which only phantoms have; with
            ``mask_channels`` ``has_labels``, ``mask_labels`` and ``volume_and_labels(i)``).
        content_only: drop blank slices (every pixel at -1: padding or background).
        plane: "axial", "coronal" or "sagittal" (see :func:`take_slice` for the orientation).
        size: slice side s; a divisor of the volume side (area-averaged image, max-pooled mask, so
            that a nodule pixel survives); None keeps the volume's side.
        masks: concatenate the (binary, nodule) mask channel with the image.
        mask_channels: K > 0 concatenates K one-hot channels of the label map
            (``volume_and_labels(i)``) instead; the label map is pooled by its maximum, so a higher
            class painted over a lower one (nodules over lungs) survives as a nodule pixel does.
        labels: "volume" (the volume's label) or "mask" (1 when the slice holds mask pixels; with
            ``mask_channels``, pixels of any class).
        keep_class: keep only the slices with this label (e.g. 1: nodule slices); None keeps all.
        cache_bytes: recently read volumes are kept up to this many bytes (phantoms are rendered,
            so a shuffled stream of slices would otherwise render a volume per slice).

    Attributes:
        spacing: (row, column) mm of the slice pixels; window: as the volume dataset's.

    Example:
        >>> slices = SliceDataset(PhantomVolumeDataset(32, 4, nodules=True), content_only=True,
        ...                       masks=True, labels="mask", keep_class=1)          # doctest: +SKIP
        >>> slices[0]["image"].shape, slices[0]["label"]                           # doctest: +SKIP
        (torch.Size([2, 32, 32]), 1)
    """

    def __init__(self, volumes, content_only: bool = False, *, plane: str = "axial", size: int | None = None,
                 masks: bool = False, labels: str = "volume", keep_class: int | None = None,
                 cache_bytes: int = 1 << 30, mask_channels: int = 0):
        from medvol.data.paired import require_labels

        if plane not in PLANES:
            raise MedvolError(f"plane: {plane!r} is not one of {', '.join(PLANES)}")
        if labels not in SLICE_LABELS:
            raise MedvolError(f"slice_labels: {labels!r} is not one of {', '.join(SLICE_LABELS)}")
        self.mask_channels = int(mask_channels)
        self.mask_labels = None
        if self.mask_channels and masks:
            raise MedvolError("masks: the binary mask channel and mask_channels (the label map's one-hot "
                              "channels) exclude each other; choose one")
        if self.mask_channels:
            self.mask_labels = require_labels(volumes, self.mask_channels, "source")
        self.with_masks = bool(masks) or labels == "mask" or self.mask_channels > 0
        if self.with_masks and not self.mask_channels and not hasattr(volumes, "volume_and_mask"):
            key = "masks" if masks else "slice_labels"
            raise MedvolError(f"{key}: {type(volumes).__name__} has no masks (phantoms and caches with "
                              "label maps have them)")
        self.volumes, self.plane, self.masks, self.labels = volumes, plane, bool(masks), labels
        self.window = volumes.window
        spacing = tuple(volumes.spacing)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        first, _ = self._volume(0)
        self.depth = int(first.shape[0])
        self.size = self.depth if size is None else int(size)
        if self.size < 1 or self.depth % self.size:
            raise MedvolError(f"size: slices of side {self.size} cannot be pooled from volumes of side "
                              f"{self.depth} (need a divisor)")
        in_plane = {"axial": spacing[1:], "coronal": (spacing[0], spacing[2]), "sagittal": spacing[:2]}[plane]
        factor = self.depth // self.size
        self.spacing = tuple(float(s) * factor for s in in_plane)
        self.index: list[tuple[int, int, int]] | None = None
        if content_only or labels == "mask" or keep_class is not None:
            self.index = self._scan(content_only, keep_class)
            if not self.index:
                raise MedvolError(f"slice_class: no {plane} slices of class {keep_class} in "
                                  f"{len(volumes)} volumes")

    def _scan(self, content_only: bool, keep_class: int | None) -> list[tuple[int, int, int]]:
        """``(volume, slice, label)`` of every kept slice."""
        index = []
        axis = {"axial": 0, "coronal": 1, "sagittal": 2}[self.plane]
        for v in range(len(self.volumes)):
            array, mask = self._volume(v)
            other = tuple(a for a in range(3) if a != axis)
            content = np.asarray(array).max(axis=other) > -1.0
            if self.labels == "mask":
                found = np.asarray(mask).max(axis=other) > 0
                slice_labels = found.astype(int)
            else:
                slice_labels = np.full(self.depth, self.volumes.label(v))
            for k in range(self.depth):
                if content_only and not content[k]:
                    continue
                if keep_class is not None and slice_labels[k] != keep_class:
                    continue
                index.append((v, k, int(slice_labels[k])))
        return index

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.volumes) * self.depth

    def _volume(self, v: int) -> tuple[np.ndarray, np.ndarray | None]:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        if self.mask_channels:
            pair = self.volumes.volume_and_labels(v)
        else:
            pair = self.volumes.volume_and_mask(v) if self.with_masks else (self.volumes.volume(v), None)
        self._cache[v] = pair
        used = sum(a.nbytes + (m.nbytes if m is not None else 0) for a, m in self._cache.values())
        while used > self.cache_bytes and len(self._cache) > 1:
            a, m = self._cache.popitem(last=False)[1]
            used -= a.nbytes + (m.nbytes if m is not None else 0)
        return pair

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} slices")
        k %= len(self)
        if self.index is not None:
            v, z, label = self.index[k]
        else:
            (v, z), label = divmod(k, self.depth), None
            label = self.volumes.label(v)
        array, mask = self._volume(v)
        image = torch.from_numpy(np.array(take_slice(array, self.plane, z), dtype=np.float32))[None]
        factor = self.depth // self.size
        if factor > 1:
            image = torch.nn.functional.avg_pool2d(image[None], factor)[0]
        if self.masks:
            m = torch.from_numpy(np.array(take_slice(mask, self.plane, z), dtype=np.float32))[None]
            if factor > 1:
                m = torch.nn.functional.max_pool2d(m[None], factor)[0]
            image = torch.cat([image, m * 2 - 1])
        elif self.mask_channels:
            from medvol.data.paired import one_hot_channels

            m = torch.from_numpy(np.array(take_slice(mask, self.plane, z), dtype=np.float32))[None]
            if factor > 1:
                m = torch.nn.functional.max_pool2d(m[None], factor)[0]
            image = torch.cat([image, torch.from_numpy(one_hot_channels(m[0].numpy(), self.mask_channels))])
        return {"image": image, "label": label}
