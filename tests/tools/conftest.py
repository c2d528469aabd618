"""The tools under test are scripts, not package modules: load them by path."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def vs_published():
    """tools/bench_vs_published.py as a module."""
    name = "bench_vs_published_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "bench_vs_published.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _load_tool(name: str):
    key = f"{name}_under_test"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.fixture(scope="session")
def cpu_budget():
    """tools/cpu_budget.py as a module."""
    return _load_tool("cpu_budget")


@pytest.fixture(scope="session")
def eval_table():
    """tools/eval_table.py as a module."""
    return _load_tool("eval_table")


@pytest.fixture(scope="session")
def compare_seeds():
    """tools/compare_seeds.py as a module."""
    return _load_tool("compare_seeds")


@pytest.fixture(scope="session")
def gpu_learn_check():
    """tools/gpu_learn_check.py as a module."""
    return _load_tool("gpu_learn_check")
