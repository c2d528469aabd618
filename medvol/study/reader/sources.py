"""Where the images of a reader study come from: real volumes and the ``--fake`` sources.

A source is a list of volumes read one at a time (a study of 30 pairs at 256³ never holds more
than the two volumes of the pair being drawn). Real volumes come from a medvol cache (CT mapped
back to HU, as ``medvol view`` shows it) or any folder/file/glob that ``medvol.data`` reads; a
fake source is such a folder (e.g. the output of ``medvol generate``) or a checkpoint, from which
volumes are generated on the fly with the study's seed, as
:func:`medvol.sample.generate.generate_volumes` writes them (the checkpoint is read once, by
:class:`medvol.sample.sampler.Sampler`).

A study of 2D images (``dims`` 2) reads, instead, a 2D image cache (``medvol preprocess
--images``; CT slices mapped back to HU by the cache's window), a folder of PNG / 2D NIfTI images
(:func:`medvol.eval.sources.image_files`, :func:`~medvol.eval.sources.read_image`; NIfTI as stored)
or a 2D model's checkpoint (:class:`medvol.eval.sources.GeneratedImages`, CT mapped back to HU by
the training window). One study never mixes 2D images and volumes (:func:`open_sources`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medvol.errors import MedvolError

#: Source names: what ``--fake NAME=…`` may call a model (they key the answer key and the score).
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,63}$")
#: Relative tolerance on the physical aspect ratio below which a real volume is resized as it is.
ASPECT_TOLERANCE = 0.05


@dataclass
class Source:
    """A named list of volumes, loaded lazily.

    Attributes:
        name: ``"real"`` or the ``--fake`` NAME.
        origin: what it was made from (a path), for the key.
        items: one description per volume (file name, cache entry, or checkpoint seed and index).
        loader: ``loader(i)`` -> (array (D, H, W) float32, spacing (z, y, x) mm); for 2D images
            (array (H, W), spacing (row, column)).
        synthetic: ``(item, evidence)`` for each volume marked synthetic (real sources only).
        dims: 3 (volumes) or 2 (images).
    """

    name: str
    origin: str
    items: list[str]
    loader: Callable[[int], tuple[np.ndarray, tuple[float, ...]]] = field(repr=False)
    synthetic: list[tuple[str, str]] = field(default_factory=list)
    dims: int = 3

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, tuple[float, float, float]]:
        return self.loader(index)


def parse_fake(text: str) -> tuple[str, str]:
    """``"crfgan=runs/crf"`` -> ``("crfgan", "runs/crf")``; a one-line error otherwise."""
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise MedvolError(f"--fake {text!r}: expected NAME=DIR_OR_CKPT")
    if not NAME_PATTERN.match(name) or name == "real":
        raise MedvolError(f"--fake {text!r}: NAME must start with a letter, use letters, digits and _ . + - "
                          "(at most 64), and not be 'real'")
    return name, path


def is_checkpoint(path: Path) -> bool:
    """A ``ckpt_*.pt`` file, a run folder (``checkpoints/ckpt_*.pt``) or a checkpoints folder."""
    from medvol.train.checkpoint import list_checkpoints

    if path.is_file():
        return path.suffix == ".pt"
    return path.is_dir() and any(list_checkpoints(folder, require_checksum=False)
                                 for folder in (path / "checkpoints", path))


def _cache_source(name: str, path: Path, split: str) -> Source:
    from medvol.data.cache import MANIFEST, load_entry, load_manifest

    manifest = load_manifest(path)
    entries = [e for e in manifest["volumes"] if split == "all" or e.get("split") == split]
    if not entries:
        raise MedvolError(f"--real {path}: the cache has no {split!r} volumes (--real-split)")
    names = [e["name"] for e in entries]

    def load(index: int):
        volume = load_entry(path, names[index], physical=True)
        return volume.array, tuple(volume.spacing)

    marked = [(f"cache:{e['name']}", f"{MANIFEST} entry {e['name']!r}: synthetic")
              for e in entries if e.get("synthetic") is True]
    return Source(name, str(path), [f"cache:{n}" for n in names], load, marked)


def _file_source(name: str, spec: str) -> Source:
    from medvol.data.discover import discover
    from medvol.data.io import read_volume

    files = discover(spec)

    def load(index: int):
        volume = read_volume(files[index])
        return volume.array, tuple(volume.spacing)

    return Source(name, str(spec), [str(f) for f in files], load)


def real_source(spec: str, split: str = "all") -> Source:
    """The real volumes: a medvol cache folder (``split`` of it) or files/folders/globs.

    Volumes marked synthetic (:func:`medvol.data.provenance.provenance_of`: header, sidecar,
    ``generated.json`` listing, or a cache entry made from such a volume) are listed in
    ``Source.synthetic``; the caller decides (``make_study`` refuses them by default).
    """
    from medvol.data.cache import MANIFEST
    from medvol.data.provenance import provenance_of

    from medvol.data.cache import load_manifest
    from medvol.data.image_cache import is_image_cache

    path = Path(spec)
    if path.is_dir() and (path / MANIFEST).is_file():
        if is_image_cache(load_manifest(path)):
            return _image_cache_source("real", path, split)
        return _cache_source("real", path, split)
    if split != "all":
        raise MedvolError(f"--real-split {split}: {spec} is not a medvol cache (only caches have splits)")
    images = _image_folder_source("real", spec)
    if images is not None:
        return images
    source = _file_source("real", spec)
    for item in source.items:
        try:
            found = provenance_of(item)
        except MedvolError:  # an unreadable header: reading the volume reports it, naming the file
            continue
        if found["synthetic"]:
            source.synthetic.append((item, "; ".join(found["evidence"])))
    return source


def _image_cache_source(name: str, path: Path, split: str) -> Source:
    """The images of a 2D image cache, in HU for CT slices (the cache's window), else as cached
    ([-1, 1]); RGB images become grey by PIL's luminance weights, as :func:`read_image` reads an
    RGB PNG, so that both kinds of real image look alike."""
    from medvol.data.cache import MANIFEST
    from medvol.data.image_datasets import CachedImageDataset
    from medvol.data.preprocess import to_intensity

    try:
        dataset = CachedImageDataset(path, split=split, allow_synthetic=True)
    except MedvolError as error:
        raise MedvolError(f"--real {path}: {error}") from None

    def load(index: int):
        image = dataset[index]["image"].numpy().astype(np.float64)
        grey = image[0] if image.shape[0] < 3 else np.tensordot(LUMINANCE, image[:3], axes=1)
        grey = to_intensity(grey, dataset.window)
        spacing = dataset.entries[index].get("spacing") or (1.0, 1.0)
        return grey.astype(np.float32), tuple(float(v) for v in spacing)

    marked = set(dataset.synthetic)
    synthetic = [(f"cache:{n}", f"{MANIFEST} entry {n!r}: synthetic") for n in dataset.names if n in marked]
    return Source(name, str(path), [f"cache:{n}" for n in dataset.names], load, synthetic, dims=2)


#: PIL's weights of R, G and B in a grey ("L") image.
LUMINANCE = np.array([0.299, 0.587, 0.114])


def _image_folder_source(name: str, spec: str) -> Source | None:
    """A file or folder of 2D images (PNG, 2D NIfTI), or None when ``spec`` names none."""
    from medvol.eval.sources import image_files, marked_synthetic, read_image

    files = image_files(spec)
    if files is None:
        return None

    def load(index: int):
        return read_image(files[index], None, stored=True), (1.0, 1.0)

    source = Source(name, str(spec), [str(f) for f in files], load, dims=2)
    if name == "real":
        source.synthetic = [(str(f), "marked synthetic (header, sidecar or generated.json)")
                            for f in marked_synthetic(files)]
    return source


def _generated_images(name: str, spec: str, sampler, n: int, seed: int) -> Source:
    """``n`` images of a 2D checkpoint, drawn once with ``seed`` (image ``i`` is sample ``i``, as
    ``medvol generate --seed`` writes it), CT mapped back to HU by the training window."""
    from medvol.data.preprocess import to_intensity
    from medvol.eval.sources import GeneratedImages

    images = [image for _, image in GeneratedImages(sampler, n, seed, batch=16, device=str(sampler.device))]
    images = [to_intensity(image.astype(np.float64), sampler.window).astype(np.float32) for image in images]
    return Source(name, str(spec), [f"{spec} seed {seed} #{i}" for i in range(n)],
                  lambda index: (images[index], (1.0, 1.0)), dims=2)


def _describe(source_dims: int) -> str:
    return "2D images" if source_dims == 2 else "volumes"


def open_sources(real: str | None, real_split: str, parsed: list[tuple[str, str]], counts: dict[str, int],
                 seed: int, workdir: Path, device: str = "auto",
                 check: Callable[[dict[str, Source], int], None] | None = None) -> tuple[dict[str, Source], int]:
    """Open the real source and every ``--fake``; return them and the study's dims (2 or 3).

    The folders and the real source decide: all 2D images, or all volumes; a mix is refused in one
    line. A checkpoint follows them: a 2D model gives images in a 2D study and volumes of stacked
    slices in a 3D one; a 3D model in a 2D study is refused. Only checkpoints (model-vs-model):
    a 2D study when every model is 2D. ``counts[name]`` images or volumes are generated per
    checkpoint, after every source has been checked: ``check(sources, dims)`` is called with
    the sources read from files (the real one first) before any generation, then with the generated ones.
    """
    from medvol.sample.sampler import Sampler

    sources: dict[str, Source] = {}
    if real is not None:
        sources["real"] = real_source(real, real_split)
    samplers = {}
    for name, spec in parsed:
        path = Path(spec)
        if not path.exists():
            raise MedvolError(f"--fake {name}={spec}: no such file or folder")
        if is_checkpoint(path):
            samplers[name] = Sampler.load(path, device)
        else:
            sources[name] = _image_folder_source(name, spec) or _file_source(name, spec)
    specs = {"real": f"--real {real}", **{name: f"--fake {name}={spec}" for name, spec in parsed}}
    found = {source.dims for source in sources.values()}
    if len(found) > 1:
        first = next(n for n, src in sources.items() if src.dims == 2)
        other = next(n for n, src in sources.items() if src.dims == 3)
        raise MedvolError(f"{specs[first]} holds 2D images but {specs[other]} holds volumes: a study shows "
                          "either 2D images or slices of volumes, never both")
    dims = found.pop() if found else (2 if all(s.dims == 2 for s in samplers.values()) else 3)
    for name, sampler in samplers.items():
        if dims == 2 and sampler.dims == 3:
            raise MedvolError(f"{specs[name]} is a 3D model but the study's other sources are 2D images: a "
                              "study shows either 2D images or slices of volumes, never both")
    if check is not None:
        check({key: sources[key] for key in specs if key in sources}, dims)
    generated = {}
    for name, spec in parsed:
        if name not in samplers:
            continue
        n = max(1, counts[name])
        if dims == 2:
            generated[name] = _generated_images(name, spec, samplers[name], n, seed)
        else:
            generated[name] = _generated_volumes(name, spec, samplers[name], n, seed, workdir)
    if check is not None and generated:
        check(generated, dims)
    sources.update(generated)
    return {key: sources[key] for key in specs if key in sources}, dims


def _generated_volumes(name: str, spec: str, sampler, n: int, seed: int, workdir: Path) -> Source:
    """``n`` volumes of a checkpoint written into ``workdir`` as ``medvol generate --seed SEED --n N``
    writes them (a 2D model's: stacked slices), then read like a folder."""
    from medvol.sample.images import write_images
    from medvol.sample.volumes import write_volumes

    out = workdir / f"generated_{len(list(workdir.iterdir()))}"
    if sampler.dims == 2:
        files = write_images(sampler, n, out, seed=seed, volume=True)
    else:
        files = write_volumes(sampler, n, out, seed)
    source = _file_source(name, str(out))
    source.origin = str(spec)
    source.items = [f"{spec} seed {seed} #{i}" for i in range(len(files))]
    return source


@contextlib.contextmanager
def scratch_folder(near: Path):
    """A temporary folder for generated volumes, removed afterwards (beside ``near`` so that
    large volumes land on the study's disk, not a small /tmp)."""
    near.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{near.name}.gen-", dir=near.parent) as tmp:
        yield Path(tmp)


def physical_aspect(shape, spacing) -> np.ndarray:
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    return extent / extent.max()


def fit_to_shape(array: np.ndarray, spacing, shape: tuple[int, ...], fake_spacing, what: str) -> np.ndarray:
    """Resize a volume (or a 2D image) to ``shape`` so that slice k of both shows the same position.

    Shrinking averages voxels (``area``: no aliasing a reader could spot), enlarging is trilinear
    (bilinear for images). Every image of a study goes through here, real or generated, whatever
    its file format. A volume whose physical aspect ratio differs from the target's (a raw
    512 × 512 × 300 scan against a generated cube) would be distorted: refused, naming ``what``.
    """
    import torch
    import torch.nn.functional as F

    if array.ndim != len(shape):
        raise MedvolError(f"{what}: shape {tuple(array.shape)} cannot be shown beside {tuple(shape)}")
    if tuple(array.shape) == tuple(shape):
        return np.array(array, dtype=np.float32)
    mine, theirs = physical_aspect(array.shape, spacing), physical_aspect(shape, fake_spacing)
    if np.abs(mine - theirs).max() > ASPECT_TOLERANCE:
        if len(shape) == 2:
            raise MedvolError(f"{what}: image of shape {tuple(array.shape)} has another aspect than the generated "
                              f"{tuple(shape)}; give images of the model's aspect (a 2D cache: "
                              f"`medvol preprocess --images ... --size {max(shape)}`)")
        raise MedvolError(
            f"{what}: shape {tuple(array.shape)} at spacing {tuple(round(float(s), 3) for s in spacing)} mm has "
            f"another physical aspect than the generated {tuple(shape)}; give volumes preprocessed as the "
            f"model's training data (a medvol cache: `medvol preprocess --size {max(shape)}`)")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrink = all(t <= s for t, s in zip(shape, array.shape))
    mode = "area" if shrink else ("bilinear" if len(shape) == 2 else "trilinear")
    kwargs = {} if shrink else {"align_corners": False}
    return F.interpolate(tensor, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()
