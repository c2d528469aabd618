"""Small shared helpers: atomic writes, checksums, byte sizes."""

from __future__ import annotations

import contextlib
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
