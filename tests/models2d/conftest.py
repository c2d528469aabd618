"""Helpers for the 2D model tests: narrow models, tiny phantom slice configs, a synthetic volume set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medvol.config import TrainConfig, load_config


def tiny_2d_config(out: Path, *overrides: str, name: str = "dcgan", iterations: int = 2) -> TrainConfig:
    """A 2D config on 32^2 axial phantom slices that trains in well under a second per iteration."""
    return load_config(None, [
        "--model.name", name, "--model.size", "32", "--model.base_width", "4", "--model.latent_dim", "8",
        "--data.source", "phantom", "--data.phantom_n", "2", "--data.workers", "0", "--data.batch", "4",
        "--train.iterations", str(iterations), "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "2", "--train.log_every", "1", "--train.sample_every", "1000",
        "--train.progress", "false", "--train.out", str(out), *overrides,
    ])


class RampVolumes:
    """Volumes without rendering: voxel (z, y, x) of volume v = a distinct value in (-1, 1); the
    first and last axial slices are blank (-1), as padding is. Masks: 1 on the slab z = S/2."""

    window = (-1024.0, 600.0)
    spacing = (1.0, 2.0, 3.0)

    def __init__(self, size: int, n: int = 2):
        self.size, self.n = size, n

    def __len__(self) -> int:
        return self.n

    def label(self, v: int) -> int:
        return v % 2

    def volume(self, v: int) -> np.ndarray:
        s = self.size
        z, y, x = np.meshgrid(*(np.arange(s),) * 3, indexing="ij")
        array = ((z * s * s + y * s + x + v * s ** 3) / (self.n * s ** 3) * 1.8 - 0.9).astype(np.float32)
        array[0] = array[-1] = -1.0
        return array

    def volume_and_mask(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros((self.size,) * 3, dtype=np.uint8)
        mask[self.size // 2] = 1
        return self.volume(v), mask


@pytest.fixture
def tiny2d(tmp_path):
    def make(*overrides: str, name: str = "dcgan", iterations: int = 2, out: str = "run") -> TrainConfig:
        return tiny_2d_config(tmp_path / out, *overrides, name=name, iterations=iterations)

    return make


@pytest.fixture
def ramp():
    """The :class:`RampVolumes` class."""
    return RampVolumes


def assert_config_error(tmp_path, capsys, model: str, overrides: list[str], key: str, data: str = "") -> None:
    """``medvol train`` on a tiny config fails before training: exit 2, one line naming ``key``.

    ``model`` is the YAML of the model section (``{name: ..., size: ...}``); ``data`` more keys of
    the data section (``", masks: true"``).
    """
    from medvol import cli

    config = tmp_path / "c.yaml"
    config.write_text(f"model: {model}\ndata: {{phantom_n: 1, workers: 0{data}}}\n"
                      "train: {device: cpu, progress: false}\n", encoding="utf-8")
    code = cli.main(["train", "--config", str(config), "--train.out", str(tmp_path / "r"), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and key in err, err
