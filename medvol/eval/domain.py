"""A domain feature network that medvol trains itself: ``medvol features train``.

ImageNet Inception features see textures of natural images; the seeds found that features of a
network trained on the medical data expose mode collapse that they miss. No such network can be
downloaded here, so medvol trains one on the real training volumes: a MONAI 3D ``AutoEncoder``
(four stride-2 stages, channels 16-32-64-128, one residual unit each, instance norm) trained to
reconstruct the volumes (L1), with random flips. The features of a volume are its encoder output
average-pooled to 2 x 2 x 2 cells (128 x 8 = 1024 values), so they keep the coarse layout of the
anatomy (where the lungs are), which a global pool would discard.

The file it writes holds the weights, the architecture, the training data's identity (cache path
and manifest sha256) and the loss curve; ``--features domain:FILE`` loads it, records its sha256
and refuses volumes of another size.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from medvol.errors import MedvolError
from medvol.eval.features import Extractor, check_sha256, register_extractor

FORMAT = "medvol-domain-features"
FORMAT_VERSION = 1
DEFAULT_CHANNELS = (16, 32, 64, 128)


def build_autoencoder(channels=DEFAULT_CHANNELS) -> torch.nn.Module:
    from monai.networks.nets import AutoEncoder

    return AutoEncoder(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                       strides=(2,) * len(channels), num_res_units=1, norm="instance")


def pooled_features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    e = net.encode(x)
    return torch.nn.functional.adaptive_avg_pool3d(e, 2).flatten(1)


def train_domain_features(data: str | os.PathLike, out: str | os.PathLike, *, iters: int = 300,
                          batch: int = 4, lr: float = 1e-3, seed: int = 0,
                          channels=DEFAULT_CHANNELS, overwrite: bool = False,
                          log_every: int = 50, print_fn=print) -> dict:
    """Train the autoencoder on the train split of cache ``data``; write it to ``out``.

    ``out`` is checked before training (:func:`check_feature_output`); it is written atomically
    and a failed write (a full disk) is one line naming it, with nothing left under its name.
    """
    from medvol.data.cache import MANIFEST
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.utils import checked_write

    out = Path(out)
    check_feature_output(out, overwrite)
    if iters < 1 or batch < 1 or not lr > 0:
        raise MedvolError("--iters and --batch must be at least 1 and --lr positive")
    ds = CachedVolumeDataset(data, split="train")
    if ds.size % 2 ** len(channels):
        raise MedvolError(f"{data}: volume size {ds.size} is not divisible by {2 ** len(channels)}")
    manifest_sha = hashlib.sha256((Path(data) / MANIFEST).read_bytes()).hexdigest()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_autoencoder(channels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for it in range(iters):
        idx = rng.integers(0, len(ds), batch)
        x = torch.stack([torch.from_numpy(np.array(ds.volume(int(i)), dtype=np.float32)) for i in idx])
        for axis in range(3):  # random flips, per sample
            flip = torch.from_numpy(rng.random(batch) < 0.5)
            x[flip] = x[flip].flip(axis + 1)
        x = x[:, None]
        loss = torch.nn.functional.l1_loss(net(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not np.isfinite(value):
            raise MedvolError(f"domain feature training diverged at iteration {it} (loss {value})")
        losses.append(value)
        if log_every and (it % log_every == 0 or it == iters - 1):
            print_fn(f"iteration {it:>5}  L1 {value:.4f}")
    import medvol

    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "channels": list(channels),
        "size": ds.size,
        "state_dict": net.state_dict(),
        "data": {"cache": str(Path(data).resolve()), "manifest_sha256": manifest_sha,
                 "split": "train", "n_volumes": len(ds)},
        "train": {"iters": iters, "batch": batch, "lr": lr, "seed": seed, "loss": losses},
        "medvol_version": medvol.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"--out {out}: cannot create its folder ({os.strerror(error.errno or 0).lower()})") from None
    with checked_write(out, "domain feature file", library_errors=(RuntimeError,)) as tmp:
        torch.save(blob, tmp)
    return blob


def is_feature_file(path: Path) -> bool:
    """Whether ``path`` is a domain feature file medvol wrote (its ``format`` says so)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch zip file, or not one of ours
        return False
    return isinstance(blob, dict) and blob.get("format") == FORMAT


def check_feature_output(out: Path, overwrite: bool) -> None:
    """The one output rule (:mod:`medvol.outputs`) for ``--out FILE``, before any training.

    An existing domain feature file is replaced only with ``overwrite``; any other file (not
    written by ``medvol features train``) or a folder is never replaced.

    Raises:
        MedvolError: one line naming ``out`` and what is in the way.
    """
    if out.is_dir():
        raise MedvolError(f"--out {out}: is a folder; give the file to write (e.g. {out / 'domain.pt'})")
    if out.exists() or out.is_symlink():
        if not is_feature_file(out):
            raise MedvolError(f"--out {out}: exists and is not a domain feature file medvol wrote; refusing to "
                              "replace it (with or without --overwrite): choose another --out")
        if not overwrite:
            raise MedvolError(f"--out {out}: holds a domain feature file; choose another --out or pass --overwrite")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedvolError(f"--out {out}: cannot create its folder ({parent} is not a folder)")


def save_untrained(path: str | os.PathLike, size: int, seed: int = 0, channels=DEFAULT_CHANNELS) -> Path:
    """A domain feature file with seeded random-init weights (for tests and plumbing checks)."""
    torch.manual_seed(seed)
    net = build_autoencoder(channels)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "channels": list(channels),
                "size": size, "state_dict": net.state_dict(), "data": None,
                "train": None}, path)
    return Path(path)


class DomainFeatures(Extractor):
    """Pooled encoder features of medvol's own autoencoder (see the module docstring)."""

    name = "domain"
    views = ("volume",)

    def __init__(self, weights: str | os.PathLike, sha256: str | None = None, device: str = "cpu"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MedvolError(f"domain feature weights not found: {path} (train them with "
                              "`medvol features train --data CACHE --out FILE`)")
        self.weights = path
        self.weights_sha256 = check_sha256(path, sha256, "domain feature")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise MedvolError(f"domain feature weights {path}: unreadable ({type(error).__name__})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise MedvolError(f"{path}: not a medvol domain feature file (make one with "
                              "`medvol features train`)")
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
        return {"volume": pooled_features(self.net, x).double().cpu().numpy()}


def _domain(arg: str | None, **options) -> Extractor:
    from medvol.eval.features import _split_hash

    if not arg:
        raise MedvolError("domain needs its weights file: --features domain:FILE (train one with "
                          "`medvol features train --data CACHE --out FILE`)")
    path, sha = _split_hash(arg)
    return DomainFeatures(path, sha, device=options.get("device", "cpu"))


register_extractor("domain", _domain)
