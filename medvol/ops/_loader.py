"""Finds the compiled ops (``medvol._C``) and the Triton kernels, and says why one is missing.

``medvol._C`` (built by setup.py from ``csrc/``) has no Python module init: it is a plain shared
library that registers ``torch.ops.medvol.*`` when loaded with ``torch.ops.load_library``. Where it
lacks CUDA kernels (built without nvcc) but a GPU and a CUDA toolchain are present, the CUDA sources
are compiled just in time, once, into ``$MEDVOL_EXTENSIONS_DIR`` (default
``~/.cache/medvol/extensions``); ``torch.utils.cpp_extension.load`` reuses that build while the
sources are unchanged. Every ``*_status`` function returns ``None`` when the backend is usable and
otherwise the reason, which the dispatch turns into a :class:`medvol.errors.MedvolError`.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("medvol.ops")

_PROBE_OP = "medvol::meanfield_crf_forward"
_CSRC = Path(__file__).resolve().parents[2] / "csrc"
_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)"


def _has_kernel(dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(_PROBE_OP, dispatch_key)
    except RuntimeError:  # the op is not registered at all
        return False


@functools.lru_cache(maxsize=None)
def _load_installed() -> str | None:
    """Loads the installed ``medvol._C`` once; returns None or why it could not be loaded."""
    spec = importlib.util.find_spec("medvol._C")
    if spec is None or not spec.origin:
        return f"the C++ extension medvol._C is not built; {_BUILD_HINT}"
    try:
        torch.ops.load_library(spec.origin)
    except OSError as error:
        return f"the C++ extension {spec.origin} failed to load ({error}); rebuild: {_BUILD_HINT}"
    log.debug("loaded %s", spec.origin)
    return None


def cpp_status() -> str | None:
    """None when the CPU kernels of ``medvol._C`` are loaded, else why not."""
    reason = _load_installed()
    if reason is None and not _has_kernel("CPU"):
        reason = "medvol._C was loaded but registers no CPU kernels; rebuild it"
    return reason


def _jit_sources(installed_loaded: bool) -> list[str]:
    cuda = sorted(glob.glob(str(_CSRC / "cuda" / "*.cu")))
    if installed_loaded:  # the schema and CPU kernels are already registered: add CUDA only
        return cuda
    return sorted(glob.glob(str(_CSRC / "*.cpp")) + glob.glob(str(_CSRC / "cpu" / "*.cpp"))) + cuda


def _find_cuda_home() -> str | None:
    """The CUDA toolkit to compile with, searched like setup.py does: $CUDA_HOME, the toolkit of
    torch's CUDA version, /usr/local/cuda, then torch's own guess."""
    from torch.utils import cpp_extension

    candidates = [os.environ.get("CUDA_HOME"), f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda",
                  cpp_extension.CUDA_HOME]
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    return None


@functools.lru_cache(maxsize=None)
def _jit_cuda() -> str | None:
    """Compiles the CUDA kernels from csrc/ once (cached on disk); None on success, else why not."""
    from torch.utils import cpp_extension

    if os.environ.get("MEDVOL_NO_JIT") == "1":  # tools/gpu_check.sh: no device minute goes to nvcc
        return "just-in-time compilation is disabled (MEDVOL_NO_JIT=1)"
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return "no nvcc found (set CUDA_HOME) to compile them just in time"
    cpp_extension.CUDA_HOME = cuda_home
    os.environ.setdefault("CUDA_HOME", cuda_home)
    installed = _load_installed() is None
    sources = _jit_sources(installed)
    if not any(s.endswith(".cu") for s in sources):
        return f"the CUDA sources ({_CSRC}/cuda) are not present in this installation"
    build_dir = Path(os.environ.get("MEDVOL_EXTENSIONS_DIR", Path.home() / ".cache" / "medvol" / "extensions"))
    build_dir = build_dir / f"torch{torch.__version__}-cuda{torch.version.cuda}"
    build_dir.mkdir(parents=True, exist_ok=True)
    log.warning("medvol: compiling the CUDA ops just in time into %s (reused once built)", build_dir)
    try:
        cpp_extension.load(
            name="medvol_cuda_jit" if installed else "medvol_jit",
            sources=sources,
            extra_cflags=["-O3", "-std=c++20", "-fopenmp"],
            extra_cuda_cflags=["-O3", "-std=c++20"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
        )
    except Exception as error:  # noqa: BLE001 - any toolchain failure becomes the backend's reason
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return f"just-in-time compilation of the CUDA ops failed ({first}); log in {build_dir}"
    return None


def cuda_status() -> str | None:
    """None when the CUDA kernels are registered (installed or compiled just in time), else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    _load_installed()
    if _has_kernel("CUDA"):
        return None
    reason = _jit_cuda()
    if reason is None and not _has_kernel("CUDA"):
        reason = "the just-in-time build registered no CUDA kernels"
    if reason is not None:
        return f"medvol._C was built without CUDA kernels and {reason}"
    return None


def ops_registered() -> bool:
    """Whether ``torch.ops.medvol`` ops exist (they then trace on fake tensors via their fake impls)."""
    _load_installed()
    return _has_kernel("CPU") or _has_kernel("CUDA")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _import_triton() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"triton is not installed ({error})"
    return None


def triton_status(device: torch.device) -> str | None:
    """None when Triton kernels can run on ``device``, else why not."""
    reason = _import_triton()
    if reason is not None:
        return reason
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpreted():
        return None
    return f"Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got {device.type}"
