"""Phantom data for the downstream-study tests, from ``tools/downstream_demo.py`` (loaded by path:
tools/ is no package), plus a labelled cache builder, the loader of the demo tools and the
classification command of the classify tests.

Label maps are written by the tool (lungs 1, nodules 2, from the phantom's own tissue map and
nodule mask), so the tests do not depend on what ``write_phantoms`` puts beside its volumes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    """``tools/NAME.py`` as a module of its own (a fresh one per call)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def classify_cli(capsys, *args) -> tuple[int, list[str]]:
    """``medvol study downstream --task classify ARGS``: the exit code and medvol's lines on stderr."""
    from medvol.cli import main

    code = main(["study", "downstream", "--task", "classify", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("medvol")]


demo = load_tool("downstream_demo")

LABELS = demo.LABELS
write_scans = demo.write_scans


def write_generated(folder: Path, n: int, size: int, *, seed: int, noise: bool = False, **options) -> Path:
    return demo.write_generated(folder, n, size, seed=seed, kind="noise" if noise else "ideal", **options)


def build_cache(scans: Path, cache: Path, size: int) -> Path:
    from medvol.data.cache import build_cache as build
    from medvol.data.preprocess import PreprocessParams

    build(scans, cache, PreprocessParams(size=size), val_fraction=0.34, mask_labels=LABELS)
    return cache
