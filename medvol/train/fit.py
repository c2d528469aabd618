"""One small fit loop for the auxiliary networks: the domain feature autoencoder, the downstream
U-Net and the downstream classifier.

The generative models train through :class:`medvol.train.trainer.Trainer`; the networks that
serve evaluation and studies are small, single-process and fp32, so they get this loop instead of
a copy each: seed, build, Adam, a fixed number of iterations of a caller's ``step``, a stop on the
first non-finite loss, progress lines, and checkpoints in medvol's checkpoint format
(:mod:`medvol.train.checkpoint`: ``torch.save`` dict loadable with ``weights_only=True`` and a
``.sha256`` sidecar) that resume bit-exactly.

A checkpoint of this loop says ``"kind": "auxiliary"`` and its ``task`` (``"domain-features"``,
``"downstream-unet"``, ``"downstream-classifier"``); beside the weights, the optimiser and every RNG
state (torch, numpy's global one, the loop's own ``numpy.random.Generator`` and any MONAI random
transforms the step holds) it keeps ``auxiliary``: the settings that define the network and its
data, the iteration target, the loss curve so far, the start history and what the caller records.

Resuming follows the trainer's rules where they apply: ``resume="auto"`` continues the output
file if it exists; an explicit checkpoint that is not the output starts a *fork* (the output is a
new file; changed settings are allowed and recorded); continuing in place with changed settings is
refused unless ``allow_changes`` (recorded too). A checkpoint of another task is refused.

Example:
    >>> result = fit(lambda: torch.nn.Linear(2, 1), lambda net, it, rng: net(torch.ones(1, 2)).pow(2).sum(),
    ...              task="example", iterations=3, lr=0.1, seed=0)
    >>> len(result.losses)
    3
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medvol.errors import MedvolError
from medvol.train import checkpoint as ckpt

KIND = "auxiliary"


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        net: the trained network, in eval mode, on the fit's device.
        losses: the loss of every iteration from 0 (a resumed fit includes the checkpoint's).
        iteration: iterations done.
        path: the checkpoint written (None without ``out``).
        history: one record per start (``start``, ``resume``, ``fork``) with its changed settings.
    """

    net: torch.nn.Module
    losses: list[float]
    iteration: int
    path: Path | None = None
    history: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------- RNG states


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state with its 128-bit integers as strings (``weights_only`` loading
    keeps only plain values)."""
    return _stringify(rng.bit_generator.state)


def set_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = _unstringify(state)


def _stringify(value):
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _unstringify(value):
    if isinstance(value, dict):
        return {k: _unstringify(v) for k, v in value.items()}
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _random_states_of(obj, seen: set[int]) -> list[np.random.RandomState]:
    """Every ``numpy.random.RandomState`` a MONAI transform holds (its own ``R`` and those of the
    transforms inside it), in a fixed order."""
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = []
    attributes = vars(obj) if hasattr(obj, "__dict__") else {}
    for value in attributes.values():
        if isinstance(value, np.random.RandomState):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if hasattr(item, "__dict__") and type(item).__module__.startswith("monai"):
                    found += _random_states_of(item, seen)
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("monai"):
            found += _random_states_of(value, seen)
    return found


def transform_states(transform) -> list[dict[str, Any]]:
    """The random states of a MONAI transform, as plain values and tensors (see :func:`set_transform_states`)."""
    states = []
    for rs in _random_states_of(transform, set()):
        kind, key, pos, has_gauss, cached = rs.get_state()
        states.append({"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached)})
    return states


def set_transform_states(transform, states: list[dict[str, Any]]) -> None:
    """Inverse of :func:`transform_states` on a transform built the same way.

    Raises:
        MedvolError: the transform holds another number of random states (built differently).
    """
    found = _random_states_of(transform, set())
    if len(found) != len(states):
        raise MedvolError(f"checkpoint holds {len(states)} augmentation random states, the augmentation has "
                          f"{len(found)}: it was built differently")
    for rs, s in zip(found, states):
        rs.set_state(("MT19937", s["key"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"]))


# -------------------------------------------------------------------------------- checkpoint


def read_auxiliary(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """Verify and load a checkpoint of this loop (of ``task`` when given).

    Raises:
        MedvolError: missing, corrupt (checksum), not a medvol checkpoint, or of another kind / task.
    """
    state = ckpt.read_checkpoint(path)
    if state.get("kind") != KIND:
        raise MedvolError(f"{state['path']} is a checkpoint of a generative model, not of an auxiliary network")
    if task is not None and state.get("task") != task:
        raise MedvolError(f"{state['path']} is a checkpoint of {state.get('task')!r}, not of {task!r}")
    return state


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list]:
    """``{key: [old, new]}`` of the settings that differ."""
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _describe(changes: dict[str, list], limit: int = 3) -> str:
    return "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit])


def fit(build: Callable[[], torch.nn.Module], step: Callable[[torch.nn.Module, int, np.random.Generator], torch.Tensor],
        *, task: str, iterations: int, lr: float, seed: int, settings: dict[str, Any] | None = None,
        device: str | torch.device = "cpu", threads: int | None = None, out: str | os.PathLike | None = None,
        ckpt_every: int = 0, resume: str | os.PathLike | None = None, allow_changes: bool = False,
        transform=None, record: dict[str, Any] | None = None, log: Callable[[str], None] | None = None,
        log_every: int = 0, loss_name: str = "loss", what: str = "checkpoint") -> FitResult:
    """Train ``build()`` for ``iterations`` steps of ``step``; optionally checkpoint and resume.

    The order of random draws is fixed so that a seed gives one result: ``torch.manual_seed(seed)``
    and numpy's global seed, then ``build()`` (the initial weights), then the loop's generator
    ``numpy.random.default_rng(seed)`` that ``step`` draws its batches from.

    Args:
        build: makes the network (on the CPU; moved to ``device``).
        step: ``step(net, iteration, rng) -> loss`` (a scalar tensor); the loop does zero_grad,
            backward and the Adam step.
        task: what the network is (recorded; a checkpoint of another task is refused).
        iterations: the target number of iterations (>= 1).
        lr: Adam's learning rate.
        seed: seeds the weights and every draw.
        settings: what defines the network and its data (architecture, data identity, batch, lr,
            ...): compared on resume. ``iterations`` is not a setting (a fit may be continued).
        device: where it trains.
        threads: torch CPU threads (None: the process's setting).
        out: the checkpoint file to write (None: nothing written). Written every ``ckpt_every``
            iterations (0: at the end only) and at the end, atomically with its sidecar.
        resume: None (fresh), ``"auto"`` (continue ``out`` if it holds a checkpoint) or a
            checkpoint file (``out`` itself: continue in place; another: fork into ``out``).
        allow_changes: continue in place although settings changed (recorded).
        transform: a MONAI transform ``step`` uses, whose random states are checkpointed.
        record: more to keep in the checkpoint's ``auxiliary`` (data provenance, architecture).
        log: progress lines (every ``log_every`` iterations and the last; 0: none).
        loss_name: how progress lines name the loss.
        what: how a failed write names ``out``.

    Returns:
        A :class:`FitResult`.

    Raises:
        MedvolError: bad options, a checkpoint of another task or with changed settings (without
            a fork or ``allow_changes``), one beyond ``iterations``, or a non-finite loss.
    """
    from medvol.utils import set_threads

    for flag, value in (("iterations", iterations), ("ckpt_every", ckpt_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if flag == "iterations" else 0):
            raise MedvolError(f"{task}: {flag} {value!r}: expected an integer >= {1 if flag == 'iterations' else 0}")
    if not lr > 0:
        raise MedvolError(f"{task}: learning rate {lr!r}: expected a positive number")
    if threads:
        set_threads(threads)
    settings = dict(settings or {}, lr=lr, seed=seed)
    out = Path(out) if out is not None else None
    device = torch.device(device)

    state, event, changes = _pick(task, resume, out, settings, allow_changes)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    net = build().to(device)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    history: list[dict] = []
    start = 0
    if state is not None:
        try:
            net.load_state_dict(state["system"])
            optimiser.load_state_dict(state["optimizers"]["net"])
        except (RuntimeError, KeyError, ValueError) as error:
            first = " ".join(str(error).split())[:200]
            raise MedvolError(f"checkpoint {state['path']} does not fit this {task} network: {first}") from None
        ckpt.restore_rng(state["rng"][0])
        set_generator_state(rng, state["fit"]["generator"])
        if transform is not None:
            set_transform_states(transform, state["fit"]["transform"])
        aux = state["auxiliary"]
        losses = [float(v) for v in aux["losses"]]
        history = list(aux.get("history", []))
        start = int(state["iteration"])
        if start > iterations:
            raise MedvolError(f"checkpoint {state['path']} is at iteration {start}, beyond the {iterations} asked; "
                              "ask for at least as many")
    history.append({"event": event, "iteration": start, "iterations": iterations,
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    **({"checkpoint": state["path"]} if state is not None else {}),
                    **({"changes": changes} if changes else {})})
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MedvolError(f"{out}: cannot create its folder ({os.strerror(error.errno or 0).lower()})") from None

    def save(iteration: int) -> Path:
        return ckpt.save_checkpoint(out, {
            "kind": KIND, "task": task, "iteration": iteration, "system": net.state_dict(),
            "optimizers": {"net": optimiser.state_dict()}, "scaler": None, "world_size": 1,
            "rng": [ckpt.capture_rng()],
            "fit": {"generator": generator_state(rng),
                    "transform": transform_states(transform) if transform is not None else None},
            "auxiliary": {"settings": settings, "iterations": iterations, "losses": list(losses),
                          "history": history, **(record or {})},
        }, what=what)

    net.train()
    path = None
    for iteration in range(start, iterations):
        loss = step(net, iteration, rng)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        if not np.isfinite(value):
            raise MedvolError(f"{task} training diverged at iteration {iteration} (loss {value})")
        losses.append(value)
        if log is not None and log_every and (iteration % log_every == 0 or iteration == iterations - 1):
            log(f"iteration {iteration:>5}  {loss_name} {value:.4f}")
        done = iteration + 1
        if out is not None and ckpt_every and done % ckpt_every == 0 and done < iterations:
            path = save(done)
    if out is not None:
        path = save(iterations)
    return FitResult(net.eval(), losses, iterations, path, history)


def _pick(task: str, resume, out: Path | None, settings: dict, allow_changes: bool):
    """``(state or None, event, changes)`` of a start (module docstring: the resume rules)."""
    if resume is None:
        return None, "start", {}
    if resume == "auto":
        if out is None:
            raise MedvolError(f"{task}: resume 'auto' needs an output checkpoint to continue")
        if not out.exists():
            return None, "start", {}
        state, fork = read_auxiliary(out, task), False
    else:
        state = read_auxiliary(resume, task)
        fork = out is None or not out.exists() or out.resolve() != Path(state["path"]).resolve()
    changes = changed_settings(state["auxiliary"].get("settings", {}), settings)
    if changes and not fork and not allow_changes:
        raise MedvolError(f"checkpoint {state['path']} was trained with other settings ({_describe(changes)}); "
                          "continue with the same ones, fork it into a new output, or allow the changes")
    return state, "fork" if fork else "resume", changes
