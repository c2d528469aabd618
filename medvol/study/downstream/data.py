"""The data of the downstream study: the real cache's splits and the synthetic sources, with labels.

Every set is a :class:`LabelledSet`: items loaded one at a time as ``(image float32 in [-1, 1],
labels uint8)``, the labels already mapped onto the study's classes (0 background, ``c`` the
``c``-th name of ``--labels``). Volumes are (S, S, S); 2D sets hold slices (s, s).

- Real data: a medvol cache with label maps (:mod:`medvol.data.cache`); its ``train`` split trains,
  its ``val`` split (held-out real volumes) is scored. Synthetic cache entries are refused as real
  (:class:`medvol.data.datasets.CachedVolumeDataset`'s own check). A 2D image cache with masks
  (``medvol preprocess --images images|slices``, manifest ``"dims": 2``) gives grey images (S, S)
  with their masks instead (:class:`medvol.data.image_datasets.CachedImageDataset`).
- Synthetic data: a folder of generated images ``X.nii.gz`` with ``X_mask.nii.gz`` beside each, as
  ``medvol generate`` writes them, or a checkpoint from which such a folder is generated. Training
  on synthetic data is what this study is for, so it is allowed here, but every image must be
  what it claims: marked synthetic (:func:`medvol.data.provenance.provenance_of`), its voxels
  matching its sidecar's checksum, and its label names recorded (``mask_labels`` in
  ``generated.json`` or the sidecar).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medvol.errors import MedvolError

#: Source names (``--synthetic NAME=…``): they key the results and name folders.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,63}$")
#: Set-up names that a source may not take.
RESERVED = ("real",)


@dataclass
class LabelledSet:
    """Images with label maps, loaded lazily.

    Attributes:
        name: ``"real-train"``, ``"real-val"`` or the synthetic source's NAME.
        dims: 3 (volumes) or 2 (slices).
        items: one description per item (cache entry, file, ``entry#slice``).
        loader: ``loader(i)`` -> ``(image float32, labels uint8)`` of one item.
        info: provenance of the set (written into results.json).
    """

    name: str
    dims: int
    items: list[str]
    loader: Callable[[int], tuple[np.ndarray, np.ndarray]] = field(repr=False)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.loader(index)


def parse_synthetic(text: str) -> tuple[str, str]:
    """``"gan=runs/x"`` -> ``("gan", "runs/x")``; a bare path is named after its file or folder."""
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        stem = Path(text.rstrip("/")).name
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", stem.removesuffix(".pt"))
        if not name or not name[0].isalpha():
            name = f"s{name}"
    if not path:
        raise MedvolError(f"--synthetic {text!r}: expected [NAME=]DIR_OR_CKPT")
    if not NAME_PATTERN.match(name) or name in RESERVED:
        raise MedvolError(f"--synthetic {text!r}: NAME must start with a letter, use letters, digits and _ . + - "
                          "(at most 64), and not be 'real'")
    return name, path


def class_table(names: Sequence[str], wanted: Sequence[str], what: str) -> np.ndarray:
    """Lookup table uint8[256]: a label id of ``names`` -> the study class of its name (0: not wanted).

    Raises:
        MedvolError: a wanted class that ``names`` lacks (names ``what`` and the names it has).
    """
    missing = [w for w in wanted if w not in names]
    if missing:
        raise MedvolError(f"{what}: has no label {missing[0]!r} (its labels: {', '.join(names) or 'none'})")
    table = np.zeros(256, dtype=np.uint8)
    for index, name in enumerate(names, start=1):
        if name in wanted:
            table[index] = wanted.index(name) + 1
    return table


def pool_slice(image: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a slice to ``side``: the image area-averaged, the labels by maximum (a small
    structure survives, and a higher class painted over a lower one wins, as in the volumes)."""
    factor = image.shape[-1] // side
    if factor == 1:
        return np.asarray(image, np.float32), np.asarray(labels, np.uint8)
    shape = (side, factor, side, factor)
    return (np.asarray(image, np.float32).reshape(shape).mean(axis=(1, 3)),
            np.asarray(labels).reshape(shape).max(axis=(1, 3)).astype(np.uint8))


# ------------------------------------------------------------------------------------- real


def open_real(cache: str, split: str, wanted: Sequence[str] | None) -> tuple[LabelledSet, tuple[str, ...]]:
    """The ``split`` of a cache as volumes with the study's classes.

    Args:
        cache: the cache folder (built by ``medvol preprocess`` with label maps).
        split: ``"train"`` or ``"val"``.
        wanted: class names to segment; None: every class of the cache.

    Returns:
        ``(set, classes)``: classes are the wanted names in order.

    Raises:
        MedvolError: no such cache, a split without volumes or holding synthetic entries, volumes
            without label maps, or an unknown class name.
    """
    from medvol.data.cache import load_manifest
    from medvol.data.datasets import CachedVolumeDataset

    if load_manifest(cache).get("dims") == 2:
        return _real_images(cache, split, wanted)
    dataset = CachedVolumeDataset(cache, split=split)
    return _labelled_real(cache, split, wanted, dataset, dataset.volume_and_labels, dims=3, side=dataset.size,
                          unit="volume", hint="label map; the downstream study needs labels (put "
                          "<name>_mask.nii.gz beside each scan and run `medvol preprocess` again)")


def _real_images(cache: str, split: str, wanted: Sequence[str] | None) -> tuple[LabelledSet, tuple[str, ...]]:
    """The ``split`` of a 2D image cache as grey images (S, S) with their masks (:func:`open_real`)."""
    from medvol.data.image_datasets import CachedImageDataset

    images = CachedImageDataset(cache, split=split)  # refuses an empty split and synthetic entries
    if images.has_labels and images.channels != 1:
        raise MedvolError(f"--real {cache}: a 2D cache of {images.channels}-channel (RGB) images; the U-Net reads "
                          "grey images (rebuild it with medvol preprocess --images images --colour grey)")

    def pair(index: int):
        image, labels = images.image_and_labels(index)
        return image[0], labels

    return _labelled_real(cache, split, wanted, images, pair, dims=2, side=images.side, unit="image",
                          hint="mask; the downstream segmentation study needs a mask for every image (build the 2D "
                          "cache from images or volumes with their masks beside them: X_mask or masks/X)")


def _labelled_real(cache: str, split: str, wanted: Sequence[str] | None, dataset, pair, *, dims: int, side: int,
                   unit: str, hint: str) -> tuple[LabelledSet, tuple[str, ...]]:
    """A cache split's items (volumes or 2D images, ``pair(index)`` = (image, label map)) with the
    study's classes: refuses items without labels and unknown class names; records provenance."""
    if not dataset.has_labels:
        missing = next(e["name"] for e in dataset.entries if not isinstance(e.get("labels"), str))
        raise MedvolError(f"--real {cache}: {split} {unit} {missing!r} has no {hint}")
    classes = tuple(wanted) if wanted else dataset.mask_labels
    if not classes:
        raise MedvolError(f"--real {cache}: the cache names no label classes (mask_labels)")
    table = class_table(dataset.mask_labels, classes, f"--real {cache}")

    def load(index: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = pair(index)
        return np.array(image, dtype=np.float32), table[np.asarray(labels)]

    info = {"cache": str(Path(cache).resolve()), "split": split, "n": len(dataset), "names": list(dataset.names),
            "manifest_sha256": hashlib.sha256((Path(cache) / "manifest.json").read_bytes()).hexdigest(),
            "size": side, "mask_labels": list(dataset.mask_labels)}
    if dims == 2:
        info["dims"] = 2
    return LabelledSet(f"real-{split}", dims, [f"cache:{n}" for n in dataset.names], load, info), classes


def pooled_images(images: LabelledSet, side: int) -> LabelledSet:
    """Real 2D images (S, S) area-pooled to ``side``, each with its label: a class number (kept) or a
    label map (pooled by maximum, :func:`pool_slice`).

    Raises:
        MedvolError: ``side`` does not divide S.
    """
    size = images.info["size"]
    if size % side:
        raise MedvolError(f"2D images of side {side} cannot be pooled from the cache's images of side {size} "
                          "(need a divisor)")

    def load(index: int) -> tuple[np.ndarray, np.ndarray | int]:
        image, label = images.load(index)
        if isinstance(label, np.ndarray):
            return pool_slice(image, label, side)
        return pool_slice(image, np.zeros(image.shape, np.uint8), side)[0], label

    return LabelledSet(images.name, 2, list(images.items), load, dict(images.info, side=side))


def volume_window(cache: str) -> tuple[float, float] | None:
    """The HU window of a cache's CT scaling (None: MR, already in [-1, 1]); of a 2D image cache, the
    window of its CT slices (None: image files and MR slices, already in [-1, 1])."""
    from medvol.data.cache import load_manifest
    from medvol.data.preprocess import PreprocessParams

    manifest = load_manifest(cache)
    if manifest.get("dims") == 2:
        from medvol.data.image_cache import ImageParams

        params = ImageParams.from_dict(manifest["params"])
        return tuple(params.window) if params.source == "slices" and params.modality == "ct" else None
    return PreprocessParams.from_dict(manifest["params"]).intensity_window


def real_slices(volumes: LabelledSet, side: int, min_fraction: float = 0.01) -> LabelledSet:
    """The axial slices of real volumes that show anatomy, pooled to ``side`` (2D training data)."""
    keep: list[tuple[int, int]] = []
    for v in range(len(volumes)):
        image, _ = volumes.load(v)
        content = (image > -1.0 + 0.02).reshape(image.shape[0], -1).mean(axis=1) >= min_fraction
        keep += [(v, int(k)) for k in np.flatnonzero(content)]
    if not keep:
        raise MedvolError(f"{volumes.info.get('cache')}: no axial slice shows anatomy")
    if volumes.load(0)[0].shape[-1] % side:
        raise MedvolError(f"synthetic slices of side {side} cannot be pooled from volumes of side "
                          f"{volumes.load(0)[0].shape[-1]} (need a divisor)")

    def load(index: int) -> tuple[np.ndarray, np.ndarray]:
        v, k = keep[index]
        image, labels = volumes.load(v)
        return pool_slice(image[k], labels[k], side)

    items = [f"{volumes.items[v]}#{k}" for v, k in keep]
    return LabelledSet(volumes.name, 2, items, load, dict(volumes.info, slices=len(keep), side=side))


# -------------------------------------------------------------------------------- synthetic


def _is_2d(path: Path) -> bool:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise MedvolError(f"{path}: cannot read its header ({str(error).strip().splitlines()[-1]})") from None
    return len([s for s in reader.GetSize() if s > 1]) == 2


def _read_array(path: Path, dims: int):
    """``(array, spacing)`` of a 3D volume (z, y, x) or a 2D image (rows, columns) file."""
    if dims == 3:
        from medvol.data.io import read_volume

        volume = read_volume(path)
        return volume.array, volume.spacing
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise MedvolError(f"{path}: unreadable ({str(error).strip().splitlines()[-1]})") from None
    array = np.squeeze(sitk.GetArrayFromImage(image)).astype(np.float32)
    if array.ndim != 2:
        raise MedvolError(f"{path}: expected a 2D image like the other files of its folder, got {array.shape}")
    return array, tuple(image.GetSpacing()[:2][::-1])


def _label_names(record: dict | None, folder: Path) -> list[str] | None:
    listing = folder / "generated.json"
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    for source in (data if isinstance(data, dict) else {}, record or {}):
        names = source.get("mask_labels")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def checked_synthetic(what: str, path: Path, is_2d: bool) -> dict:
    """The provenance of one synthetic input (:func:`medvol.data.provenance.provenance_of`), checked.

    Raises:
        MedvolError: ``path`` is not marked synthetic, or its voxels differ from its sidecar's checksum.
    """
    from medvol.data.provenance import provenance_of, voxels_sha256

    found = provenance_of(path, verify=not is_2d)  # medvol's volume reader reads 3D only
    if is_2d and (found["record"] or {}).get("voxels_sha256"):
        found["voxels_match"] = voxels_sha256(_read_array(path, 2)[0]) == found["record"]["voxels_sha256"]
    if not found["synthetic"]:
        raise MedvolError(f"{what}: {path} is not marked synthetic; the study trains on it as generated data, "
                          "so it must be what `medvol generate` wrote (a real scan passed as synthetic would "
                          "make the comparison meaningless)")
    if found.get("voxels_match") is False:
        raise MedvolError(f"{what}: {path}: its voxels differ from its sidecar's checksum (changed after "
                          "generation)")
    return found


def scaled_image(path: Path, image: np.ndarray, *, dims: int, size: int,
                 window: tuple[float, float] | None) -> np.ndarray:
    """A synthetic image checked against the real data's grid and scaled to [-1, 1] (HU with ``window``).

    Raises:
        MedvolError: a volume that is not (size,)*3, a slice that is not square with a side dividing
            ``size``, or NaN / infinite voxels.
    """
    if dims == 3 and image.shape != (size,) * 3:
        raise MedvolError(f"{path}: shape {image.shape}; the real volumes are {(size,) * 3} "
                          "(generate from a model trained at the cache's size)")
    if dims == 2 and (image.shape[0] != image.shape[1] or size % image.shape[0]):
        raise MedvolError(f"{path}: a {image.shape} slice; slices must be square with a side that "
                          f"divides the real volumes' {size}")
    if not np.isfinite(image).all():
        raise MedvolError(f"{path}: holds NaN or infinite voxels")
    if window is not None:
        low, high = window
        image = (np.clip(image, low, high) - low) / (high - low) * 2.0 - 1.0
    return np.clip(image, -1.0, 1.0).astype(np.float32)


def open_synthetic(name: str, folder: str | Path, *, size: int, window: tuple[float, float] | None,
                   classes: Sequence[str], n: int | None) -> LabelledSet:
    """A folder of generated images with masks, checked, as a :class:`LabelledSet`.

    Args:
        name: the source's NAME.
        folder: the folder (``medvol generate --out``).
        size: the real volumes' side S: a 3D image must be (S, S, S), a 2D one (s, s) with s | S.
        window: the cache's CT window (HU files are scaled with it), None for MR ([-1, 1] kept).
        classes: the study's class names, all of which the source must label.
        n: use the first ``n`` images (name order); None: all.

    Raises:
        MedvolError: no images, an image without its mask, an image not marked synthetic or whose
            voxels differ from its sidecar, unknown label names, a wrong shape, mixed dimensions.
    """
    from medvol.data.discover import discover, find_labels

    folder = Path(folder)
    what = f"--synthetic {name}={folder}"
    if not folder.is_dir():
        raise MedvolError(f"{what}: no such folder")
    files = [f for f in discover(folder) if f.is_file()] if any(folder.iterdir()) else []
    if not files:
        raise MedvolError(f"{what}: no images in this folder")
    files = files[:n] if n else files
    dims = 2 if _is_2d(files[0]) else 3
    masks, records, names = [], [], None
    for path in files:
        mask = find_labels(path)
        if mask is None:
            raise MedvolError(f"{what}: {path.name} has no mask beside it ({path.name.split('.')[0]}_mask.nii.gz); "
                              "segmentation needs image and mask (generate from a model trained with "
                              "--model.mask_channels K)")
        is_2d = _is_2d(path)
        found = checked_synthetic(what, path, is_2d)
        these = _label_names(found["record"], folder)
        if these is None:
            raise MedvolError(f"{what}: {path.name}: the names of its mask's labels are not recorded (mask_labels "
                              "in generated.json or its sidecar)")
        if names is not None and these != names:
            raise MedvolError(f"{what}: {path.name} names its labels {these}, other files {names}")
        if (2 if is_2d else 3) != dims:
            raise MedvolError(f"{what}: mixes 2D images and 3D volumes ({files[0].name}, {path.name})")
        names = these
        masks.append(mask)
        records.append(found["record"] or {})
    table = class_table(names, classes, what)

    def load(index: int) -> tuple[np.ndarray, np.ndarray]:
        image, _ = _read_array(files[index], dims)
        labels, _ = _read_array(masks[index], dims)
        if image.shape != labels.shape:
            raise MedvolError(f"{masks[index]}: shape {labels.shape} differs from its image's {image.shape}")
        image = scaled_image(files[index], image, dims=dims, size=size, window=window)
        if labels.min() < 0 or labels.max() > 255 or not np.array_equal(labels, np.round(labels)):
            raise MedvolError(f"{masks[index]}: a mask holds integer labels 0..255")
        return image, table[labels.astype(np.uint8)]

    digest = hashlib.sha256()
    for path, record in zip(files, records):
        digest.update(f"{path.name}:{record.get('voxels_sha256')}\n".encode())
    checkpoints = sorted({str(r.get("checkpoint_sha256")) for r in records if r.get("checkpoint_sha256")})
    info = {"folder": str(folder.resolve()), "n": len(files), "dims": dims, "mask_labels": names,
            "fingerprint": digest.hexdigest(), "checkpoint_sha256": checkpoints,
            "models": sorted({str(r.get("model")) for r in records if r.get("model")})}
    return LabelledSet(name, dims, [str(f) for f in files], load, info)


def generate_source(name: str, ckpt: str | Path, out: Path, n: int, seed: int, device: str) -> Path:
    """Generate ``n`` images with masks from a checkpoint into ``out`` (reused when complete).

    A folder that already lists ``n`` files of this checkpoint (by SHA-256) and seed, each with
    its mask, is kept: an interrupted study does not generate twice.
    """
    from medvol.train.checkpoint import checksum_path, load_checkpoint
    from medvol.sample.generate import generate
    from medvol.sample.records import read_provenance

    _, _, state = load_checkpoint(ckpt)
    sha = checksum_path(Path(state["path"])).read_text(encoding="utf-8").split()[0]
    listed = read_provenance(out)["files"]
    done = sorted(f for f, r in listed.items() if isinstance(r, dict) and r.get("checkpoint_sha256") == sha
                  and r.get("seed") == seed and (out / f).is_file() and not f.split(".")[0].endswith("_mask"))
    if len(done) >= n and all((out / f"{f.split('.')[0]}_mask.nii.gz").is_file() for f in done[:n]):
        return out
    generate(ckpt, n, out, seed=seed, device=device)
    written = sorted(out.glob("*_mask.nii.gz"))
    if not written:
        raise MedvolError(f"--synthetic {name}={ckpt}: the model generates no masks (train it with "
                          "--model.mask_channels K so that it generates image and mask)")
    return out
