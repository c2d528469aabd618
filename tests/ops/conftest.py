"""Op test setup: the shared tolerance table on the path, a printed seed for every randomised
test, and (for sanitizer runs) another build of the C++ ops."""

import os
import sys
from pathlib import Path

import pytest
import torch

# Lets the op tests import their shared tolerance table (tests/ops/_tolerances.py).
sys.path.insert(0, str(Path(__file__).parent))


def _use_library_under_test() -> None:
    """MEDVOL_TEST_C_LIBRARY=/path/lib.so runs the op tests against that build of csrc/ (e.g. one
    compiled with -fsanitize=address, docs/kernels.md) in place of the installed medvol._C."""
    path = os.environ.get("MEDVOL_TEST_C_LIBRARY")
    if not path:
        return
    from medvol.ops import _loader

    torch.ops.load_library(path)

    def loaded() -> None:
        return None

    loaded.__wrapped__ = _loader._load_installed.__wrapped__  # what test_dispatch calls directly
    _loader._load_installed = loaded


_use_library_under_test()


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (MEDVOL_TEST_SEED fixes it), also seeding torch's global generator,
    printed: `pytest -rA` and every failure report show `seed=...` to rerun a random case."""
    value = int(os.environ.get("MEDVOL_TEST_SEED", torch.seed() % 2**31))
    torch.manual_seed(value)
    print(f"seed={value}")
    return value
