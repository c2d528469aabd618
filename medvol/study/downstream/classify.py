"""The classification network of the downstream study (``--task classify``): a MONAI classifier,
its training, the classical augmentation and the binary confusion counts.

The CT/X-ray thesis trained a TB-versus-normal classifier on real, augmented and GAN-made chest
X-rays and reported accuracy with false positives and false negatives. Here one recipe serves every
set-up, so that only the training data differ: a MONAI network (``classifier``: the small
``monai.networks.nets.Classifier``, widths ``channels``, stride 2 between them; ``densenet121``:
``DenseNet121``), 2D on images or 3D on volumes, two outputs (negative, positive), cross-entropy,
Adam, a fixed number of iterations of batches drawn uniformly (seeded) from the union of the
training sets, through :func:`medvol.train.fit.fit`. The network starts from its seeded random
initialisation or from a weights file (``weights``: a state dict, its SHA-256 recorded; a layer
whose shape differs, such as a head for other classes, keeps its initialisation and is listed).

The classical augmentation (``real + augmentation``) is the thesis's: a left-right flip, a rotation
in the image plane (the axial plane of a volume) up to ±36° and a zoom of ±10 %, each with
probability 0.5, MONAI ``Rand…`` transforms seeded per network. It suits a label that a flip, a
turn or a zoom does not change (TB, lung asymmetry present or not); it would corrupt one that
depends on side or size (which lung is small; habitus from body width).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medvol.errors import MedvolError
from medvol.study.downstream.data import LabelledSet

#: The networks ``--net`` offers.
NETS = ("classifier", "densenet121")
#: Default widths of ``classifier``: tiny, so that the phantom study runs in minutes on two CPU cores.
DEFAULT_CHANNELS = (8, 16, 32)
TASK = "downstream-classifier"


def build_classifier(net: str, dims: int, side: int, channels: Sequence[int] = DEFAULT_CHANNELS) -> torch.nn.Module:
    """A MONAI classifier with two outputs (logits of negative and positive) for (1, side^dims) inputs.

    Example:
        >>> model = build_classifier("classifier", 2, 32)              # doctest: +SKIP
        >>> model(torch.zeros(4, 1, 32, 32)).shape                      # doctest: +SKIP
        torch.Size([4, 2])
    """
    if net == "classifier":
        from monai.networks.nets import Classifier

        if len(channels) < 1 or side % 2 ** len(channels):
            raise MedvolError(f"--channels {list(channels)}: {len(channels)} stride-2 stages need a side divisible by "
                              f"{2 ** len(channels)}, the images are {side}")
        return Classifier(in_shape=(1,) + (side,) * dims, classes=2, channels=tuple(channels),
                          strides=(2,) * len(channels), num_res_units=1, norm="instance")
    if net == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=dims, in_channels=1, out_channels=2)
    raise MedvolError(f"--net {net!r}: expected one of {', '.join(NETS)}")


def read_weights(spec: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict of ``FILE[#SHA256]`` and its provenance ``{"file", "sha256"}``.

    A file may hold a plain state dict, ``{"state_dict": ...}``, or a medvol auxiliary checkpoint
    (:mod:`medvol.train.fit`, its ``system``). Nothing is ever downloaded.

    Raises:
        MedvolError: no such file, a SHA-256 that differs from the one given, or unreadable content.
    """
    from medvol.eval.features import _split_hash
    from medvol.utils import sha256_file

    text, expected = _split_hash(spec)
    path = Path(text).expanduser()
    if not path.is_file():
        raise MedvolError(f"--weights {path}: no such file (a state dict of the --net network; medvol downloads "
                          "no weights)")
    digest = sha256_file(path)
    if expected and digest != expected.lower():
        raise MedvolError(f"--weights {path}: SHA-256 {digest[:12]}... differs from the {expected[:12]}... given")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        raise MedvolError(f"--weights {path}: unreadable ({(str(error).splitlines() or [type(error).__name__])[0]})") \
            from None
    if isinstance(blob, dict) and blob.get("format") == "medvol-checkpoint":
        blob = blob.get("system")
    elif isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise MedvolError(f"--weights {path}: holds no state dict (a mapping of parameter names to tensors)")
    return blob, {"file": str(path.resolve()), "sha256": digest}


def load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> list[str]:
    """Load ``state`` into ``net``; returns the layers kept at their initialisation (shape differs).

    Raises:
        MedvolError: a parameter name the network lacks, or one of the network's the file lacks.
    """
    own = net.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if unexpected or missing:
        first = f"has {unexpected[0]!r}, which the network lacks" if unexpected else f"lacks {missing[0]!r}"
        raise MedvolError(f"--weights {where}: does not fit the network ({first}; {len(unexpected)} unexpected, "
                          f"{len(missing)} missing names): give a state dict of the same --net")
    kept = sorted(k for k in own if own[k].shape != state[k].shape)
    net.load_state_dict({k: (own[k] if k in kept else state[k]) for k in own})
    return kept


def augmentation(dims: int, seed: int):
    """The thesis's augmentation, seeded, on channel-first images (1, s, s) or volumes (1, S, S, S):
    flip left-right, rotate in the image (axial) plane up to ±36°, zoom 0.9-1.1, each p 0.5."""
    from monai.transforms import Compose, RandFlip, RandRotate, RandZoom

    angle = float(np.deg2rad(36.0))
    # MONAI's first angle turns the plane of the last two spatial axes: (y, x), the axial plane.
    transform = Compose([RandFlip(prob=0.5, spatial_axis=dims - 1),
                         RandRotate(range_x=angle, prob=0.5, padding_mode="border"),
                         RandZoom(prob=0.5, min_zoom=0.9, max_zoom=1.1, padding_mode="edge")])
    transform.set_random_state(seed=seed)
    return transform


def train_classifier(sets: Sequence[LabelledSet], *, net: str, dims: int, side: int, iterations: int, batch: int,
                     lr: float, seed: int, augment: bool, channels: Sequence[int] = DEFAULT_CHANNELS,
                     weights: tuple[dict, dict] | None = None, device: torch.device = torch.device("cpu"),
                     out=None, resume=None) -> tuple[torch.nn.Module, list[float], list[str]]:
    """Train a classifier on the union of ``sets`` (items ``(image, 0 or 1)``).

    Args:
        sets: the training sets.
        net, dims, side, channels: the network (:func:`build_classifier`).
        iterations, batch, lr: optimisation (Adam, cross-entropy).
        seed: seeds the weights, the batches and the augmentation.
        augment: apply :func:`augmentation` to every training item.
        weights: ``(state dict, provenance)`` to start from (:func:`read_weights`), or None.
        device: where it trains.
        out, resume: a checkpoint file to write and what to resume (:func:`medvol.train.fit.fit`).

    Returns:
        ``(network in eval mode, loss curve, layers kept at their initialisation)``.

    Raises:
        MedvolError: no training items, weights that do not fit, or a non-finite loss.
    """
    from monai.utils import convert_to_tensor

    from medvol.train.fit import fit

    pool = [(s, i) for s, data in enumerate(sets) for i in range(len(data))]
    if not pool:
        raise MedvolError("no training items")
    transform = augmentation(dims, seed) if augment else None
    loss_fn = torch.nn.CrossEntropyLoss()
    kept: list[str] = []

    def build() -> torch.nn.Module:
        model = build_classifier(net, dims, side, channels)
        if weights is not None:
            kept.extend(load_weights(model, weights[0], weights[1]["file"]))
        return model

    def step(model: torch.nn.Module, iteration: int, rng: np.random.Generator) -> torch.Tensor:
        images, labels = [], []
        for pick in rng.integers(0, len(pool), size=batch):
            s, i = pool[int(pick)]
            image, label = sets[s].load(i)
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            if transform is not None:
                x = convert_to_tensor(transform(x), track_meta=False)
            images.append(torch.as_tensor(x, dtype=torch.float32))
            labels.append(int(label))
        return loss_fn(model(torch.stack(images).to(device)), torch.tensor(labels, device=device))

    settings = {"net": net, "dims": dims, "side": side, "channels": list(channels), "batch": batch,
                "augment": augment, "weights": weights[1]["sha256"] if weights else None,
                "train_items": hashlib.sha256("\n".join(f"{s.name}:{item}" for s in sets
                                                         for item in s.items).encode()).hexdigest()}
    result = fit(build, step, task=TASK, iterations=iterations, lr=lr, seed=seed, settings=settings, device=device,
                 out=out, resume=resume, transform=transform)
    return result.net, result.losses, kept


@torch.no_grad()
def predict(net: torch.nn.Module, data: LabelledSet, device: torch.device = torch.device("cpu"),
            chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, prediction)`` int64 arrays of 0/1 over the items of ``data`` (argmax of the logits)."""
    truth, prediction = [], []
    for start in range(0, len(data), chunk):
        items = [data.load(i) for i in range(start, min(start + chunk, len(data)))]
        x = torch.from_numpy(np.stack([np.asarray(image, np.float32) for image, _ in items]))[:, None].to(device)
        prediction.append(net(x).argmax(1).cpu().numpy())
        truth += [int(label) for _, label in items]
    return np.asarray(truth, np.int64), np.concatenate(prediction).astype(np.int64)


def confusion(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Binary confusion counts and rates (positive = 1).

    Returns:
        ``{"n", "tp", "fp", "tn", "fn", "accuracy", "sensitivity", "specificity"}``; sensitivity
        TP / (TP + FN) and specificity TN / (TN + FP) are None where their denominator is 0.

    Raises:
        MedvolError: arrays of different lengths, empty, or holding values other than 0 and 1.
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape or truth.ndim != 1 or not len(truth):
        raise MedvolError(f"truth {truth.shape} and prediction {prediction.shape}: expected two equal 1D arrays")
    if not (np.isin(truth, (0, 1)).all() and np.isin(prediction, (0, 1)).all()):
        raise MedvolError("truth and prediction must hold 0 (negative) and 1 (positive) only")
    tp = int(((truth == 1) & (prediction == 1)).sum())
    tn = int(((truth == 0) & (prediction == 0)).sum())
    fp = int(((truth == 0) & (prediction == 1)).sum())
    fn = int(((truth == 1) & (prediction == 0)).sum())
    return {"n": int(len(truth)), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": (tp + tn) / len(truth),
            "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None}


def run_setup(train_sets: Sequence[LabelledSet], val: LabelledSet, *, net: str, dims: int, side: int,
              iterations: int, batch: int, lr: float, seed: int, augment: bool, channels: Sequence[int],
              weights: tuple[dict, dict] | None, device: torch.device) -> dict:
    """Train one classifier and score it on ``val``: the confusion counts, the per-item predictions,
    the loss and the time."""
    start = time.monotonic()
    model, losses, kept = train_classifier(train_sets, net=net, dims=dims, side=side, iterations=iterations,
                                           batch=batch, lr=lr, seed=seed, augment=augment, channels=channels,
                                           weights=weights, device=device)
    truth, prediction = predict(model, val, device)
    return {**confusion(truth, prediction), "predictions": prediction.tolist(),
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
            "parameters": int(sum(p.numel() for p in model.parameters())), "kept_initialised": kept,
            "seconds": round(time.monotonic() - start, 2)}
