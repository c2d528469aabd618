"""The segmentation network of the downstream study: a MONAI U-Net, its training and its Dice.

One recipe for every set-up, so that only the training data differ: a ``monai.networks.nets.UNet``
(3D on volumes, 2D on slices), ``DiceLoss`` on the softmax of its logits against the one-hot label
map, Adam, a fixed number of iterations with batches drawn uniformly (seeded) from the union of
the training sets. Classical augmentation (the ``real + augmentation`` set-up) is MONAI's ``Rand…``
dictionary transforms applied to image and labels together: flips along every axis, in-plane 90°
rotations, and a small random affine (rotation up to ±15°, shift up to ±10 % of the side) with
nearest-neighbour labels. Dice is MONAI's ``DiceMetric`` and IoU its ``MeanIoU`` per class on the
argmax prediction of each held-out real volume; a class absent from a volume's truth gives no score
for that volume. Training runs through :func:`medvol.train.fit.fit`.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from medvol.errors import MedvolError
from medvol.study.downstream.data import LabelledSet, pool_slice

#: Default U-Net widths: tiny, so that the phantom study runs in minutes on two CPU cores.
DEFAULT_CHANNELS = (8, 16, 32)


def build_unet(dims: int, classes: int, channels: Sequence[int] = DEFAULT_CHANNELS) -> torch.nn.Module:
    """``UNet(spatial_dims=dims, in 1, out classes + 1)``, stride 2 between widths, one residual unit.

    Example:
        >>> net = build_unet(3, 2)                      # doctest: +SKIP
        >>> net(torch.zeros(1, 1, 32, 32, 32)).shape   # doctest: +SKIP
        torch.Size([1, 3, 32, 32, 32])
    """
    from monai.networks.nets import UNet

    if len(channels) < 2:
        raise MedvolError(f"--unet-channels {channels}: need at least two widths")
    return UNet(spatial_dims=dims, in_channels=1, out_channels=classes + 1, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=1, norm="instance")


def augmentation(dims: int, side: int, seed: int):
    """The classical augmentation, seeded: MONAI ``Rand…`` transforms on ``{"image", "label"}``
    (channel-first, (1, S, S, S) or (1, s, s)); the labels follow the image by nearest neighbour,
    and what a rotation or shift brings in from outside repeats the edge (air)."""
    from monai.transforms import Compose, RandAffined, RandFlipd, RandRotate90d

    keys = ("image", "label")
    flips = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
    in_plane = (dims - 2, dims - 1)  # the last two axes: the axial plane of a (z, y, x) volume
    # +-15 degrees. MONAI's first 3D angle turns the plane of the last two axes: the axial (y, x)
    # plane of a (z, y, x) volume; (0, 0, a) would turn the (z, y) plane.
    rotate = (0.26,) if dims == 2 else (0.26, 0.0, 0.0)
    shift = (0.1 * side,) * dims
    transform = Compose([*flips, RandRotate90d(keys, prob=0.5, spatial_axes=in_plane),
                         RandAffined(keys, prob=0.5, rotate_range=rotate, translate_range=shift,
                                     mode=("bilinear", "nearest"), padding_mode="border")])
    transform.set_random_state(seed=seed)
    return transform


def train_unet(sets: Sequence[LabelledSet], classes: int, *, dims: int, iterations: int, batch: int, lr: float,
               seed: int, augment: bool, channels: Sequence[int] = DEFAULT_CHANNELS,
               device: torch.device = torch.device("cpu"), out=None,
               resume=None) -> tuple[torch.nn.Module, list[float]]:
    """Train a U-Net on the union of ``sets`` through :func:`medvol.train.fit.fit`; returns the
    network (eval mode) and the loss curve.

    Args:
        sets: the training sets (items ``(image, labels)`` of the study's classes).
        classes: number of foreground classes C (the network has C + 1 outputs).
        dims: 3 or 2.
        iterations, batch, lr: optimisation (Adam).
        seed: seeds the weights, the batches and the augmentation.
        augment: apply :func:`augmentation` to every training item.
        channels: U-Net widths.
        device: where it trains.
        out, resume: a checkpoint file to write, and what to resume (:func:`medvol.train.fit.fit`).

    Raises:
        MedvolError: no training items, or a loss that is not finite.
    """
    from monai.losses import DiceLoss
    from monai.utils import convert_to_tensor

    from medvol.train.fit import fit

    pool = [(s, i) for s, data in enumerate(sets) for i in range(len(data))]
    if not pool:
        raise MedvolError("no training items")
    loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
    side = sets[pool[0][0]].load(pool[0][1])[0].shape[-1]
    transform = augmentation(dims, side, seed) if augment else None

    def step(net: torch.nn.Module, iteration: int, rng: np.random.Generator) -> torch.Tensor:
        images, labels = [], []
        for pick in rng.integers(0, len(pool), size=batch):
            s, i = pool[int(pick)]
            image, label = sets[s].load(i)
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            y = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None]
            if transform is not None:
                out = transform({"image": x, "label": y})
                x = convert_to_tensor(out["image"], track_meta=False)
                y = torch.round(convert_to_tensor(out["label"], track_meta=False))
            images.append(torch.as_tensor(x, dtype=torch.float32))
            labels.append(torch.as_tensor(y, dtype=torch.float32))
        return loss_fn(net(torch.stack(images).to(device)), torch.stack(labels).to(device))

    settings = {"dims": dims, "classes": classes, "channels": list(channels), "batch": batch, "augment": augment,
                "train_items": items_digest(sets)}
    result = fit(lambda: build_unet(dims, classes, channels), step, task="downstream-unet", iterations=iterations,
                 lr=lr, seed=seed, settings=settings, device=device, out=out, resume=resume, transform=transform)
    return result.net, result.losses


def items_digest(sets: Sequence[LabelledSet]) -> str:
    """SHA-256 of the training sets' item names: what a checkpoint compares on resume."""
    import hashlib

    return hashlib.sha256("\n".join(f"{s.name}:{item}" for s in sets for item in s.items).encode()).hexdigest()


@torch.no_grad()
def predict(net: torch.nn.Module, image: np.ndarray, dims: int, side: int | None = None,
            device: torch.device = torch.device("cpu")) -> np.ndarray:
    """The argmax label map of one volume (S, S, S): whole (3D), or slice by slice (2D), each
    axial slice area-pooled to ``side`` first; then the map is (S, side, side)."""
    if dims == 3:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
        return net(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
    side = side or image.shape[-1]
    slices = np.stack([pool_slice(s, np.zeros(s.shape, np.uint8), side)[0] for s in image])
    out = []
    for start in range(0, len(slices), 32):
        x = torch.from_numpy(slices[start:start + 32])[:, None].to(device)
        out.append(net(x).argmax(1).cpu().numpy().astype(np.uint8))
    return np.concatenate(out)


def _overlap_per_class(metric, prediction: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    from monai.networks.utils import one_hot

    if prediction.shape != truth.shape:
        raise MedvolError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    p = one_hot(torch.from_numpy(np.asarray(prediction, np.int64))[None, None], classes + 1)
    t = one_hot(torch.from_numpy(np.asarray(truth, np.int64))[None, None], classes + 1)
    return metric(p, t)[0].double().numpy()


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """MONAI ``DiceMetric`` of one label map against the truth, per foreground class.

    Args:
        prediction, truth: integer label maps of one shape, values 0..classes.
        classes: C.

    Returns:
        float64 (C,): 2|P∩T| / (|P| + |T|) per class; NaN where the class is absent from the truth
        (no score, rather than a 0 or 1 that would say nothing about the network).
    """
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    return _overlap_per_class(metric, prediction, truth, classes)


def iou_per_class(prediction: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """MONAI ``MeanIoU`` (Jaccard) of one label map against the truth, per foreground class: the
    CT/X-ray thesis's segmentation score, beside Dice.

    Returns:
        float64 (C,): |P∩T| / |P∪T| per class (= Dice / (2 - Dice)); NaN where the class is absent
        from the truth, as for Dice.
    """
    from monai.metrics import MeanIoU

    metric = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
    return _overlap_per_class(metric, prediction, truth, classes)


def evaluate(net: torch.nn.Module, val: LabelledSet, classes: int, *, dims: int, side: int | None = None,
             device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per held-out item and class: two float64 (items, C), NaN where a class is absent.

    A 2D network is scored on the stack of its slice predictions of a held-out volume against the
    truth pooled in-plane to its side (:func:`medvol.study.downstream.data.pool_slice`), or on
    each held-out image of a 2D set (``val.dims == 2``: a stack of one slice).
    """
    dice, iou = [], []
    for index in range(len(val)):
        image, truth = val.load(index)
        if val.dims == 2:
            image, truth = image[None], truth[None]
        if dims == 2 and side and side != truth.shape[-1]:
            truth = np.stack([pool_slice(np.zeros(t.shape, np.float32), t, side)[1] for t in truth])
        prediction = predict(net, image, dims, side, device)
        dice.append(dice_per_class(prediction, truth, classes))
        iou.append(iou_per_class(prediction, truth, classes))
    return np.stack(dice), np.stack(iou)


def _rows(table: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in table]


def run_setup(train_sets: Sequence[LabelledSet], val: LabelledSet, classes: int, *, dims: int, side: int | None,
              iterations: int, batch: int, lr: float, seed: int, augment: bool, channels: Sequence[int],
              device: torch.device, log: Callable[[str], None] | None = None) -> dict:
    """Train one U-Net and score it: ``{"dice", "iou": [[per class] per volume], "loss_first", "loss_last",
    "parameters", "seconds"}``."""
    start = time.monotonic()
    net, losses = train_unet(train_sets, classes, dims=dims, iterations=iterations, batch=batch, lr=lr, seed=seed,
                             augment=augment, channels=channels, device=device)
    dice, iou = evaluate(net, val, classes, dims=dims, side=side, device=device)
    return {"dice": _rows(dice), "iou": _rows(iou),
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "seconds": round(time.monotonic() - start, 2)}
