"""The one dispatch rule of every op: a named backend runs or raises; only ``auto`` chooses.

Each op module registers its backends with :func:`register`: a function giving the reason a
backend cannot run on a tensor (None when it can), and the order in which ``auto`` tries them for a
tensor. ``auto`` takes the first available one in that order and never falls back after an error:
if the chosen backend raises, the error propagates. :func:`selected_backend` says what ``auto``
picks; the choice is also logged at DEBUG level on the ``medvol.ops`` logger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from medvol.errors import MedvolError
from medvol.ops._loader import log


@dataclass(frozen=True)
class OpBackends:
    backends: tuple[str, ...]
    unavailable: Callable[[str, torch.Tensor], str | None]
    auto_order: Callable[..., tuple[str, ...]]  # (tensor, *context) -> backends to try in order


_OPS: dict[str, OpBackends] = {}


def register(op: str, backends: tuple[str, ...], unavailable, auto_order) -> None:
    _OPS[op] = OpBackends(backends, unavailable, auto_order)


def _op(op: str) -> OpBackends:
    if op not in _OPS:
        raise MedvolError(f"unknown op {op!r}; known: {', '.join(sorted(_OPS))}")
    return _OPS[op]


def is_fake(tensor: torch.Tensor) -> bool:
    """True for FakeTensors and meta tensors: shapes only, nothing can run a real kernel."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor) or tensor.device.type == "meta"


def choose(op: str, backend: str, tensor: torch.Tensor, *context) -> str:
    """The backend that runs ``op`` on ``tensor``: ``backend`` itself, or ``auto``'s pick.

    ``context`` holds what else the op's auto rule looks at (upsample_conv3d: the output channels).

    Raises:
        MedvolError: unknown backend, or a named backend that cannot run here (with the reason).
    """
    spec = _op(op)
    if backend == "auto":
        reasons = []
        for name in spec.auto_order(tensor, *context):
            reason = spec.unavailable(name, tensor)
            if reason is None:
                log.debug("%s: auto picked backend %r for a %s %s tensor%s", op, name, tensor.device.type,
                          tensor.dtype, " (fake)" if is_fake(tensor) else "")
                return name
            reasons.append(f"{name}: {reason}")
        raise MedvolError(f"{op}: no backend can run on this tensor ({'; '.join(reasons)})")
    if backend not in spec.backends:
        raise MedvolError(f"{op}: unknown backend {backend!r}; choose one of auto, {', '.join(spec.backends)}")
    reason = spec.unavailable(backend, tensor)
    if reason is not None:
        raise MedvolError(f"{op}: backend {backend!r} is unavailable: {reason}")
    return backend


def selected_backend(op: str, tensor: torch.Tensor, *context) -> str:
    """Which backend ``backend="auto"`` runs for ``op`` on a tensor like ``tensor``.

    Args:
        op: ``"meanfield_crf"`` (tensor: feats) or ``"upsample_conv3d"`` (tensor: x; context: the
            number of output channels, without which the decomposition is assumed).

    Example:
        >>> selected_backend("meanfield_crf", torch.zeros(2, 16, 64))  # 'cpp' once medvol._C is built
        'cpp'
        >>> selected_backend("upsample_conv3d", torch.zeros(2, 32, 64, 64, 64), 1)
        'decomposed'
    """
    return choose(op, "auto", tensor, *context)


def available_backends(op: str, tensor: torch.Tensor) -> dict[str, str | None]:
    """Every backend of ``op`` mapped to None (usable on ``tensor``) or the reason it is not."""
    spec = _op(op)
    return {name: spec.unavailable(name, tensor) for name in spec.backends}
