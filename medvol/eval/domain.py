"""A domain feature network that medvol trains itself: ``medvol features train``.

ImageNet Inception features see textures of natural images; the seeds found that features of a
network trained on the medical data expose mode collapse that they miss. No such network can be
downloaded here, so medvol trains one on the real training volumes: a MONAI 3D ``AutoEncoder``
(four stride-2 stages, channels 16-32-64-128, one residual unit each, instance norm) trained to
reconstruct the volumes (L1), with random flips. The features of a volume are its encoder output
average-pooled to 2 x 2 x 2 cells (128 x 8 = 1024 values), so they keep the coarse layout of the
anatomy (where the lungs are), which a global pool would discard.

It trains through medvol's fit loop for auxiliary networks (:mod:`medvol.train.fit`): the file it
writes is a medvol checkpoint (``FILE`` and ``FILE.sha256``) holding the weights, the optimiser and
RNG states (so training can be continued), the architecture, the training data's identity (cache
path and manifest sha256) and the loss curve; ``--features domain:FILE`` loads it (or a file of the
older ``medvol-domain-features`` format), records its sha256 and refuses volumes of another size.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from medvol.errors import MedvolError

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


TASK = "domain-features"


def train_domain_features(data: str | os.PathLike, out: str | os.PathLike, *, iters: int = 300,
                          batch: int = 4, lr: float = 1e-3, seed: int = 0,
                          channels=DEFAULT_CHANNELS, overwrite: bool = False, resume: str | None = None,
                          ckpt_every: int = 0, allow_changes: bool = False, device: str = "cpu",
                          log_every: int = 50, print_fn=print) -> dict:
    """Train the autoencoder on the train split of cache ``data``; write it to ``out``.

    Training runs through :func:`medvol.train.fit.fit`, so ``out`` is a medvol checkpoint (with its
    ``.sha256`` sidecar) that both ``--features domain:FILE`` and a later ``resume`` read:
    ``resume="auto"`` continues ``out`` to ``iters`` (another cache or recipe is refused unless
    ``allow_changes``), ``resume=FILE`` forks another feature file's training into ``out``.

    ``out`` is checked before training (:func:`check_feature_output`); it is written atomically
    and a failed write (a full disk) is one line naming it, with nothing left under its name.

    Returns:
        The file's content as :func:`read_feature_file` gives it.
    """
    from medvol.data.cache import MANIFEST
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.train.fit import fit

    import medvol

    out = Path(out)
    continuing = resume == "auto" and is_feature_file(out)
    check_feature_output(out, overwrite or continuing)
    for source in ([out] if continuing else []) + ([Path(resume)] if resume not in (None, "auto") else []):
        if source.is_file() and not read_feature_file(source)["checkpoint"]:
            raise MedvolError(f"--resume: {source} is a domain feature file of the earlier format, without optimiser "
                              "and RNG states; it can be used for features but not continued (train a new one)")
    if iters < 1 or batch < 1 or not lr > 0:
        raise MedvolError("--iters and --batch must be at least 1 and --lr positive")
    ds = CachedVolumeDataset(data, split="train")
    if ds.size % 2 ** len(channels):
        raise MedvolError(f"{data}: volume size {ds.size} is not divisible by {2 ** len(channels)}")
    manifest_sha = hashlib.sha256((Path(data) / MANIFEST).read_bytes()).hexdigest()
    from medvol.train.distributed import pick_device

    dev = pick_device(device)

    def step(net: torch.nn.Module, iteration: int, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.integers(0, len(ds), batch)
        x = torch.stack([torch.from_numpy(np.array(ds.volume(int(i)), dtype=np.float32)) for i in idx])
        for axis in range(3):  # random flips, per sample
            flip = torch.from_numpy(rng.random(batch) < 0.5)
            x[flip] = x[flip].flip(axis + 1)
        x = x[:, None].to(dev)
        return torch.nn.functional.l1_loss(net(x), x)

    settings = {"channels": list(channels), "size": ds.size, "batch": batch, "manifest_sha256": manifest_sha}
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "channels": list(channels), "size": ds.size,
              "data": {"cache": str(Path(data).resolve()), "manifest_sha256": manifest_sha,
                       "split": "train", "n_volumes": len(ds)},
              "train": {"iters": iters, "batch": batch, "lr": lr, "seed": seed},
              "medvol_version": medvol.__version__,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    fit(lambda: build_autoencoder(channels), step, task=TASK, iterations=iters, lr=lr, seed=seed, settings=settings,
        device=dev, out=out, ckpt_every=ckpt_every, resume=resume, allow_changes=allow_changes, record=record,
        log=print_fn, log_every=log_every, loss_name="L1", what="domain feature file")
    return read_feature_file(out)


def read_feature_file(path: str | os.PathLike) -> dict:
    """A domain feature file as one dict, whichever format wrote it.

    Files written before the auxiliary fit loop existed are a plain ``torch.save`` dict of format
    ``medvol-domain-features`` 1 (still read); since then they are medvol checkpoints of the task
    ``domain-features`` (:mod:`medvol.train.fit`, checksum verified). Both give
    ``{"channels", "size", "state_dict", "data", "train" (with "loss"), "checkpoint"}``.

    Raises:
        MedvolError: unreadable, a failed checksum, or neither format.
    """
    from medvol.train.checkpoint import FORMAT as CHECKPOINT
    from medvol.train.checkpoint import checksum_path
    from medvol.train.fit import read_auxiliary

    path = Path(path)
    blob = None
    if not checksum_path(path).is_file():  # a checkpoint is read through its checksum, below
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise MedvolError(f"domain feature weights {path}: unreadable ({type(error).__name__})") from None
        if isinstance(blob, dict) and blob.get("format") == FORMAT:
            return dict(blob, checkpoint=False)
    if blob is None or (isinstance(blob, dict) and blob.get("format") == CHECKPOINT):
        state = read_auxiliary(path, TASK)  # verifies the checksum
        aux = state["auxiliary"]
        return {"format": FORMAT, "format_version": aux.get("format_version", FORMAT_VERSION),
                "channels": aux["channels"], "size": aux["size"], "state_dict": state["system"],
                "data": aux.get("data"), "train": dict(aux.get("train") or {}, loss=aux["losses"]),
                "iteration": state["iteration"], "medvol_version": aux.get("medvol_version"),
                "date": aux.get("date"), "checkpoint": True}
    raise MedvolError(f"{path}: not a medvol domain feature file (make one with `medvol features train`)")


def is_feature_file(path: Path) -> bool:
    """Whether ``path`` is a domain feature file medvol wrote (either format says so)."""
    from medvol.train.checkpoint import FORMAT as CHECKPOINT

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch zip file, or not one of ours
        return False
    return isinstance(blob, dict) and (blob.get("format") == FORMAT
                                       or (blob.get("format") == CHECKPOINT and blob.get("task") == TASK))


def check_feature_output(out: Path, overwrite: bool) -> None:
    """The one output rule (:mod:`medvol.outputs`) for ``--out FILE``, before any training.

    An existing domain feature file is replaced only with ``overwrite``; any other file (not
    written by ``medvol features train``) or a folder is never replaced.

    Raises:
        MedvolError: one line naming ``out`` and what is in the way.
    """
    from medvol.train.checkpoint import checksum_path, verify_checksum

    if out.is_dir():
        raise MedvolError(f"--out {out}: is a folder; give the file to write (e.g. {out / 'domain.pt'})")
    if out.exists() or out.is_symlink():
        if out.is_file() and checksum_path(out).is_file():
            verify_checksum(out)  # a damaged feature file is named as such, and kept
        if not is_feature_file(out):
            raise MedvolError(f"--out {out}: exists and is not a domain feature file medvol wrote; refusing to "
                              "replace it (with or without --overwrite): choose another --out")
        if not overwrite:
            raise MedvolError(f"--out {out}: holds a domain feature file; choose another --out, pass --overwrite, "
                              "or --resume auto to continue its training")
    else:
        side = checksum_path(out)
        if side.exists() or side.is_symlink():
            raise MedvolError(f"--out {out}: {side.name} exists beside it and was not written with it; refusing to "
                              "replace it: choose another --out")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedvolError(f"--out {out}: cannot create its folder ({parent} is not a folder)")


def save_untrained(path: str | os.PathLike, size: int, seed: int = 0, channels=DEFAULT_CHANNELS) -> Path:
    """A domain feature file with seeded random-init weights (for tests and plumbing checks)."""
    from medvol.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = build_autoencoder(channels)
    return save_checkpoint(path, {"kind": "auxiliary", "task": TASK, "iteration": 0, "system": net.state_dict(),
                                  "auxiliary": {"format": FORMAT, "format_version": FORMAT_VERSION,
                                                "channels": list(channels), "size": size, "data": None,
                                                "train": None, "losses": [], "settings": {}}},
                           what="domain feature file")
