"""Shared fixtures for the model tests: tiny systems (narrow widths, 32^3 / 64^3) on the CPU."""

import pytest
import torch

from medvol.models import build

TINY = dict(base_width=4, latent_dim=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny-tensor tests on one intra-op thread, restored afterwards.

    Tensors this small gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    spin-waiting threads made the suite 3x slower (measured: 42 s vs 145 s wall).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    """``tiny(name, size=32, **options)``: a seeded narrow system."""

    def make(name: str, size: int = 32, **options):
        torch.manual_seed(0)
        return build(name, size, **{**TINY, **options})

    return make


def _volume(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, size, generator=g) * 2 - 1


@pytest.fixture
def volume():
    """``volume(batch, size, seed=0)``: a random batch ``[B, 1, S, S, S]`` in [-1, 1]."""
    return _volume
