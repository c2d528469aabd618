"""Shared helpers for the trainer tests: a tiny CPU config (32^3, narrow widths) on a phantom cache."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from medvol.config import TrainConfig, load_config


def tiny_config(out: Path, *overrides: str, source: str = "phantom", name: str = "crfgan",
                iterations: int = 2) -> TrainConfig:
    """A config that trains in about a second per iteration on 2 CPU cores."""
    return load_config(None, [
        "--model.name", name, "--model.size", "32", "--model.base_width", "2", "--model.latent_dim", "8",
        "--data.source", str(source), "--data.phantom_n", "4", "--data.workers", "0", "--data.batch", "2",
        "--train.iterations", str(iterations), "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "2", "--train.log_every", "1", "--train.sample_every", "1000",
        "--train.progress", "false", "--train.out", str(out), *overrides,
    ])


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """A preprocessing cache of 4 phantom CTs at 32^3 (memory-mapped: loading costs nothing)."""
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.data.preprocess import PreprocessParams

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(4, 32, root / "ct", seed=0)
    build_cache(root / "ct", root / "cache", PreprocessParams(size=32), val_fraction=0.25)
    return root / "cache"


@pytest.fixture(scope="session")
def tiny_config_fn(phantom_cache):
    """:func:`tiny_config` on the phantom cache, for module-scoped fixtures."""
    return functools.partial(tiny_config, source=str(phantom_cache))


@pytest.fixture
def tiny(tmp_path, tiny_config_fn):
    """``tiny(*overrides, name="crfgan", iterations=2, out="run")`` -> a tiny TrainConfig under tmp_path."""

    def make(*overrides: str, name: str = "crfgan", iterations: int = 2, out: str = "run") -> TrainConfig:
        return tiny_config_fn(tmp_path / out, *overrides, name=name, iterations=iterations)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_config_fn) -> Path:
    """A run folder with one tiny CRF-GAN checkpoint (2 iterations), shared by read-only tests."""
    from medvol.train.trainer import train

    return train(tiny_config_fn(tmp_path_factory.mktemp("trained") / "run", name="crfgan", iterations=2))


@pytest.fixture
def on_step(monkeypatch):
    """``on_step(hook)``: every model the trainer builds calls ``hook(iteration, losses)`` after
    each training step; what the hook returns is the step's losses (``None`` keeps them)."""
    from medvol.train import trainer

    def install(hook) -> None:
        real_build = trainer.build_system

        def build_hooked(cfg):
            system = real_build(cfg)
            step = system.train_step

            def hooked(real, optimizers, iteration, **kwargs):
                losses = step(real, optimizers, iteration, **kwargs)
                changed = hook(iteration, losses)
                return losses if changed is None else changed

            system.train_step = hooked
            return system

        monkeypatch.setattr(trainer, "build_system", build_hooked)

    return install
