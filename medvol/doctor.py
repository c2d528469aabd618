"""``medvol doctor``: what this machine offers medvol, and whether its fast ops agree with the reference.

The first thing to run on a new (GPU) machine and to paste into a bug report: versions, devices,
native bf16 and what ``train.amp auto`` becomes on each device, threads, the optional packages
installed, and every op backend (``medvol.ops``) with a quick check against the plain-PyTorch
reference in float64 on every device present: forward and all gradients, on small random inputs.
Triton runs on a GPU, or on the CPU under ``TRITON_INTERPRET=1``. Nothing is compiled: a CUDA
build missing from ``medvol._C`` is reported (``MEDVOL_NO_JIT`` is set while checking), not
built just in time.

Example:
    >>> report = diagnose()                    # doctest: +SKIP
    >>> report["ok"], format_report(report)    # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from typing import Any, Callable

import torch

import medvol
from medvol.utils import (OPTIONAL_PACKAGES, cpu_model_name, default_threads, device_has_native_bf16,
                          physical_cores, resolve_amp)

#: fp32 result vs float64 reference, |a - b| <= atol * max(|b|, 1) + rtol |b| (tests/ops' fp32 row).
RTOL, ATOL = 1e-4, 1e-5


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def _device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        name = f"CPU {cpu_model_name()} (capability {torch.backends.cpu.get_cpu_capability()})"
    else:
        props = torch.cuda.get_device_properties(device)
        name = (f"{props.name} (sm_{props.major}{props.minor}, "
                f"{props.total_memory / 2**30:.1f} GiB)")
    amp, why = resolve_amp("auto", device)
    return {"device": str(device), "name": name, "native_bf16": device_has_native_bf16(device),
            "amp_auto": amp, "amp_why": why}


def _extras() -> dict[str, dict[str, str | None]]:
    """Each extra's packages (of :data:`OPTIONAL_PACKAGES`) and their installed versions (None: absent)."""
    extras: dict[str, dict[str, str | None]] = {}
    for module, (distribution, extra) in sorted(OPTIONAL_PACKAGES.items(), key=lambda kv: kv[1][1]):
        if distribution in extras.setdefault(extra, {}):
            continue
        version = _version(distribution)
        if version is None and importlib.util.find_spec(module) is not None:
            version = "installed"
        extras[extra][distribution] = version
    return extras


def _extension() -> dict[str, Any]:
    """Whether ``medvol._C`` loads and which kernels it registers (CPU, CUDA)."""
    from medvol.ops import _loader

    reason = _loader.cpp_status()
    return {"loaded": reason is None, "reason": reason, "cpu_kernels": _loader._has_kernel("CPU"),
            "cuda_kernels": _loader._has_kernel("CUDA")}


# ----------------------------------------------------------------------------------- op checks


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, bool]:
    """(largest error relative to the tolerance, within tolerance) of ``actual`` vs ``expected``."""
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    if actual.shape != expected.shape or not torch.isfinite(actual).all():
        return float("inf"), False
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    allowed = ATOL * scale + RTOL * expected.abs()
    ratio = ((actual - expected).abs() / allowed).max().item() if expected.numel() else 0.0
    return ratio, ratio <= 1.0


def _compare(run: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
             inputs: list[torch.Tensor], device: torch.device) -> dict[str, Any]:
    """Run ``run`` on float32 copies of ``inputs`` on ``device`` and ``reference`` in float64 on the
    CPU; compare the outputs and the gradients of every input (through a random output weight)."""
    ours = [x.detach().to(device, torch.float32, copy=True).requires_grad_() for x in inputs]
    theirs = [x.detach().to("cpu", torch.float64, copy=True).requires_grad_() for x in inputs]
    out = run(*ours)
    expected = reference(*theirs)
    weight = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * weight.to(device, out.dtype)).sum().backward()
    (expected * weight).sum().backward()
    worst, ok = _max_error(out, expected)
    for a, b in zip(ours, theirs):
        ratio, fine = _max_error(a.grad, b.grad)
        worst, ok = max(worst, ratio), ok and fine
    return {"status": "pass" if ok else "FAIL", "error_vs_tolerance": worst}


def _meanfield_case(device: torch.device):
    from medvol.ops import meanfield_crf, meanfield_crf_reference

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 12, 40, generator=g), torch.randn(2, 12, generator=g),
              torch.randn(12, 12, generator=g) * 0.3]
    probe = inputs[0].to(device)

    def run(backend):
        return lambda f, u, w: meanfield_crf(f, u, w, 5, backend=backend)

    return probe, inputs, run, lambda f, u, w: meanfield_crf_reference(f, u, w, 5)


def _upsample_case(device: torch.device):
    from medvol.ops import upsample_conv3d, upsample_conv3d_reference

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 3, 3, 4, 5, generator=g), torch.randn(4, 3, 3, 3, 3, generator=g),
              torch.randn(4, generator=g)]
    probe = inputs[0].to(device)

    def run(backend):
        return lambda x, w, b: upsample_conv3d(x, w, b, backend=backend)

    return probe, inputs, run, upsample_conv3d_reference


#: Op name -> case factory: (probe tensor, float inputs, backend -> function, float64 reference).
OP_CASES = {"meanfield_crf": _meanfield_case, "upsample_conv3d": _upsample_case}


def check_ops(devices: list[torch.device]) -> list[dict[str, Any]]:
    """One row per op x device x backend: ``status`` is ``reference`` (the ``torch`` backend),
    ``pass``, ``FAIL`` (disagrees with the reference), ``error`` (raised) or ``unavailable``."""
    from medvol.ops import available_backends

    rows = []
    for op, case in OP_CASES.items():
        for device in devices:
            probe, inputs, run, reference = case(device)
            for backend, reason in available_backends(op, probe).items():
                row = {"op": op, "device": str(device), "backend": backend}
                if backend == "torch":
                    row["status"] = "reference"
                elif reason is not None:
                    row.update(status="unavailable", reason=reason)
                else:
                    try:
                        row.update(_compare(run(backend), reference, inputs, device))
                    except Exception as error:  # noqa: BLE001 - a built backend that crashes is the finding
                        first = next((ln for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
                        row.update(status="error", reason=f"{type(error).__name__}: {first}"[:300])
                rows.append(row)
    return rows


def diagnose() -> dict[str, Any]:
    """Everything ``medvol doctor`` reports, as a dict; ``ok`` is False when a built backend
    disagrees with the reference or fails to run."""
    import numpy

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    devices = _devices()
    previous = os.environ.get("MEDVOL_NO_JIT")
    os.environ["MEDVOL_NO_JIT"] = "1"  # report what is built; never spend minutes compiling here
    try:
        ops = check_ops(devices)
    finally:
        if previous is None:
            os.environ.pop("MEDVOL_NO_JIT", None)
        else:
            os.environ["MEDVOL_NO_JIT"] = previous
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return {
        "versions": {"medvol": medvol.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": triton_version,
                     "numpy": numpy.__version__},
        "platform": platform.platform(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "devices": [_device_info(d) for d in devices],
        "threads": {"torch": torch.get_num_threads(), "medvol_default": default_threads(),
                    "cpus_usable": cpus, "physical_cores": physical_cores(),
                    "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "extension": _extension(),
        "extras": _extras(),
        "ops": ops,
        "ok": all(row["status"] in ("reference", "pass", "unavailable") for row in ops),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as plain text, one fact per line, for a terminal or a bug report."""
    v = report["versions"]
    lines = [f"medvol {v['medvol']}, Python {v['python']}, torch {v['torch']} (CUDA {v['torch_cuda'] or 'none'}), "
             f"triton {v['triton'] or 'not installed'}"
             + (" (TRITON_INTERPRET=1)" if report["triton_interpret"] else "") + f", numpy {v['numpy']}",
             f"platform: {report['platform']}", "devices:"]
    for d in report["devices"]:
        lines.append(f"  {d['device']}: {d['name']}; native bf16: {'yes' if d['native_bf16'] else 'no'}; "
                     f"train.amp auto -> {d['amp_auto']}")
    t = report["threads"]
    lines.append(f"threads: torch {t['torch']}, medvol default {t['medvol_default']} (usable CPUs "
                 f"{t['cpus_usable']}, physical cores {t['physical_cores']}, load {t['load_1min']}, "
                 f"OMP_NUM_THREADS {t['OMP_NUM_THREADS'] or 'unset'})")
    ext = report["extension"]
    lines.append("medvol._C: " + (f"loaded; CPU kernels {'yes' if ext['cpu_kernels'] else 'no'}, CUDA kernels "
                                  f"{'yes' if ext['cuda_kernels'] else 'no'}" if ext["loaded"] else ext["reason"]))
    lines.append("extras:")
    for extra, packages in report["extras"].items():
        have = ", ".join(f"{name} {version}" if version else f"{name} MISSING" for name, version in packages.items())
        lines.append(f"  [{extra}] {have}")
    lines.append("ops (each backend vs the float64 reference, forward and gradients):")
    for row in report["ops"]:
        what = f"  {row['op']} {row['backend']} on {row['device']}: {row['status']}"
        if "error_vs_tolerance" in row:
            what += f" (largest error {row['error_vs_tolerance']:.3g} x the tolerance)"
        if "reason" in row:
            what += f" ({row['reason']})"
        lines.append(what)
    lines.append("all found backends agree with the reference" if report["ok"]
                 else "PROBLEM: a built backend disagrees with the reference or fails (rows FAIL / error above)")
    return "\n".join(lines)

