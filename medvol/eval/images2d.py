"""2D evaluation: the samples of a 2D model scored against the slices it was trained on.

``medvol evaluate`` takes this path when ``--fake`` is a 2D model's checkpoint or run, or a folder
of 2D images. Every sample is one image ``(S, S)`` in [-1, 1]; N counts images, and the bootstrap
resamples images. Mask channels (a model trained with ``data.masks``) are dropped: Inception sees
the image channel only.

Sources:

- ``--fake`` a 2D checkpoint or run folder: images generated on the fly, ``batch`` at a time;
  image ``i`` uses the ``i``-th latent drawn from a CPU generator seeded with ``--seed``, so the
  set does not depend on the batch size or the device.
- ``--fake`` a folder (or one file) of 2D images: ``.png`` (8- or 16-bit grey, one image per file;
  grids are not split) or 2D NIfTI ``.nii`` / ``.nii.gz`` (CT in HU, mapped to [-1, 1] with the
  training window; MR taken as [-1, 1]); files whose name ends in ``_mask`` are skipped, and so
  are medvol's own previews (``grid_0000.png``, ``sample_0000_views.png``, listed as such in the
  folder's ``generated.json``).
- ``--real data`` (with a 2D checkpoint): the run's own training slices, built by the trainer's
  :func:`medvol.train.data.build_dataset` from the checkpoint's ``data`` config, so the real set
  is exactly what the model saw (plane, size, blank slices, mask channel, slice class).
- ``--real phantom[:SEED]`` / ``--real CACHE``: the same slice settings (the checkpoint's, or
  ``--plane`` and the images' size for an image folder) over phantoms of that seed (default
  ``--seed``) or over a cache's ``--split``.

Of a real set larger than N, N slices are drawn without replacement with ``--seed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from medvol.errors import MedvolError

#: Images per set when ``--n`` is not given (the real set is capped at its size).
DEFAULT_N = 256
IMAGE_SUFFIXES = (".png", ".nii", ".nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def image_files(spec: str) -> list[Path] | None:
    """The 2D image files that ``spec`` names (a file or a folder of them), else ``None``.

    A folder qualifies when it holds PNG files, or NIfTI files that are 2D; a folder of 3D
    NIfTI volumes is left to the 3D evaluation.
    """
    path = Path(spec)
    if path.is_file():
        files = [path] if _suffix(path) in IMAGE_SUFFIXES else []
    elif path.is_dir() and not (path / "manifest.json").exists():
        files = sorted(p for p in path.iterdir() if p.is_file() and _suffix(p) in IMAGE_SUFFIXES
                       and not p.name[: -len(_suffix(p))].endswith("_mask") and not is_preview(p))
    else:
        return None
    if not files:
        return None
    volumes = [p for p in files if _suffix(p) != ".png"]
    if not volumes:
        return files
    # decided by the NIfTI files: a folder of 3D samples also holds medvol generate's preview.png
    return files if _nifti_is_2d(volumes[0]) else None


#: Kinds of the PNGs ``medvol generate`` writes to look at (:mod:`medvol.sample.images`), not samples.
PREVIEW_KINDS = ("png grid", "png views")


def is_preview(path: Path) -> bool:
    """Whether ``path`` is one of medvol's preview images, as its folder's generated.json says."""
    from medvol.data.provenance import listed_record

    record = listed_record(path)
    return record is not None and record.get("kind") in PREVIEW_KINDS


def _nifti_is_2d(path: Path) -> bool:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    size = [s for s in reader.GetSize() if s > 1]
    return len(size) == 2


def read_image(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    """One 2D image file as float32 ``(rows, columns)`` in [-1, 1].

    PNG: grey levels (RGB is converted to luminance) over the full 8- or 16-bit range.
    NIfTI: HU mapped with ``window`` (clipped), or taken as [-1, 1] when ``window`` is None.
    """
    if _suffix(path) == ".png":
        from PIL import Image

        try:
            with Image.open(path) as image:
                wide = image.mode.startswith("I")
                array = np.asarray(image if wide else image.convert("L"), dtype=np.float64)
        except (OSError, ValueError) as error:
            raise MedvolError(f"{path}: unreadable PNG ({error})") from None
        top = 65535.0 if wide else 255.0
        array = array / top * 2.0 - 1.0
    else:
        import SimpleITK as sitk

        try:
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
        except RuntimeError as error:
            raise MedvolError(f"{path}: unreadable NIfTI ({str(error).strip().splitlines()[-1]})") from None
        array = np.squeeze(array)
        if window is not None:
            low, high = window
            array = (np.clip(array, low, high) - low) / (high - low) * 2.0 - 1.0
    if array.ndim != 2:
        raise MedvolError(f"{path}: expected a 2D image, got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise MedvolError(f"{path}: the image contains NaN or inf")
    return np.clip(array, -1.0, 1.0).astype(np.float32)


def open_checkpoint(spec: str):
    """``(system, cfg, state)`` when ``spec`` is a checkpoint or run folder (any model), else None."""
    path = Path(spec)
    is_ckpt = (path.is_file() and path.suffix == ".pt") or (
        path.is_dir() and (any(path.glob("ckpt_*.pt")) or any(path.glob("checkpoints/ckpt_*.pt"))))
    if not is_ckpt:
        return None
    from medvol.train.checkpoint import load_checkpoint

    return load_checkpoint(path)


class GeneratedImages:
    """Images of a 2D checkpoint: yields ``(name, float32 (S, S))``, generated ``batch`` at a time."""

    def __init__(self, loaded, n: int, seed: int, batch: int, device: str):
        from medvol.eval.features import file_hash

        self.system, self.cfg, state = loaded
        self.n, self.seed, self.batch, self.device = n, seed, batch, device
        self.size = int(self.system.size)
        ckpt = Path(state["path"])
        self.info = {"source": None, "kind": "checkpoint", "checkpoint": str(ckpt),
                     "checkpoint_sha256": file_hash(ckpt), "iteration": int(state.get("iteration", -1)),
                     "model": f"{self.cfg.model.name}@{self.size}", "seed": seed, "size": self.size,
                     "channels": int(self.system.channels), "fed_channel": 0}
        self.names = [f"generated_{seed}_{i:05d}" for i in range(n)]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        import torch

        from medvol.train.distributed import pick_device

        dev = pick_device(self.device)
        system = self.system.to(dev)
        system.set_mode("optimized" if dev.type == "cuda" else "reference")
        generator = torch.Generator().manual_seed(self.seed)
        cpu = torch.device("cpu")
        with torch.no_grad():
            for start in range(0, self.n, self.batch):
                count = min(self.batch, self.n - start)
                # One latent per draw, in order: image i is the same whatever the batch size.
                z = torch.cat([system.sample_latent(1, generator=generator, device=cpu) for _ in range(count)])
                x = system.generate(z.to(dev))[:, 0].float().cpu().numpy()
                if not np.isfinite(x).all():
                    raise MedvolError(f"--fake {self.info['checkpoint']}: the model generates NaN or inf")
                for i in range(count):
                    yield self.names[start + i], np.clip(x[i], -1.0, 1.0).astype(np.float32)


class ImageFiles:
    """A folder of 2D image files: yields ``(name, float32 (S, S))``, one file at a time."""

    def __init__(self, spec: str, files: list[Path], n: int | None, window):
        self.files = files[:n] if n else files
        self.window = window
        self.names = [p.name for p in self.files]
        first = read_image(self.files[0], window)
        self.size = int(first.shape[0])
        if first.shape[0] != first.shape[1]:
            raise MedvolError(f"{self.files[0]}: images must be square, got {tuple(first.shape)}")
        self.info = {"source": spec, "kind": "images", "files": len(self.files), "size": self.size,
                     "intensity": ("NIfTI in HU, window " + f"{window[0]:g},{window[1]:g}" if window
                                   else "NIfTI taken as [-1, 1]") + "; PNG grey levels over the full range"}

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for path in self.files:
            image = read_image(path, self.window)
            if image.shape != (self.size, self.size):
                raise MedvolError(f"{path}: shape {tuple(image.shape)} differs from the first "
                                  f"image's {(self.size, self.size)}")
            yield path.name, image


class RealSlices:
    """N slices of a :class:`medvol.data.datasets.SliceDataset`, drawn with ``seed``: image channel."""

    def __init__(self, dataset, n: int | None, seed: int, info: dict):
        total = len(dataset)
        want = min(n or DEFAULT_N, total)
        if want < total:
            self.indices = np.sort(np.random.default_rng(seed).choice(total, want, replace=False))
        else:
            self.indices = np.arange(total)
        self.dataset = dataset
        self.size = int(dataset.size)
        self.names = [f"slice_{int(i):06d}" for i in self.indices]
        self.info = dict(info, kind="slices", slices_available=total, draw_seed=seed, size=self.size,
                         fed_channel=0)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, i in zip(self.names, self.indices):
            yield name, self.dataset[int(i)]["image"][0].numpy()


def real_slices(spec: str, cfg, *, size: int, plane: str, split: str, n: int | None,
                seed: int, allow_synthetic_real: bool = False) -> RealSlices:
    """The real side of a 2D evaluation (see the module docstring).

    A cache split holding volumes marked synthetic (``--real CACHE``, or ``--real data`` of a run
    trained on them) is refused unless ``allow_synthetic_real``, then recorded.
    """
    from medvol.config import DataConfig
    from medvol.eval.evaluate import synthetic_real
    from medvol.train.data import build_dataset

    data = cfg.data if cfg is not None else DataConfig(plane=plane, workers=0, phantom_n=16)
    if spec == "data":
        if cfg is None:
            raise MedvolError("--real data: the run's training data is only known for a checkpoint "
                              "--fake; give phantom[:SEED] or a cache")
        info = {"source": spec}
    elif spec == "phantom" or spec.startswith("phantom:"):
        tail = spec.partition(":")[2]
        try:
            phantom_seed = int(tail) if tail else seed
        except ValueError:
            raise MedvolError(f"--real {spec}: the phantom seed must be an integer") from None
        data = dataclasses.replace(data, source="phantom", phantom_seed=phantom_seed)
        info = {"source": spec}
    elif Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file():
        data = dataclasses.replace(data, source=str(spec), split=split)
        info = {"source": spec, "split": split}
    else:
        raise MedvolError(f"--real {spec}: for 2D images give data (the run's training slices), "
                          "phantom[:SEED] or a preprocessing cache folder")
    if data.source != "phantom" and (Path(data.source) / "manifest.json").is_file():
        from medvol.data.datasets import CachedVolumeDataset

        volumes = CachedVolumeDataset(data.source, split=data.split, allow_synthetic=True)
        synthetic_real(info, list(volumes.synthetic), len(volumes), allow_synthetic_real, spec)
        if volumes.synthetic:  # allowed and recorded just above
            data = dataclasses.replace(data, allow_synthetic=True)
    dataset = build_dataset(data, size, dims=2, channels=1 + int(data.masks))
    info["data"] = dataclasses.asdict(data)
    return RealSlices(dataset, n, seed, info)


def memo_key(*parts) -> str:
    """A stable key of the real set's definition, for the caller's feature memo."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def image_pairs(report: dict, real: str, fake: str, *, loaded, files, features, metrics, n, size,
                modality, window, plane, split, seed, batch, device, progress, memo,
                allow_synthetic_real: bool = False, strict: bool = False) -> list:
    """Extract the 2D features of both sides; fill ``report`` (sources, provenance).

    A real image folder holding images marked synthetic is refused unless
    ``allow_synthetic_real``; ``n`` larger than a set warns (refused with ``strict``).

    Returns:
        ``[(extractor info, real FeatureSet, fake FeatureSet), ...]``, one per extractor, for
        :func:`medvol.eval.evaluate._finish` to score.
    """
    from medvol.data.preprocess import PreprocessParams
    from medvol.eval.evaluate import (FEATURE_METRICS, FIGURE_METRICS, Checksums, check_counts, check_logits,
                                      marked_synthetic, synthetic_real, volume_vectors)
    from medvol.eval.features import get_extractor

    other = [m for m in metrics if m not in FEATURE_METRICS + FIGURE_METRICS + ("is",)]
    if other:
        raise MedvolError(f"--metrics {other[0]}: not available for 2D images; choose from "
                          f"{', '.join(FEATURE_METRICS + FIGURE_METRICS + ('is',))}")
    if n is not None and n < 2:
        raise MedvolError(f"--n {n}: need at least 2 images per set")
    if modality == "ct" and window is None:
        window = PreprocessParams.__dataclass_fields__["window"].default
    nifti_window = window if modality == "ct" else None
    if loaded is not None:
        src_fake = GeneratedImages(loaded, n or DEFAULT_N, seed, batch, device)
        src_fake.info["source"] = fake
        cfg = loaded[1]
    else:
        src_fake = ImageFiles(fake, files, n, nifti_window)
        cfg = None
    if size is not None and size != src_fake.size:
        raise MedvolError(f"--fake {fake}: the images are {src_fake.size}^2, --size asks for {size}")
    real_files = image_files(real)
    if real_files is not None:
        src_real = ImageFiles(real, real_files, n, nifti_window)
        real_def = ("files", str(Path(real).resolve()), [p.name for p in src_real.files])
        synthetic_real(src_real.info, [p.name for p in marked_synthetic(src_real.files)], len(src_real.files),
                       allow_synthetic_real, real, "images")
    else:
        src_real = real_slices(real, cfg, size=src_fake.size, plane=plane, split=split, n=n, seed=seed,
                               allow_synthetic_real=allow_synthetic_real)
        real_def = ("slices", src_real.info["data"], list(map(int, src_real.indices)))
    if src_real.size != src_fake.size:
        raise MedvolError(f"--real images are {src_real.size}^2 but --fake images are {src_fake.size}^2")
    check_counts(report, n, len(src_real.names), len(src_fake.names), "images", strict)
    extractors = [get_extractor(spec, device=device, seed=seed, batch=batch) for spec in features]
    if not extractors:
        raise MedvolError("--features: give at least one extractor")
    for spec, ext in zip(features, extractors):
        if ext.dims != 2:
            raise MedvolError(f"--features {spec}: scores volumes, not 2D images (use inception)")
    check_logits(features, extractors, metrics)

    def run(ext, src, role):
        wrap = None if progress is None else (
            lambda it: progress(it, len(src.names), f"features {ext.name} {role}", "image"))
        return ext.extract(src, progress=wrap)

    pairs = []
    for spec, ext in zip(features, extractors):
        key = ("real2d", memo_key(real_def, spec, ext.weights_sha256, size, seed))
        if key not in memo:
            sums = Checksums(src_real)
            memo[key] = run(ext, sums, "real")
            memo[("set_sha256",) + key] = sums.set_sha256()
        set_sha256 = memo[("set_sha256",) + key]
        pairs.append((ext.info(), memo[key], run(ext, src_fake, "fake")))
    report["real"] = dict(src_real.info, n_images=len(src_real.names), names=src_real.names, set_sha256=set_sha256)
    report["fake"] = dict(src_fake.info, n_images=len(src_fake.names), names=src_fake.names)
    report["_scatter"] = (pairs[0][0]["extractor"], volume_vectors(pairs[0][1]),
                          volume_vectors(pairs[0][2]), "image")
    return pairs
