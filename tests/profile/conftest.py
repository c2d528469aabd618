"""Make the stand-in system importable here and in the worker processes the profiler starts."""

import os
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)


@pytest.fixture
def standin_path(monkeypatch):
    """``standin:build`` resolves in this process and in every worker subprocess."""
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    return "profile_standin:build"
