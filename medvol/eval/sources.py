"""Where ``medvol evaluate`` reads its samples: one protocol for every source.

A source (:class:`Source`) yields ``(name, float32 array in [-1, 1])`` one sample at a time, with
``names``, ``len``, ``size``, ``dims`` (3: ``(S, S, S)`` volumes, 2: ``(S, S)`` images), ``role``
(real, fake, train) and ``info`` (what scores.json records of it). What ``--real`` / ``--fake``
may name, and the source it becomes:

- a preprocessing cache (a folder with ``manifest.json``; ``--split`` picks train / val / all):
  :class:`VolumeSource`, or for 2D evaluations the slices of its volumes (:func:`real_slices`);
- a volume file, a folder or glob of volumes in any format medvol reads, prepared like
  ``medvol preprocess``: with the other side's cache parameters when that side is a cache
  (``--size``, ``--modality``, ``--window`` override them), else with those options
  (:class:`VolumeSource`);
- a folder (or one file) of 2D images, ``.png`` or 2D NIfTI (:class:`ImageFiles`);
- a checkpoint or run folder (``--fake`` only): samples drawn on the fly, seeded, through
  :class:`medvol.sample.sampler.Sampler` (volumes: :class:`VolumeSource`; images of a 2D model:
  :class:`GeneratedImages`);
- ``phantom`` or ``phantom:SEED``: the built-in phantom generator at ``--size``
  (:class:`VolumeSource`, or its slices for 2D evaluations);
- ``data`` (2D, with a checkpoint ``--fake``): the run's own training slices (:func:`real_slices`);
- a ``.npy`` array ``[N, D]`` of precomputed features (both sides, no extractor then:
  :func:`precomputed`).

:func:`probe` decides, from ``--fake``, whether an evaluation is of volumes or of images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from medvol.errors import MedvolError
from medvol.eval import metrics as M
from medvol.eval.features import FeatureSet, file_hash
from medvol.sample.sampler import Sampler, is_checkpoint

#: Images per set of a 2D evaluation when ``--n`` is not given (the real set is capped at its size).
DEFAULT_N = 256
IMAGE_SUFFIXES = (".png", ".nii", ".nii.gz")


@runtime_checkable
class Source(Protocol):
    """What every source of samples gives the extractors and the report."""

    role: str
    info: dict
    dims: int
    size: int
    names: list[str]

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]: ...


def _refuse_translation(sampler: Sampler, spec) -> None:
    """A translation model (cyclegan) draws nothing from noise: its outputs are scored as a folder."""
    if sampler.unpaired:
        raise MedvolError(f"--fake {spec}: {sampler.cfg.model.name} translates given images; write its "
                          f"translations with medvol generate --ckpt {spec} --input CACHE --out DIR, then score DIR "
                          "against the target domain's cache")


def probe(fake: str, device: str) -> tuple[int, Sampler | None, list[Path] | None]:
    """``(dims, sampler, image files)`` of ``--fake``: whether the evaluation is of volumes (3)
    or of 2D images (2), the checkpoint's sampler when it is one (read once, here), and the
    image files when it is a folder of 2D images."""
    if is_checkpoint(fake):
        sampler = Sampler.load(fake, device)
        _refuse_translation(sampler, fake)
        return sampler.dims, sampler, None
    files = image_files(fake)
    return (2 if files is not None else 3), None, files


# ------------------------------------------------------------------------------- volumes


class VolumeSource:
    """Volumes of any kind of source: yields ``(name, float32 (S, S, S) in [-1, 1])`` one at a time."""

    dims = 3

    def __init__(self, spec: str, role: str, *, size: int | None, modality: str | None, window,
                 split: str, n: int | None, seed: int, device: str, sampler: Sampler | None = None, like=None):
        self.spec = spec
        self.like = like  # (cache folder, PreprocessParams) that raw volumes are prepared with
        self._sampler = sampler  # of a checkpoint already read by the caller (:func:`probe`)
        self.role = role
        self.size = size
        self.split = split
        self.n = n
        self.seed = seed
        self.device = device
        self.info: dict = {"source": spec}
        self.synthetic: list[str] = []  # the real side's volumes marked synthetic (medvol.data.provenance)
        self.kind, self._names = self._resolve(spec, modality, window)

    def _resolve(self, spec: str, modality: str, window):
        if self.size is None and self.like is not None and not is_cache(spec):
            self.size = self.like[1].size  # a cache's own size is checked against --size only
        if spec == "phantom" or spec.startswith("phantom:"):
            if self.size is None:
                raise MedvolError(f"--{self.role} {spec}: give --size for phantom volumes")
            tail = spec.partition(":")[2]
            try:
                self._phantom_seed = int(tail) if tail else self.seed
            except ValueError:
                raise MedvolError(f"--{self.role} {spec}: the phantom seed must be an integer") from None
            count = self.n or 16
            self.info.update(kind="phantom", seed=self._phantom_seed, size=self.size)
            return "phantom", [f"phantom_{self._phantom_seed}_{i:04d}" for i in range(count)]
        path = Path(spec)
        if not path.exists() and not any(c in spec for c in "*?["):
            raise MedvolError(f"--{self.role} {spec}: no such file or folder")
        if path.is_dir() and (path / "manifest.json").is_file():
            from medvol.data.datasets import CachedVolumeDataset

            if self.role == "fake":
                self.split = "all"  # --split picks the real volumes; a generated cache is used whole
            # Marked volumes are refused (or recorded) by evaluate for the real side, not here.
            self._cache = CachedVolumeDataset(path, split=self.split, allow_synthetic=True)
            if self.size is not None and self._cache.size != self.size:
                raise MedvolError(f"--{self.role} {spec}: the cache is {self._cache.size}^3, "
                                  f"--size asks for {self.size}")
            self.size = self._cache.size
            names = self._cache.names[: self.n] if self.n else self._cache.names
            marked = set(self._cache.synthetic)
            self.synthetic = [name for name in names if name in marked]
            splits = {entry["name"]: entry["split"] for entry in self._cache.entries}
            self.splits = [splits[name] for name in names]  # each volume's split in the cache
            self.info.update(kind="cache", split=self.split, size=self.size,
                             preprocessing=self._cache.manifest["params"])
            return "cache", names
        if is_checkpoint(path):
            return "checkpoint", self._open_checkpoint(path)
        from medvol.data.discover import discover
        from medvol.data.preprocess import PreprocessParams

        if self.size is None:
            raise MedvolError(f"--{self.role} {spec}: give --size to prepare raw volumes (or a cache "
                              "as the other set, whose size is used)")
        given = {"size": self.size, "modality": modality, "window": window}
        given = {key: value for key, value in given.items() if value is not None}
        if self.like is not None:
            self._params = dataclasses.replace(self.like[1], **given)
        else:
            self._params = PreprocessParams(**{"modality": "ct", **given})
        self._files = discover(spec)
        if self.n:
            self._files = self._files[: self.n]
        self.info.update(kind="volumes", size=self.size, preprocessing=self._params.to_dict())
        if self.like is not None:
            self.info["prepared_like"] = str(self.like[0])
        from medvol.data.io import volume_stem

        if self.role == "real":
            self.synthetic = [volume_stem(f) for f in marked_synthetic(self._files)]
        return "volumes", [volume_stem(f) for f in self._files]

    def _open_checkpoint(self, path: Path) -> list[str]:
        if self.role != "fake":
            raise MedvolError(f"--{self.role} {path}: a checkpoint can only be --fake")
        if self._sampler is None:
            self._sampler = Sampler.load(path, self.device)
        _refuse_translation(self._sampler, path)
        state = self._sampler.state
        ckpt = self._sampler.path
        size = self._sampler.size
        if self.size is not None and size != self.size:
            raise MedvolError(f"--fake {path}: the model generates {size}^3, --size asks for {self.size}")
        self.size = size
        count = self.n or 16
        self.info.update(kind="checkpoint", checkpoint=str(ckpt), checkpoint_sha256=file_hash(ckpt),
                         iteration=int(state.get("iteration", -1)), seed=self.seed, size=self.size)
        return [f"generated_{self.seed}_{i:04d}" for i in range(count)]

    def __len__(self) -> int:
        return len(self._names)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.kind == "phantom":
            from medvol.data.phantom import make_phantom
            from medvol.data.preprocess import PreprocessParams, preprocess_volume

            params = PreprocessParams(size=self.size)
            for i, name in enumerate(self._names):
                volume, _ = make_phantom(self.size, (self._phantom_seed, i))
                yield name, preprocess_volume(volume, params)
        elif self.kind == "cache":
            for i, name in enumerate(self._names):
                yield name, np.asarray(self._cache.volume(i), dtype=np.float32)
        elif self.kind == "volumes":
            from medvol.data.io import read_volume
            from medvol.data.preprocess import preprocess_volume

            for f, name in zip(self._files, self._names):
                yield name, preprocess_volume(read_volume(f), self._params)
        else:
            yield from self._generate()

    def pick(self, indices: Sequence[int], progress=None) -> dict[int, np.ndarray]:
        """The volumes at ``indices`` (one more pass over the source, stopped after the last)."""
        want, got = set(int(i) for i in indices), {}
        if not want:
            return got
        passes = itertools.islice(self, max(want) + 1)
        if progress is not None:
            passes = progress(passes, max(want) + 1, f"memorisation montage {self.role}")
        for i, (_, volume) in enumerate(passes):
            if i in want:
                got[i] = np.array(volume, dtype=np.float32)
        return got

    def _generate(self) -> Iterator[tuple[str, np.ndarray]]:
        # Volume i is sample i of the seed, as `medvol generate --seed` writes it (class i % K).
        for name, sample in zip(self._names, self._sampler.stream(len(self._names), self.seed)):
            yield name, np.clip(sample.array[0], -1.0, 1.0).astype(np.float32)


class Keep:
    """Pass volumes through while keeping copies of the first ``n`` (for pairwise MS-SSIM)."""

    def __init__(self, source, n: int):
        self.source, self.n, self.kept = source, n, []
        self.role = source.role

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        for name, volume in self.source:
            if len(self.kept) < self.n:
                self.kept.append(np.array(volume, dtype=np.float32))
            yield name, volume


class Checksums:
    """Pass ``(name, array)`` through while taking each array's SHA-256 (float32 voxels and shape,
    :func:`medvol.data.provenance.voxels_sha256`): the identity of the real set in scores.json.
    With ``keep``, the arrays are kept too (``arrays``), for a score that reads the set after the
    feature pass (the slice factors)."""

    def __init__(self, source, keep: bool = False):
        self.source, self.digests, self.keep, self.arrays = source, [], keep, []
        self.role = getattr(source, "role", "real")
        self.names = getattr(source, "names", None)

    def __len__(self) -> int:
        return len(self.source) if hasattr(self.source, "__len__") else len(self.names)

    def __iter__(self):
        from medvol.data.provenance import voxels_sha256

        self.digests, self.arrays = [], []
        for name, array in self.source:
            self.digests.append(voxels_sha256(array))
            if self.keep:
                self.arrays.append(array)
            yield name, array

    def set_sha256(self) -> str:
        """SHA-256 of the sorted per-volume checksums: the same volumes, in any order, give one value."""
        return set_checksum(self.digests)


def set_checksum(digests: Sequence[str]) -> str:
    """SHA-256 of the sorted per-item checksums (hex), one per line."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def marked_synthetic(files: Sequence) -> list:
    """The files among ``files`` that carry a synthetic mark (header, sidecar or generated.json).

    A file whose header cannot be read counts as unmarked here; reading it later names it.
    """
    from medvol.data.provenance import provenance_of

    marked = []
    for path in files:
        try:
            if provenance_of(path)["synthetic"]:
                marked.append(path)
        except MedvolError:
            pass
    return marked


def synthetic_real(info: dict, marked: Sequence[str], total: int, allow: bool, spec: str, unit: str = "volumes") -> None:
    """Refuse a real set holding generated data unless ``allow``; record what was allowed in ``info``.

    Raises:
        MedvolError: one line naming the real source, the count and a first marked item.
    """
    if not marked:
        return
    if not allow:
        raise MedvolError(f"--real {spec}: {len(marked)} of its {total} {unit} are marked synthetic (e.g. "
                          f"{marked[0]}); generated data scored as the real set would hide what the scores "
                          "measure: pass --allow-synthetic-real to score against them anyway")
    info["synthetic"] = {"count": len(marked), "names": list(marked), "allowed_by": "--allow-synthetic-real"}


def is_cache(spec: str | None) -> bool:
    """Whether ``spec`` names a preprocessing cache (a folder with ``manifest.json``)."""
    return spec is not None and Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file()


def cache_params(spec: str):
    """``(folder, PreprocessParams)`` of the cache ``spec``, or None when ``spec`` is no cache.

    Its manifest records how its volumes were prepared: raw volumes scored against them are
    prepared the same way, so that ``--size`` (and the window) need not be typed twice."""
    if not is_cache(spec):
        return None
    from medvol.data.cache import load_manifest
    from medvol.data.preprocess import PreprocessParams

    return Path(spec), PreprocessParams.from_dict(load_manifest(Path(spec))["params"])


def precomputed(path: str, role: str) -> FeatureSet:
    p = Path(path)
    if not p.is_file():
        raise MedvolError(f"--{role} {path}: no such feature file")
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MedvolError(f"--{role} {path}: unreadable .npy ({error})") from None
    a = M.as_features(a, f"--{role} {path}")
    return FeatureSet({"features": a}, {"features": np.arange(len(a))}, len(a),
                      [f"row_{i}" for i in range(len(a))])



# -------------------------------------------------------------------------------- images


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


def read_image(path: Path, window: tuple[float, float] | None, *, stored: bool = False) -> np.ndarray:
    """One 2D image file as float32 ``(rows, columns)`` in [-1, 1].

    PNG: grey levels (RGB is converted to luminance) over the full 8- or 16-bit range.
    NIfTI: HU mapped with ``window`` (clipped), or taken as [-1, 1] when ``window`` is None.
    ``stored``: NIfTI values as stored instead (HU for CT, unclipped: the reader study windows
    them for display); PNG as above.
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
        if window is not None and not stored:
            low, high = window
            array = (np.clip(array, low, high) - low) / (high - low) * 2.0 - 1.0
    if array.ndim != 2:
        raise MedvolError(f"{path}: expected a 2D image, got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise MedvolError(f"{path}: the image contains NaN or inf")
    if stored and _suffix(path) != ".png":
        return array.astype(np.float32)
    return np.clip(array, -1.0, 1.0).astype(np.float32)


class GeneratedImages:
    """Images of a 2D checkpoint: yields ``(name, float32 (S, S))``, generated ``batch`` at a time.

    Image ``i`` is sample ``i`` of the seed (:meth:`medvol.sample.sampler.Sampler.stream`), so the
    set does not depend on the batch size or the device. ``model``: the checkpoint's
    :class:`~medvol.sample.sampler.Sampler`, or its loaded ``(system, cfg, state)``.
    """

    dims = 2

    def __init__(self, model, n: int, seed: int, batch: int, device: str):
        if not isinstance(model, Sampler):
            from medvol.train.distributed import pick_device

            model = Sampler(model, pick_device(device))
        self.sampler = model
        self.system, self.cfg, state = model.system, model.cfg, model.state
        self.n, self.seed, self.batch, self.device = n, seed, batch, device
        self.size = model.size
        self.role = "fake"
        ckpt = Path(state["path"])
        self.info = {"source": None, "kind": "checkpoint", "checkpoint": str(ckpt),
                     "checkpoint_sha256": file_hash(ckpt), "iteration": int(state.get("iteration", -1)),
                     "model": f"{self.cfg.model.name}@{self.size}", "seed": seed, "size": self.size,
                     "channels": int(self.system.channels), "fed_channel": 0}
        self.names = [f"generated_{seed}_{i:05d}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, sample in zip(self.names, self.sampler.stream(self.n, self.seed, batch=self.batch)):
            image = sample.array[0]  # the image channel; mask channels are not scored
            if not np.isfinite(image).all():
                raise MedvolError(f"--fake {self.info['checkpoint']}: the model generates NaN or inf")
            yield name, np.clip(image, -1.0, 1.0).astype(np.float32)


def _stored_unit(path: Path) -> bool:
    """Whether ``path`` is a NIfTI image medvol generated in [-1, 1]: its sidecar (``X.json``,
    ``"generated_by": "medvol"``) records ``"window": null``."""
    if _suffix(path) == ".png":
        return False
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            sidecar = path.with_name(name[: -len(ext)] + ".json")
            break
    else:
        return False
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generated_by") == "medvol" and "window" in meta \
        and meta["window"] is None


class ImageFiles:
    """A folder of 2D image files: yields ``(name, float32 (S, S))``, one file at a time."""

    dims = 2

    def __init__(self, spec: str, files: list[Path], n: int | None, window, role: str = "fake"):
        self.role = role
        self.files = files[:n] if n else files
        self.window = window
        self.names = [p.name for p in self.files]
        # medvol writes a model's images in [-1, 1], not HU, when its training cache had no HU
        # window (image files, MR): its sidecar says so ("window": null); an HU window would
        # flatten them to one grey level.
        self.stored_unit = [_stored_unit(path) for path in self.files]
        first = read_image(self.files[0], None if self.stored_unit[0] else window)
        self.size = int(first.shape[0])
        if first.shape[0] != first.shape[1]:
            raise MedvolError(f"{self.files[0]}: images must be square, got {tuple(first.shape)}")
        unit = sum(self.stored_unit)
        self.info = {"source": spec, "kind": "images", "files": len(self.files), "size": self.size,
                     "intensity": ("NIfTI in HU, window " + f"{window[0]:g},{window[1]:g}" if window
                                   else "NIfTI taken as [-1, 1]")
                     + (f" ({unit} medvol NIfTI file(s) whose sidecar says [-1, 1] taken as [-1, 1])"
                        if unit and window else "") + "; PNG grey levels over the full range"}

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for path, unit in zip(self.files, self.stored_unit):
            image = read_image(path, None if unit else self.window)
            if image.shape != (self.size, self.size):
                raise MedvolError(f"{path}: shape {tuple(image.shape)} differs from the first "
                                  f"image's {(self.size, self.size)}")
            yield path.name, image

    def __len__(self) -> int:
        return len(self.files)


class RealSlices:
    """N slices of a :class:`medvol.data.datasets.SliceDataset`, drawn with ``seed``: image channel."""

    dims = 2
    role = "real"

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

    def __len__(self) -> int:
        return len(self.indices)


def real_slices(spec: str, cfg, *, size: int, plane: str, split: str, n: int | None,
                seed: int, allow_synthetic_real: bool = False) -> RealSlices:
    """The real side of a 2D evaluation (see the module docstring).

    A cache split holding volumes marked synthetic (``--real CACHE``, or ``--real data`` of a run
    trained on them) is refused unless ``allow_synthetic_real``, then recorded.
    """
    from medvol.config import DataConfig
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
    channels = 1
    if data.source != "phantom" and (Path(data.source) / "manifest.json").is_file():
        from medvol.data.datasets import CachedVolumeDataset
        from medvol.data.image_datasets import CachedImageDataset
        from medvol.train.data import _is_image_cache

        if _is_image_cache(data.source):  # a 2D cache: its images' channels (1 grey, 3 RGB) from the cache
            volumes = CachedImageDataset(data.source, split=data.split, allow_synthetic=True)
            channels = volumes.channels
        else:
            volumes = CachedVolumeDataset(data.source, split=data.split, allow_synthetic=True)
        synthetic_real(info, list(volumes.synthetic), len(volumes), allow_synthetic_real, spec)
        if volumes.synthetic:  # allowed and recorded just above
            data = dataclasses.replace(data, allow_synthetic=True)
    dataset = build_dataset(data, size, dims=2, channels=channels + int(data.masks))
    info["data"] = dataclasses.asdict(data)
    return RealSlices(dataset, n, seed, info)
