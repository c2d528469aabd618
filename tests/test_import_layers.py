"""The package's layering (docs/architecture.md): every import runs down the layer order, no two
files import each other, and only the sampler asks a model for samples.

The import graph is read from the source with ``ast`` (module-level and function-level imports
alike: a lazy import is still a dependency), so the test sees what a reader of the code sees.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medvol"

#: Low to high. A unit (a subpackage or a top-level module of medvol) may import units of lower
#: layers only; units of one layer do not import each other.
LAYERS = (
    ("errors",),
    ("utils", "progress"),
    ("outputs", "kernels"),
    ("ops",),
    ("models",),
    ("config", "data"),
    ("preview",),
    ("train", "profile"),
    ("sample", "doctor"),
    ("eval", "viewer"),
    ("study", "sweep"),
    ("commands",),
    ("cli",),
)

#: Arrows that run against the order today, each with the file, the names and the owner of the fix.
#: An entry that no longer occurs fails the test, so the list only shrinks.
KNOWN_UPWARD: dict = {}

#: Pairs of files that import each other today, outside this package's sampling and evaluation
#: machinery; same rule as :data:`KNOWN_UPWARD`.
KNOWN_CIRCLES: dict = {}

#: The files that may call a model's ``sample_latent``: the models themselves, the trainer (its
#: fixed preview latents) and the sampler, which every other sampling goes through.
LATENT_CALLERS = ("medvol/models/", "medvol/train/trainer.py", "medvol/sample/sampler.py")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The medvol modules that ``path`` (the module ``module``) imports, among ``known``."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + int(is_package)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import module`` depends on the module; any other name, on ``base``.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("medvol.") and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medvol"


def _rank() -> dict[str, int]:
    return {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def test_every_unit_has_a_layer_and_imports():
    units = {_unit(m) for m in _modules()} - {"medvol"}
    assert units <= set(_rank()), f"units without a layer in LAYERS: {sorted(units - set(_rank()))}"
    for unit in sorted(units):
        if unit == "kernels":
            continue  # Triton kernels: importing them needs Triton's launcher, as the ops load them
        importlib.import_module(f"medvol.{unit}")


def test_imports_run_down_the_layers():
    rank = _rank()
    upward = defaultdict(set)
    for module, targets in _graph().items():
        for target in targets:
            a, b = _unit(module), _unit(target)
            if a != b and "medvol" not in (a, b) and rank[b] >= rank[a]:
                upward[(a, b)].add(f"{module} -> {target}")
    unexpected = {pair: sorted(arrows) for pair, arrows in upward.items() if pair not in KNOWN_UPWARD}
    assert not unexpected, f"imports that run up or across the layers: {unexpected}"
    gone = set(KNOWN_UPWARD) - set(upward)
    assert not gone, f"KNOWN_UPWARD entries that no longer occur (remove them): {sorted(gone)}"


def test_no_two_files_import_each_other():
    graph = _graph()
    circles = {frozenset({a, b}) for a, targets in graph.items() for b in targets if a in graph.get(b, ())}
    unexpected = circles - set(KNOWN_CIRCLES)
    assert not unexpected, f"files that import each other: {sorted(sorted(c) for c in unexpected)}"
    gone = set(KNOWN_CIRCLES) - circles
    assert not gone, f"KNOWN_CIRCLES entries that no longer occur (remove them): {sorted(sorted(c) for c in gone)}"


def test_the_sampler_parts_have_no_longer_circle():
    """Within sample/ and eval/ (outside the known pair), no loop of any length."""
    graph = _graph()
    mine = {m for m in graph if _unit(m) in ("sample", "eval")}
    allowed = {pair for pair in KNOWN_CIRCLES if all(_unit(m) == "eval" for m in pair)}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] & mine):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [nxt]
                assert frozenset(loop) in allowed, f"import loop: {' -> '.join(loop)}"
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(mine):
        if node not in state:
            visit(node, [node])


def test_only_the_sampler_draws_latents():
    callers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sample_latent":
                callers.add(path.relative_to(PACKAGE.parent).as_posix())
    stray = sorted(c for c in callers if not c.startswith(LATENT_CALLERS))
    assert not stray, f"files that draw latents themselves instead of through medvol.sample.sampler: {stray}"
    assert "medvol/sample/sampler.py" in callers


@pytest.mark.parametrize("source, expected", [
    ("import medvol.sample.sampler", {"medvol.sample.sampler"}),
    ("from medvol.sample import sampler", {"medvol.sample.sampler"}),
    ("from medvol.sample.sampler import Sampler", {"medvol.sample.sampler"}),
    ("def f():\n    from medvol.preview import to_grey", {"medvol.preview"}),
    ("from . import records", {"medvol.sample.records"}),
])
def test_the_reader_of_imports(tmp_path, source, expected):
    """The graph's reader sees module-level, lazy, ``from package import module`` and relative imports."""
    path = tmp_path / "generate.py"
    path.write_text(source, encoding="utf-8")
    assert _imports(path, "medvol.sample.generate", set(_modules())) == expected
