"""Device-free peak-memory estimate: the training step traced on fake tensors.

Under ``FakeTensorMode`` every op computes only shapes, dtypes and strides, so a 512^3 step runs
in seconds on a laptop. :class:`LiveMemoryTracker`, a dispatch mode stacked above the fake mode,
sees every op's outputs, counts each new storage once (views share it) and subtracts it when the
storage is freed (a weakref finalizer), so ``peak`` is the high-water mark of live tensor memory
in one process: parameters and buffers, gradients, Adam states, activations saved for backward
(or only the checkpoint boundaries, in the optimized mode) and every temporary an op returns.

What it does not see: memory inside a kernel that is never a tensor (cuDNN/cuBLAS workspaces),
allocator caching and fragmentation (CUDA's ``reserved`` minus ``allocated``), and the CUDA
context. Each storage is rounded up to the CUDA caching allocator's 512-byte granule, the rest of
the difference to a measured peak is reported, not hidden. The trace runs on the fake *CPU*
device (the autograd engine cannot run fake CUDA tensors without a GPU), so autocast follows
PyTorch's CPU bf16 rules, which cast the same convolutions and linears as on CUDA.
"""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from medvol.profile.cases import Case
from medvol.profile.system import amp_dtype, batch_shape, check_simulated_oom, load_factory

#: The CUDA caching allocator hands out multiples of 512 bytes.
GRANULE = 512
PHASES = ("parameters", "forward", "backward", "optimizer")
_DATA_DEPENDENT = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
}


def _round(nbytes: int) -> int:
    return -(-nbytes // GRANULE) * GRANULE


class LiveMemoryTracker(TorchDispatchMode):
    """Tracks live tensor storages created by ops and their peak total.

    Enter it *inside* ``FakeTensorMode`` (so it sees ops first). Data-dependent scalars
    (``tensor.item()``, e.g. a random crop position or Adam's step count) have no value on fake
    tensors; they read as 1, which keeps shapes valid and divisions finite: memory does not depend
    on them.

    Attributes:
        current: bytes of live storages now.
        peak: highest ``current`` seen.
        phase_at_peak: live bytes at the peak by the phase that allocated them (:data:`PHASES`).
        frames: per named region (see :meth:`region`), its own peak.
        modules: optional ``{id(module): name}``; allocations are then attributed to the innermost
            running module and the largest live-at-peak ones kept in ``allocations_at_peak``.
    """

    def __init__(self, modules: dict[int, str] | None = None, keep_allocations: bool = False):
        super().__init__()
        self.current = 0
        self.peak = 0
        self.live: dict[int, tuple[int, str, int]] = {}  # key -> (bytes, phase, allocation index)
        self.by_phase = dict.fromkeys(PHASES, 0)
        self.phase_at_peak = dict(self.by_phase)
        self.optimizer_depth = 0
        self.open_frames: list[list] = []  # [name, peak]
        self.frames: dict[str, list[int]] = {}
        self.modules = modules
        self.module_stack: list[str] = []
        self.keep_allocations = keep_allocations
        self.allocations: list[tuple[int, str, str, str]] = []  # (bytes, op, module, phase)
        self.allocations_at_peak: list[tuple[int, str, str, str]] = []
        self._peak_pending = False
        self._count = 0
        self._step_started = False

    # -- bookkeeping -------------------------------------------------------------------------
    def _phase(self) -> str:
        if self.optimizer_depth:
            return "optimizer"
        if torch._C._current_graph_task_id() != -1:
            return "backward"
        return "forward" if self._step_started else "parameters"

    def start_step(self) -> None:
        """From now on, allocations outside backward and optimizer are 'forward'."""
        self._step_started = True

    def _allocate(self, storage, op: str) -> None:
        key = id(storage)
        if key in self.live:
            return
        nbytes = _round(storage.nbytes())
        phase = self._phase()
        index = self._count
        self._count += 1
        self.live[key] = (nbytes, phase, index)
        self.by_phase[phase] += nbytes
        self.current += nbytes
        if self.keep_allocations:
            module = self.module_stack[-1] if self.module_stack else "(outside modules)"
            self.allocations.append((nbytes, op, module, phase))
        if self.current > self.peak:
            self.peak = self.current
            self._peak_pending = True
        for frame in self.open_frames:
            frame[1] = max(frame[1], self.current)
        weakref.finalize(storage, self._free, key)

    def _snapshot_peak(self) -> None:
        # Between a new peak and the next free only allocations happen, so the state just before
        # the first free after it is the state at the peak.
        self.phase_at_peak = dict(self.by_phase)
        if self.keep_allocations:
            self.allocations_at_peak = [self.allocations[index] for _, _, index in self.live.values()]
        self._peak_pending = False

    def _free(self, key: int) -> None:
        if self._peak_pending:
            self._snapshot_peak()
        nbytes, phase, _ = self.live.pop(key)
        self.by_phase[phase] -= nbytes
        self.current -= nbytes

    def finish(self) -> None:
        if self._peak_pending:
            self._snapshot_peak()

    # -- regions -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        """Record the peak of live memory while the block runs (used as the ``substep`` hook)."""
        frame = [name, self.current]
        self.open_frames.append(frame)
        try:
            yield
        finally:
            self.open_frames.remove(frame)
            self.frames.setdefault(name, []).append(frame[1])

    @contextlib.contextmanager
    def optimizer_hooks(self) -> Iterator[None]:
        """Mark allocations inside any ``optimizer.step()`` as 'optimizer'."""
        from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                           register_optimizer_step_pre_hook)

        def pre(*_):
            self.optimizer_depth += 1

        def post(*_):
            self.optimizer_depth -= 1

        handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def module_hooks(self) -> Iterator[None]:
        """Keep the stack of running modules (named in ``self.modules``) for attribution."""
        from torch.nn.modules.module import (register_module_forward_hook,
                                             register_module_forward_pre_hook)

        names = self.modules or {}

        def pre(module, _inputs):
            self.module_stack.append(names.get(id(module), type(module).__name__))

        def post(module, _inputs, _output):
            if self.module_stack:
                self.module_stack.pop()

        handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _DATA_DEPENDENT:
            if func is torch.ops.aten._local_scalar_dense.default:
                dtype = args[0].dtype
                return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)
            return True
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._allocate(tensor.untyped_storage(), func.__name__)
        return out


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if id(storage) not in seen:
            seen.add(id(storage))
            total += _round(storage.nbytes())
    return total


def _build_meta(case: Case) -> torch.nn.Module:
    """Build on the meta device (no memory, no init cost); set the mode there, where
    ``Module.to(memory_format=...)`` still works (it cannot swap fake parameters)."""
    factory = load_factory(case.factory)
    try:
        with torch.device("meta"):
            system = factory(case.model, case.size, base_width=case.width, **case.options())
    except (RuntimeError, NotImplementedError):
        # A builder that reads values while initialising (e.g. an SVD on the weights) needs real
        # tensors; the published models are ~80M parameters, cheap to build once on the CPU.
        system = factory(case.model, case.size, base_width=case.width, **case.options())
    system.set_mode(case.mode)
    return system


def _fakeify(system: torch.nn.Module, device: str) -> None:
    """Replace every parameter, buffer and tensor attribute by a fake tensor of the same
    shape/stride/dtype (called inside the fake and tracking modes, so they are counted)."""
    memo: dict[int, torch.Tensor] = {}

    def fake(tensor):
        if id(tensor) not in memo:
            new = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=device)
            if isinstance(tensor, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=tensor.requires_grad)
            memo[id(tensor)] = new
        return memo[id(tensor)]

    for module in system.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                if tensor is not None:
                    table[name] = fake(tensor)
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not name.startswith("_"):
                object.__setattr__(module, name, fake(value))


def _like_cuda(optimizers: dict) -> None:
    """Make optimizers left on automatic choose what they choose on CUDA: the multi-tensor
    (``foreach``) implementation, whose whole-list temporaries are part of the real peak. Fake
    tensors are not plain ``Tensor``s, so on its own PyTorch would pick the per-tensor loop."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            if group.get("foreach") is None and not group.get("fused"):
                group["foreach"] = True


def estimate(case: Case, *, iterations: int = 2, keep_allocations: bool = False) -> dict:
    """Trace ``iterations`` full training steps of ``case`` on fake tensors.

    Two iterations by default: the first allocates the Adam states, so the second is the steady
    state a long run lives in; the reported peak is the maximum over both.

    Returns:
        dict with ``peak_bytes``; ``persistent`` (parameters+buffers, gradients, optimizer states
        alive after the last step); ``phase_at_peak``; ``iteration_peaks``; ``substeps``
        (``{name: {"peak_bytes": ...}}``); ``params``; ``trace_s``; with ``keep_allocations``
        also ``allocations_at_peak`` (largest first: bytes, op, module, phase).
    """
    start = time.perf_counter()
    # Without the cyclic garbage collector a tensor held by a reference cycle stays counted, as it
    # may stay allocated on a device until a collection happens to run; with it, the peak would
    # depend on when one runs (unrelated code shifted it by a 128 MiB volume, issue 22).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _estimate(case, iterations, keep_allocations, start)
    finally:
        if was_enabled:
            gc.enable()


def _estimate(case: Case, iterations: int, keep_allocations: bool, start: float) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    system = _build_meta(case)
    params = {key: int(value) for key, value in system.param_counts().items()}
    modules = {id(module): name or "system" for name, module in system.named_modules()}
    tracker = LiveMemoryTracker(modules if keep_allocations else None, keep_allocations)
    device = "cpu"
    with FakeTensorMode(), tracker, tracker.optimizer_hooks(), \
            (tracker.module_hooks() if keep_allocations else contextlib.nullcontext()):
        _fakeify(system, device)
        system.train()
        optimizers = system.make_optimizers()
        _like_cuda(optimizers)
        tracker.start_step()
        check_simulated_oom(case)
        shape = batch_shape(system, case.batch)
        for iteration in range(iterations):
            with tracker.region(f"iteration {iteration}"):
                real = torch.empty(shape, device=device)
                system.train_step(real, optimizers, iteration, amp_dtype=amp_dtype(case),
                                  substep=tracker.region)
                del real
        tracker.finish()
        iteration_peaks = [tracker.frames.pop(f"iteration {i}")[0] for i in range(iterations)]
        persistent = {
            "parameters": _storage_bytes(list(system.parameters()) + list(system.buffers())),
            "gradients": _storage_bytes(p.grad for p in system.parameters() if p.grad is not None),
            "optimizer": _storage_bytes(
                value for opt in optimizers.values() for state in opt.state.values()
                for value in state.values() if isinstance(value, torch.Tensor)),
        }
    result = {
        "peak_bytes": int(tracker.peak),
        "iteration_peaks": [int(p) for p in iteration_peaks],
        "phase_at_peak": tracker.phase_at_peak,
        "persistent": persistent,
        "substeps": {name: {"peak_bytes": int(max(peaks))} for name, peaks in tracker.frames.items()},
        "params": params,
        "dims": int(getattr(system, "dims", 3)),
        "trace_s": time.perf_counter() - start,
    }
    if keep_allocations:
        result["allocations_at_peak"] = sorted(tracker.allocations_at_peak, reverse=True)
    return result
