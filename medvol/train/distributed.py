"""Data-parallel training under ``torchrun``: process group set-up and gradient averaging.

Why not the ``DistributedDataParallel`` wrapper: one GAN iteration (``GANSystem.train_step``) runs
G, D and E several times with interleaved backward passes and optimiser steps, while DDP's reducer
assumes one forward and one backward per wrapped module per step. Instead the trainer installs
:func:`average_gradients` as the system's ``grad_sync`` hook, which the step calls after each
sub-step's backward and before its optimiser (or GradScaler) step: the same update as DDP
(identical weights on every rank, gradient = mean over ranks), one flat all-reduce per sub-step.
With fp16 the averaging happens on the scaled gradients, before ``unscale_``, so every rank finds
the same inf/NaN and skips the same steps.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from medvol.errors import MedvolError


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the group, so it also destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0, option: str = "--device") -> torch.device:
    """``"auto"`` -> this rank's GPU when CUDA is present, else the CPU; ``"cpu"``, ``"cuda[:N]"``.

    Raises:
        MedvolError: an unknown device, or a GPU that this machine does not have (checked here,
            before a model is built: ``option`` names the setting in the message).
    """
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MedvolError(f"{option} {name}: unknown device (use auto, cpu or cuda[:N])") from None
    if device.type not in ("cpu", "cuda"):
        raise MedvolError(f"{option} {name}: medvol runs on cpu or cuda[:N], not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible on this machine")
            raise MedvolError(f"{option} {name}: {why}; use cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise MedvolError(f"{option} {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else run alone.

    NCCL on GPUs, gloo on the CPU. Safe to call when a group is already initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank, option="train.device")
    if world_size <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=device, owns_group=owns)


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (identical start)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def average_gradients(params: list[torch.Tensor], world_size: int) -> None:
    """All-reduce the existing ``.grad`` of ``params`` in one flat buffer and divide by ranks.

    Parameters without a gradient are left alone: every rank runs the same code path, so the same
    parameters lack a gradient everywhere.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat.div_(world_size)
        for grad, synced in zip(group, _unflatten_dense_tensors(flat, group)):
            grad.copy_(synced)


def all_finite(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (so all ranks stop together on a NaN)."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32,
                          device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` on every rank (list indexed by rank); ``[obj]`` when alone."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (a decision taken once, e.g. which checkpoint to load)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest ``value`` over all ranks (so every rank sees a signal that reached one of them)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
