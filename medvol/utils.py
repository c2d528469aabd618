"""Small shared helpers: atomic and checked writes, checksums, byte sizes, optional dependencies."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from medvol.errors import MedvolError


def _temp_sibling(path: Path, *, directory: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name keeps the suffixes so writers that choose a format by suffix still work.
    prefix = f".{path.name.split('.')[0]}.tmp-"
    suffix = "".join(path.suffixes)
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs should get the user's usual permissions.
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file, and a failure leaves nothing behind.

    Example:
        >>> with atomic_path("out/vol.nii.gz") as tmp:   # doctest: +SKIP
        ...     write(tmp)
    """
    path = Path(path)
    tmp = _temp_sibling(path, directory=False)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder: filled under a temporary name, then renamed.

    An existing folder at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    tmp = _temp_sibling(path, directory=True)
    try:
        yield tmp
        if path.exists():
            old = _temp_sibling(path, directory=True)
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Force ``path``'s data to the disk; a full disk (or quota) can show up only here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failure(error: BaseException, folder: str | os.PathLike | None = None) -> str:
    """One line saying why a write failed, for a message that already names the file.

    Libraries report a full disk in their own words (torch: ``unexpected pos``, ITK: a short
    file and a note on stderr), so when ``folder``'s filesystem has (almost) no space left that
    is said first: it is the cause the user can act on.
    """
    if isinstance(error, OSError) and error.errno is not None:
        reason = os.strerror(error.errno).lower()
    else:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # ITK ends its exception text with "Reason: <strerror>" where it has one.
        reason = (lines[-1] if lines else type(error).__name__).removeprefix("Reason: ")[:200]
    if folder is not None and "no space left" not in reason.lower():
        with contextlib.suppress(OSError):
            fs = os.statvfs(folder)
            if fs.f_bavail * fs.f_frsize < (1 << 20):
                reason = f"{os.strerror(errno.ENOSPC).lower()} ({reason})"
    return reason


@contextlib.contextmanager
def checked_write(path: str | os.PathLike, what: str = "file",
                  library_errors: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """:func:`atomic_path` that also makes sure the bytes are on the disk before the rename.

    The temporary is fsynced before it takes the final name. Any ``OSError`` (or one of
    ``library_errors``, the types a writing library raises for an I/O failure: torch and
    SimpleITK raise ``RuntimeError``) becomes one :class:`MedvolError` naming ``what`` and
    ``path``; neither the final name nor the temporary is left behind.

    Example:
        >>> with checked_write("run/config.yaml", "config") as tmp:   # doctest: +SKIP
        ...     tmp.write_text(text, encoding="utf-8")
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            yield tmp
            fsync_file(tmp)
    except (OSError, *library_errors) as error:
        raise MedvolError(f"cannot write {what} {path}: {write_failure(error, path.parent)}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size_bytes(text: str) -> int:
    """Parse a memory size such as ``"12GB"``, ``"11.5GiB"`` or ``"4096MB"`` into bytes.

    Raises:
        MedvolError: if the text is not a positive size with a known unit.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise MedvolError(f"invalid memory size {text!r}: expected e.g. 12GB, 11GiB or 4096MB")
    return int(float(match.group(1)) * _UNITS[unit])


def console_safe() -> None:
    """Keep printing when the terminal's encoding cannot show medvol's text (``³``, ``×``).

    Under an ASCII locale (``LC_ALL=C`` with ``PYTHONUTF8=0``) a ``print`` of a table would
    raise ``UnicodeEncodeError`` half-way through a report; such characters are escaped instead.
    """
    import sys

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "³×".encode(encoding)
        except (UnicodeEncodeError, LookupError):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="backslashreplace")


#: Optional packages by import name -> (what pip installs, the medvol extra that brings it).
#: The core needs only torch, triton, numpy and pyyaml; everything here is imported lazily.
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "napari": ("napari", "viewer"), "qtpy": ("PyQt5", "viewer"), "PyQt5": ("PyQt5", "viewer"),
    "magicgui": ("napari", "viewer"), "imageio": ("napari", "viewer"), "vispy": ("napari", "viewer"),
    "SimpleITK": ("SimpleITK", "itk"), "nibabel": ("nibabel", "itk"), "itk": ("itk", "itk"),
    "monai": ("monai", "itk"),
    "tensorboard": ("tensorboard", "log"), "tqdm": ("tqdm", "log"),
    "matplotlib": ("matplotlib", "plot"),
    "scipy": ("scipy", "eval"),  # measuring phantom factors (medvol evaluate --metrics factors)
    "PIL": ("matplotlib", "plot"),  # Pillow comes with matplotlib
    "optuna": ("optuna", "sweep"), "sqlalchemy": ("SQLAlchemy", "sweep"), "psycopg": ("psycopg", "sweep"),
    "optuna_dashboard": ("optuna-dashboard", "dashboard"),
    "umap": ("umap-learn", "umap"),
    "pydicom": ("pydicom", "images"),
    "torchio": ("torchio", "torchio"), "torchvision": ("torchvision", "eval"),
}


def missing_package(error: ModuleNotFoundError) -> str | None:
    """The optional package (an :data:`OPTIONAL_PACKAGES` key) whose absence ``error`` reports.

    Reads ``error.name``, or the message where the error was re-raised without it (a DataLoader
    worker's error arrives in the main process as ``ModuleNotFoundError("Caught ... No module
    named 'SimpleITK' ...")``). None for a module outside the table: that is a bug, not a
    missing extra.
    """
    names = [error.name] if getattr(error, "name", None) else re.findall(r"No module named '([^']+)'", str(error))
    for name in names:
        top = name.partition(".")[0]
        if top in OPTIONAL_PACKAGES:
            return top
    return None


def missing_extra(package: str, feature: str | None = None) -> MedvolError:
    """The one-line error for the absent :data:`OPTIONAL_PACKAGES` key ``package``:
    ``"<feature> needs napari: pip install 'medvol[viewer]'"`` (without a feature: ``"napari is
    not installed: ..."``)."""
    distribution, extra = OPTIONAL_PACKAGES[package]
    what = f"{feature} needs {distribution}" if feature else f"{distribution} is not installed"
    return MedvolError(f"{what}: pip install 'medvol[{extra}]'")


def optional_import(name: str, feature: str):
    """Import the optional module ``name`` or raise a one-line :class:`MedvolError` naming its extra.

    Args:
        name: a module whose top-level package is a key of :data:`OPTIONAL_PACKAGES`.
        feature: what needs it, for the message (``"the viewer"``, ``"reading NIfTI"``).

    A package that is installed but fails to import because one of *its* dependencies is missing
    raises the original error: that is a broken installation, not a missing extra.

    Example:
        >>> napari = optional_import("napari", "the viewer")   # doctest: +SKIP
        MedvolError: the viewer needs napari: pip install 'medvol[viewer]'
    """
    import importlib

    top = name.partition(".")[0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != top:
            raise
        raise missing_extra(top, feature) from None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX, as oneDNN sees it).

    Without it, bf16 autocast on the CPU is emulated and slower than fp32 (docs/performance.md).
    """
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_has_native_bf16(device) -> bool:
    """Whether ``device`` (a ``torch.device`` or its name) computes bf16 natively.

    CUDA: compute capability 8.0 or newer (``is_bf16_supported`` without emulation: on older GPUs
    bf16 is emulated and slower than fp32). CPU: :func:`cpu_has_native_bf16`.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_amp(amp: str, device) -> tuple[str, str]:
    """``(precision, why)``: what ``train.amp`` means on ``device``.

    ``"auto"`` becomes ``"bf16"`` where the device computes bf16 natively and ``"none"`` (fp32)
    elsewhere, so that the optimized mode is never slower than fp32 for the sake of a precision
    the hardware only emulates (measured in docs/performance.md); any other value is kept.
    """
    if amp != "auto":
        return amp, "set explicitly"
    import torch

    device = torch.device(device)
    if device_has_native_bf16(device):
        return "bf16", f"{device.type} has native bf16"
    what = (f"CPU capability {torch.backends.cpu.get_cpu_capability()}" if device.type == "cpu"
            else f"{device.type} device")
    return "none", f"no native bf16 ({what}), fp32"


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for reports that name the device."""
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    """Physical cores of this machine from /proc/cpuinfo (Linux), or None where it does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    cores = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores) or None


#: The most threads medvol picks by itself: the small models it trains on CPUs gain little beyond
#: four threads, and every thread more is a core taken from the other jobs of a shared machine.
MAX_DEFAULT_THREADS = 4


def busy_cpus() -> float:
    """CPUs that other processes keep busy now: the runnable tasks of ``/proc/loadavg`` (a
    snapshot, ours not counted; the median of 5 readings 10 ms apart), or the 1-minute load average
    where that file is missing. A snapshot, unlike the load average, does not count a run that
    ended seconds ago, so commands run back to back on a quiet machine still get every core."""
    import statistics
    import time

    readings = []
    for _ in range(5):
        try:
            fields = Path("/proc/loadavg").read_text(encoding="ascii").split()
            readings.append(int(fields[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            break
        time.sleep(0.01)
    if readings:
        return float(max(0, statistics.median(readings)))
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def default_threads() -> int:
    """The torch CPU thread count medvol uses when ``--threads`` is not given.

    The CPUs this process may run on (``os.sched_getaffinity``, so a container's or ``taskset``'s
    limit counts), no more than the physical cores (a hyper-thread shares its core's vector
    units), less this process's share of the CPUs other processes keep busy (:func:`busy_cpus`,
    scaled by the fraction of the machine's CPUs it may use), at least 1 and at most
    :data:`MAX_DEFAULT_THREADS`. Why: torch's own default is every core, and its OpenMP threads
    wait for each other at the end of every parallel region, so one thread on a core that another
    process holds stalls all of them; on a loaded 2-core machine two threads made ``fastgan`` 10-15
    times slower than one (docs/performance.md, "Threads on a shared CPU").
    """
    machine = os.cpu_count() or 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = machine
    cores = physical_cores()
    if cores:
        cpus = min(cpus, cores)
    free = cpus - busy_cpus() * min(1.0, cpus / machine)
    return max(1, min(int(free), MAX_DEFAULT_THREADS))


def set_threads(threads: int | None) -> int:
    """Set torch's CPU thread count: ``threads``, or :func:`default_threads` for None; returns it.

    Every medvol command calls this once (``--threads``, :func:`add_threads_option`) and records
    the count it returns beside its results.

    Raises:
        MedvolError: ``threads`` below 1.
    """
    if threads is not None and threads < 1:
        raise MedvolError(f"--threads {threads}: expected at least 1")
    count = default_threads() if threads is None else int(threads)
    import torch

    torch.set_num_threads(count)
    return count


def torch_threads() -> int:
    """torch's CPU thread count now, as results record it (``"threads"``)."""
    import torch

    return torch.get_num_threads()


def add_threads_option(parser) -> None:
    """Add ``--threads N`` (dest ``threads``, None when not given) to an argparse parser."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: the free physical cores, at most "
                             f"{MAX_DEFAULT_THREADS}; on a busy machine 1 is often fastest)")


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str | None, what: str) -> str:
    """The file's sha256; a mismatch with ``expected`` is a one-line error naming the path."""
    digest = file_hash(path)
    if expected is not None and digest.lower() != expected.strip().lower():
        raise MedvolError(f"{what} weights {path}: sha256 {digest} does not match the expected "
                          f"{expected.strip().lower()}")
    return digest
