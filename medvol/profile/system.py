"""Building the system under test and feeding it batches, shared by measurement and estimate."""

from __future__ import annotations

import importlib
import os
import time
from typing import Callable

import torch

from medvol.errors import MedvolError
from medvol.profile.cases import Case

#: Environment variable making the worker fail as if out of memory above a batch size: it lets
#: tests (and users checking their scripts) exercise OOM handling on machines with plenty of memory.
SIMULATE_MAX_BATCH_ENV = "MEDVOL_PROFILE_SIMULATE_MAX_BATCH"


def load_factory(spec: str) -> Callable:
    """Import ``"package.module:function"``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise MedvolError(f"system factory {spec!r}: expected 'module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise MedvolError(f"system factory {spec!r}: {error}") from None


def build_system(case: Case) -> torch.nn.Module:
    """Build the GANSystem of ``case`` on the current default device, in the case's mode."""
    factory = load_factory(case.factory)
    system = factory(case.model, case.size, base_width=case.width, **case.options())
    system.set_mode(case.mode)
    return system


def amp_dtype(case: Case) -> torch.dtype | None:
    """The reference path trains in fp32; the optimized path as ``medvol train``'s default
    ``train.amp auto`` does: bf16 autocast where the measured device computes bf16 natively, fp32
    where it would only emulate it. An estimate (fake tensors, no device used) is of the bf16 run."""
    if case.mode != "optimized":
        return None
    if case.kind == "measure":
        from medvol.utils import resolve_amp

        return torch.bfloat16 if resolve_amp("auto", case.device)[0] == "bf16" else None
    return torch.bfloat16


def check_simulated_oom(case: Case) -> None:
    """Raise MemoryError if :data:`SIMULATE_MAX_BATCH_ENV` says this batch does not fit."""
    limit = os.environ.get(SIMULATE_MAX_BATCH_ENV)
    if limit and case.batch > int(limit):
        raise MemoryError(f"simulated allocation failure: batch {case.batch} > "
                          f"{SIMULATE_MAX_BATCH_ENV}={limit}")


def batch_shape(system: torch.nn.Module, batch: int) -> tuple[int, ...]:
    """The real batch one training step of ``system`` takes at batch size B.

    3D: ``[B, C, S, S, S]`` (C = 1, or 1 + K for a paired image + mask model); 2D (``system.dims == 2``): ``[k B, C, S, S]``, k = ``real_batches``
    (a WGAN critic trained n_critic times per step takes n_critic real batches).
    """
    if hasattr(system, "batch_shape"):  # the model contract says it
        return tuple(system.batch_shape(batch))
    s = system.size
    count = batch * int(getattr(system, "real_batches", 1))
    if getattr(system, "dims", 3) == 2:
        return (count, int(system.channels), s, s)
    return (count, int(getattr(system, "channels", 1)), s, s, s)


class BatchSource:
    """Produces training batches (:func:`batch_shape`) in [-1, 1] on ``device`` and times how long
    that takes.

    ``synthetic`` makes noise directly on the device (data-wait ~ a kernel launch); ``phantom``
    draws procedural phantoms (2D: their slices, with the mask channel where the model has one)
    on the host, as a data loader would, and copies them over.
    """

    def __init__(self, case: Case, device: torch.device, system: torch.nn.Module):
        self.case = case
        self.device = device
        self.shape = batch_shape(system, case.batch)
        self.index = 0
        self.dataset = None
        if case.data == "phantom":
            try:
                from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
            except ImportError as error:
                raise MedvolError(f"--data phantom: the phantom dataset is unavailable ({error})") from None
            masks = len(self.shape) == 4 and self.shape[1] == 2
            self.dataset = PhantomVolumeDataset(case.size, length=1 << 20, seed=case.seed, nodules=masks)
            if len(self.shape) == 4:
                self.dataset = SliceDataset(self.dataset, masks=masks)

    def next(self) -> tuple[torch.Tensor, float]:
        """Returns (batch, seconds spent producing it, synchronised)."""
        start = time.perf_counter()
        if self.dataset is None:
            batch = torch.rand(self.shape, device=self.device).mul_(2).sub_(1)
        else:
            items = [self.dataset[self.index + i]["image"] for i in range(self.shape[0])]
            self.index += self.shape[0]
            batch = torch.stack(items).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return batch, time.perf_counter() - start
