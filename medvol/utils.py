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
