"""What one profiled configuration is, and how a grid of them is spelled on the command line.

A :class:`Case` is everything a fresh worker process needs to build the system and run it; it
travels to the worker as JSON and comes back inside the result, so every number in a report
names exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable

from medvol.errors import MedvolError

MODES = ("reference", "optimized")
DATA = ("synthetic", "phantom")
KINDS = ("measure", "estimate")
#: The published system builder; tests and third-party systems may name another ``module:function``.
DEFAULT_FACTORY = "medvol.models:build"
#: Published base width c of both 3D generators (DESIGN.md "Reference architectures"); the 2D
#: models have their own (:func:`published_width`).
PUBLISHED_WIDTH = 32
#: Default batch sizes and largest-batch search limit per model dimension: a 3D step holds one or
#: two volumes, a 2D step typically 16 to 64 images (DCGAN 128, the thesis's MLP GAN 64).
DEFAULT_BATCHES = {3: (1, 2), 2: (16, 64)}
DEFAULT_MAX_BATCH_LIMIT = {3: 64, 2: 1024}


def model_names() -> tuple[str, ...]:
    """The registry's models (imported here, lazily: the registry imports every network module)."""
    from medvol.models.registry import REGISTRY

    return tuple(REGISTRY)


def model_dims(model: str) -> int:
    """2 for the registry's 2D models, else 3 (also for names only a custom factory knows)."""
    from medvol.models.registry import REGISTRY

    return int(getattr(REGISTRY.get(model), "dims", 3))


def published_width(model: str) -> int:
    """The base width a model is built with when none is given (dcgan 64, mlpgan 256, 3D 32)."""
    from medvol.models.registry import REGISTRY

    return getattr(REGISTRY.get(model), "base_width", PUBLISHED_WIDTH)


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: a model at a size and batch, in a mode, measured or estimated.

    Attributes:
        model: a registry name (``medvol.models.REGISTRY``), or any name the factory accepts.
        size: volume edge S of the ``[B, 1, S, S, S]`` training batch (2D models: image side S of
            ``[B, C, S, S]``).
        batch: batch size B.
        mode: ``"reference"`` (fp32, ``set_mode("reference")``) or ``"optimized"`` (bf16 autocast,
            ``set_mode("optimized")``: checkpointing, fused ops, bf16 group norms).
        kind: ``"measure"`` (real tensors on ``device``) or ``"estimate"`` (fake tensors).
        device: ``"cpu"`` or ``"cuda"``; for an estimate, the device whose autocast rules apply.
        iters: timed iterations (the median is reported).
        warmup: untimed iterations first (the first allocates Adam states, cuDNN picks algorithms).
        base_width: generator base width c; None means the model's published width.
        budget_bytes: memory cap; on CUDA set with ``set_per_process_memory_fraction``, elsewhere
            (CPU, estimate) a peak above it is reported as OOM after the fact.
        data: ``"synthetic"`` (uniform noise made on the device) or ``"phantom"`` (the procedural
            phantom dataset, read on the host and copied).
        factory: ``module:function`` building the system, called as ``f(model, size, base_width=c)``.
        seed: seed of the torch RNG in the worker.
        model_options: the model's build options as ``"key=value,..."`` (e.g.
            ``"crf_forwards=reuse"``: fields of its options dataclass, ``ModelSpec.options``),
            passed to the factory; "" for the published defaults.
    """

    model: str
    size: int
    batch: int
    mode: str
    kind: str = "measure"
    device: str = "cpu"
    iters: int = 3
    warmup: int = 1
    base_width: int | None = None
    budget_bytes: int | None = None
    data: str = "synthetic"
    factory: str = DEFAULT_FACTORY
    seed: int = 0
    model_options: str = ""

    def options(self) -> dict[str, object]:
        """``model_options`` as keyword arguments (``true``/``false`` become booleans)."""
        return parse_model_options(self.model_options)

    @property
    def width(self) -> int:
        return published_width(self.model) if self.base_width is None else self.base_width

    @property
    def label(self) -> str:
        options = f" [{self.model_options}]" if self.model_options else ""
        return (f"{self.model}{options} {self.size}^{model_dims(self.model)} b{self.batch} {self.mode} "
                f"({self.kind}, {self.device})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Case":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def parse_list(text: str, option: str, *, kind: type = str, allowed: Iterable | None = None) -> list:
    """Split ``"a,b,c"`` into typed values, keeping order and dropping repeats.

    Raises:
        MedvolError: naming ``option`` if a value is not of ``kind`` or not in ``allowed``.
    """
    values = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        try:
            value = kind(item)
        except ValueError:
            raise MedvolError(f"{option}: {item!r} is not a valid {kind.__name__}") from None
        if allowed is not None and value not in allowed:
            raise MedvolError(f"{option}: {item!r} is not one of {', '.join(map(str, allowed))}")
        if kind is int and value <= 0:
            raise MedvolError(f"{option}: {item!r} must be positive")
        if value not in values:
            values.append(value)
    if not values:
        raise MedvolError(f"{option}: empty list")
    return values


def _option_value(text: str) -> object:
    """``true``/``false`` -> bool, integers -> int, other numbers -> float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_options(text: str) -> dict[str, object]:
    """``"a=x,b=true,n=5"`` -> ``{"a": "x", "b": True, "n": 5}``; "" -> {}.

    Raises:
        MedvolError: for an item without ``=`` or a key given twice.
    """
    options: dict[str, object] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise MedvolError(f"--model-option: expected KEY=VALUE, got {item!r}")
        if key in options:
            raise MedvolError(f"--model-option: {key} given twice")
        options[key] = _option_value(value)
    return options


def grid(models, sizes, batches, modes, **common) -> list[Case]:
    """All cases of a grid, ordered model, size, batch, mode (reference before optimized)."""
    return [Case(model=m, size=s, batch=b, mode=mode, **common)
            for m, s, b, mode in itertools.product(models, sizes, batches, modes)]
