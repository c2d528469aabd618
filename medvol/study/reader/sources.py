"""Where the images of a reader study come from: real volumes and the ``--fake`` sources.

A source is a list of volumes read one at a time (a study of 30 pairs at 256³ never holds more
than the two volumes of the pair being drawn). Real volumes come from a medvol cache (CT mapped
back to HU, as ``medvol view`` shows it) or any folder/file/glob that ``medvol.data`` reads; a
fake source is such a folder (e.g. the output of ``medvol generate``) or a checkpoint, from which
volumes are generated on the fly by :func:`medvol.sample.generate.generate_volumes` with the
study's seed.
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
        loader: ``loader(i)`` -> (array (D, H, W) float32, spacing (z, y, x) mm).
        synthetic: ``(item, evidence)`` for each volume marked synthetic (real sources only).
    """

    name: str
    origin: str
    items: list[str]
    loader: Callable[[int], tuple[np.ndarray, tuple[float, float, float]]] = field(repr=False)
    synthetic: list[tuple[str, str]] = field(default_factory=list)

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

    path = Path(spec)
    if path.is_dir() and (path / MANIFEST).is_file():
        return _cache_source("real", path, split)
    if split != "all":
        raise MedvolError(f"--real-split {split}: {spec} is not a medvol cache (only caches have splits)")
    source = _file_source("real", spec)
    for item in source.items:
        try:
            found = provenance_of(item)
        except MedvolError:  # an unreadable header: reading the volume reports it, naming the file
            continue
        if found["synthetic"]:
            source.synthetic.append((item, "; ".join(found["evidence"])))
    return source


def fake_source(name: str, spec: str, n: int, seed: int, workdir: Path, device: str = "auto") -> Source:
    """A ``--fake`` source: volumes in a folder, or ``n`` volumes generated from a checkpoint.

    Generation goes through :func:`medvol.sample.generate.generate_volumes` (seed ``seed``, volume
    ``i`` the i-th latent: the files ``medvol generate --seed SEED --n N`` writes) into
    ``workdir``, which the caller deletes after the study is made.
    """
    path = Path(spec)
    if not path.exists():
        raise MedvolError(f"--fake {name}={spec}: no such file or folder")
    if not is_checkpoint(path):
        return _file_source(name, spec)
    from medvol.sample.generate import generate_volumes

    out = workdir / f"generated_{len(list(workdir.iterdir()))}"
    files = generate_volumes(path, n, out, seed=seed, device=device)
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


def fit_to_shape(array: np.ndarray, spacing, shape: tuple[int, int, int], fake_spacing, what: str) -> np.ndarray:
    """Resize a volume to ``shape`` so that slice k of both shows the same position.

    Shrinking averages voxels (``area``: no aliasing a reader could spot), enlarging is trilinear.
    A volume whose physical aspect ratio differs from the target's (a raw 512 × 512 × 300 scan
    against a generated cube) would be distorted: refused, naming ``what``.
    """
    import torch
    import torch.nn.functional as F

    if tuple(array.shape) == tuple(shape):
        return np.asarray(array, dtype=np.float32)
    mine, theirs = physical_aspect(array.shape, spacing), physical_aspect(shape, fake_spacing)
    if np.abs(mine - theirs).max() > ASPECT_TOLERANCE:
        raise MedvolError(
            f"{what}: shape {tuple(array.shape)} at spacing {tuple(round(float(s), 3) for s in spacing)} mm has "
            f"another physical aspect than the generated {tuple(shape)}; give volumes preprocessed as the "
            f"model's training data (a medvol cache: `medvol preprocess --size {max(shape)}`)")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrink = all(t <= s for t, s in zip(shape, array.shape))
    mode = "area" if shrink else "trilinear"
    kwargs = {} if shrink else {"align_corners": False}
    return F.interpolate(tensor, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()
