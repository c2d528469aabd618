"""Paired image + mask data: label maps as one-hot channels beside the image, and back.

A model trained with ``model.mask_channels K`` sees and produces ``1 + K`` channels: the image,
then one channel per class 1..K of the label map, +1 where the voxel has that class and -1
elsewhere (the image's [-1, 1] range, so G's tanh output layer can draw them). Generation turns
the K channels back into a label map with :func:`labels_from_channels`.

Example:
    >>> import numpy as np
    >>> labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    >>> channels = one_hot_channels(labels, 2)
    >>> channels.shape
    (2, 2, 2)
    >>> labels_from_channels(channels).tolist()
    [[0, 1], [2, 1]]
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from medvol.errors import MedvolError


def one_hot_channels(labels: np.ndarray, k: int) -> np.ndarray:
    """Label map -> K channels in {-1, +1}: channel ``c - 1`` is +1 where ``labels == c``.

    Labels above ``k`` (classes the model was not given) and 0 are -1 in every channel.

    Args:
        labels: integer array of any shape ``X``.
        k: number of classes K >= 1.

    Returns:
        float32 ``[K, *X]``.
    """
    classes = np.arange(1, k + 1, dtype=np.int64).reshape((k,) + (1,) * np.ndim(labels))
    return np.where(np.asarray(labels)[None] == classes, np.float32(1.0), np.float32(-1.0))


def labels_from_channels(channels: np.ndarray) -> np.ndarray:
    """K generated channels -> label map: per voxel the class whose channel is largest among the
    channels above 0, else 0 (background). Ties go to the lower class.

    Args:
        channels: float ``[K, *X]`` (G's output channels 1..K, in [-1, 1]).

    Returns:
        uint8 ``X`` with labels 0..K.
    """
    channels = np.asarray(channels)
    if channels.shape[0] > 255:
        raise MedvolError(f"mask channels: {channels.shape[0]} classes do not fit a uint8 label map")
    best = channels.argmax(axis=0)
    winner = np.take_along_axis(channels, best[None], axis=0)[0]
    return np.where(winner > 0, best + 1, 0).astype(np.uint8)


def require_labels(volumes, k: int, source: str) -> tuple[str, ...]:
    """The names of classes 1..K of ``volumes``' label maps, or a one-line error.

    Args:
        volumes: a volume dataset (``has_labels``, ``mask_labels``, ``volume_and_labels``).
        k: the model's mask channels K.
        source: how the data is named in messages (``data.source ...``).

    Raises:
        MedvolError: the data has no label maps, or fewer than K classes.
    """
    if not getattr(volumes, "has_labels", False):
        raise MedvolError(f"{source}: has no label maps, and model.mask_channels {k} trains on them "
                          "(the phantom has them; a cache needs label files beside its images)")
    names = tuple(volumes.mask_labels)
    if len(names) < k:
        raise MedvolError(f"{source}: its label maps have {len(names)} class(es) ({', '.join(names)}), "
                          f"fewer than model.mask_channels {k}")
    return names[:k]


class PairedVolumeDataset(Dataset):
    """A volume dataset's items with K one-hot label channels after the image.

    Items: ``{"image": FloatTensor[1 + K, S, S, S], "label": int}``: the image in [-1, 1], then
    :func:`one_hot_channels` of ``volumes.volume_and_labels(i)``'s label map.

    Args:
        volumes: a :class:`medvol.data.datasets.PhantomVolumeDataset` or
            :class:`medvol.data.datasets.CachedVolumeDataset` with label maps.
        k: mask channels K >= 1.
        source: the data's name in messages.

    Attributes:
        mask_channels: K; mask_labels: the names of classes 1..K; spacing, window, params,
        entries, synthetic: the wrapped dataset's (what :func:`medvol.train.data.data_meta` reads).

    Raises:
        MedvolError: see :func:`require_labels`.
    """

    def __init__(self, volumes, k: int, source: str = "data.source"):
        self.mask_labels = require_labels(volumes, k, source)
        self.base, self.mask_channels = volumes, k
        self.spacing, self.window = volumes.spacing, volumes.window
        self.params = getattr(volumes, "params", None)
        self.entries = getattr(volumes, "entries", None)
        self.synthetic = getattr(volumes, "synthetic", ())

    def __len__(self) -> int:
        return len(self.base)

    def label(self, index: int) -> int:
        return self.base.label(index)

    def __getitem__(self, index: int) -> dict:
        array, labels = self.base.volume_and_labels(index)
        image = np.concatenate([np.asarray(array, dtype=np.float32)[None],
                                one_hot_channels(labels, self.mask_channels)])
        return {"image": torch.from_numpy(image), "label": self.base.label(index)}
