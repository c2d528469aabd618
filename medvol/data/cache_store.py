"""The cache folder itself: its layout, manifest, lock and temporaries (:mod:`medvol.data.cache`).

What every step of a cache's flow shares: the names of its files, :func:`load_manifest` with the
checks that keep every name read from it inside the cache, the :class:`CacheLock` a writer holds,
:func:`clean_temporaries`, which undoes what a killed run left, and :func:`worker_init`, the set-up
of the worker processes of both builds (volumes, 2D images). The writer is
:mod:`medvol.data.cache`, the split and names of a new manifest :mod:`medvol.data.cache_split`, the
readers and the export :mod:`medvol.data.cache_read`.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from medvol.errors import MedvolError
from medvol.outputs import is_temp_name, plain_name, safe_name

MANIFEST = "manifest.json"
VOLUME_DIR = "volumes"
LOCK_NAME = ".medvol-cache.lock"
#: 2: entries carry the array's geometry (``origin``, ``direction``) and keep their fold as the cache grows.
#: 3: entries may carry a label map (``labels``); a reader of format 2 would delete those arrays as strays.
MANIFEST_FORMAT = 3
#: 4: a 2D image cache (``"dims": 2``, :mod:`medvol.data.image_cache`); the newest format read.
READ_FORMAT = 4
LABELS_SUFFIX = "_labels"
#: The end of a worker's pending array ``volumes/.<name>.tmp-pending.npy``: medvol's temporary
#: naming (:func:`medvol.outputs.is_temp_name`), so a killed run's pending arrays are cleaned.
PENDING = ".tmp-pending.npy"
#: The manifest a run is committing (``.manifest.tmp-<pid>.json``, a temporary name too).
MANIFEST_TMP = ".manifest.tmp-"
GEOMETRY_KEYS = ("spacing", "origin", "direction")


def load_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``cache_dir/manifest.json``.

    Raises:
        MedvolError: the folder or manifest is missing, unreadable or malformed (names the path).
    """
    path = Path(cache_dir) / MANIFEST
    if not Path(cache_dir).is_dir():
        raise MedvolError(f"{cache_dir}: no such cache folder (build one with `medvol preprocess`)")
    if not path.is_file():
        raise MedvolError(f"{path}: missing; {cache_dir} is not a medvol cache (run `medvol preprocess`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable manifest ({str(error).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("volumes"), list) \
            or not isinstance(manifest.get("params"), dict):
        raise MedvolError(f"{path}: not a medvol cache manifest")
    if isinstance(manifest.get("format"), int) and manifest["format"] > READ_FORMAT:
        raise MedvolError(f"{path}: manifest format {manifest['format']} is newer than this medvol reads "
                          f"({READ_FORMAT}); upgrade medvol")
    for number, entry in enumerate(manifest["volumes"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "file", "source")):
            raise MedvolError(f"{path}: volume entry {number} is malformed (needs name, file and source)")
        _check_entry_names(path, number, entry)
    return manifest


def _check_entry_names(path: Path, number: int, entry: dict[str, Any]) -> None:
    """Refuse an entry whose name is no plain file name, or whose files are not named after it.

    Writers build paths from the name (``volumes/<name>.npy``, ``DIR/<name>.nii.gz``), readers
    from ``file``: both must stay inside their folder, and say the same.
    """
    name = plain_name(path.parent / VOLUME_DIR, entry["name"], f"{path}: volume entry {number} name")
    for key, expected in (("file", f"{VOLUME_DIR}/{name}.npy"), ("labels", f"{VOLUME_DIR}/{name}{LABELS_SUFFIX}.npy")):
        value = entry.get(key)
        if isinstance(value, str) and value != expected:
            raise MedvolError(f"{path}: volume entry {number} ({name!r}): {key} {value!r} is not {expected!r}; "
                              "refusing a file that is not named after its entry")


def entry_file(cache_dir: str | os.PathLike, entry: dict[str, Any], key: str = "file") -> Path:
    """The array ``entry[key]`` (``file`` or ``labels``) of a checked entry (:func:`load_manifest`).

    Raises:
        MedvolError: the file is a link leading out of the cache's ``volumes/`` folder.
    """
    return safe_name(Path(cache_dir) / VOLUME_DIR, entry[key].rpartition("/")[2],
                     f"{Path(cache_dir) / MANIFEST}: {key} of volume {entry['name']!r}:")


class CacheLock:
    """Exclusive lock of a cache folder: ``fcntl.flock`` on ``.medvol-cache.lock``.

    The lock file stays (it is hidden); only the lock is released. The kernel releases it when the
    holder dies, so a killed run never leaves the cache locked.

    Args:
        cache_dir: an existing cache folder.
        wait: seconds to wait for another holder (None: as long as it takes; 0: refuse at once).
        on_wait: called once with a one-line message when the lock is busy and we wait.

    Raises:
        MedvolError: the lock stayed busy for ``wait`` seconds, or cannot be taken (names the file).
    """

    def __init__(self, cache_dir: str | os.PathLike, *, wait: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        import fcntl

        self.path = Path(cache_dir) / LOCK_NAME
        deadline = None if wait is None else time.monotonic() + max(0.0, float(wait))
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise MedvolError(f"{self.path}: cannot create the cache lock ({_reason(error)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise MedvolError(f"{self.path}: cannot lock the cache ({_reason(error)})") from None
            holder = self._holder()
            if deadline is not None and time.monotonic() >= deadline:
                advice = "wait for it or use another --dst" if not wait else \
                    f"still locked after {wait:g} s (--lock-wait); try again later"
                raise MedvolError(f"cache {cache_dir} is in use by {holder}; {advice}")
            if not told and on_wait is not None:
                on_wait(f"cache {cache_dir} is in use by {holder}; waiting for it to finish")
                told = True
            time.sleep(0.1)
        self.fd: int | None = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _holder(self) -> str:
        try:
            pid = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        return f"another medvol process (pid {pid})" if pid.isdigit() else "another medvol process"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "CacheLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _reason(error: OSError) -> str:
    return os.strerror(error.errno).lower() if error.errno else str(error)


def clean_temporaries(cache_dir: str | os.PathLike) -> list[Path]:
    """Delete what killed runs left in ``cache_dir``, and nothing else.

    Removed: files of medvol's temporary naming (:func:`medvol.outputs.is_temp_name`: workers'
    pending arrays, atomic-write temporaries, the manifest being committed) in the cache and its
    ``volumes/``; and the arrays a run killed while committing had already renamed into place:
    those its uncommitted manifest (``.manifest.tmp-*.json``) lists and the manifest does not (a
    run names new volumes so that they never take the name of a file already there). An array the
    manifest does not list is otherwise kept: it may be the user's.

    Only call this while holding the :class:`CacheLock`: a live run's temporaries look the same.
    """
    cache_dir = Path(cache_dir)
    try:
        listed = _listed_files(load_manifest(cache_dir)) if (cache_dir / MANIFEST).is_file() else set()
    except MedvolError:
        listed = None
    removed = []
    for folder in (cache_dir, cache_dir / VOLUME_DIR):
        if folder.is_dir():  # a listed array is never a temporary, whatever its name (".x.tmp-1" as a source)
            removed += [p for p in sorted(folder.iterdir()) if is_temp_name(p.name) and (p.is_symlink() or p.is_file())
                        and (folder != cache_dir / VOLUME_DIR or f"{VOLUME_DIR}/{p.name}" not in (listed or ()))]
    journals = [p for p in removed if p.parent == cache_dir and p.name.startswith(MANIFEST_TMP)]
    if journals and (cache_dir / MANIFEST).is_file():
        for journal in journals if listed is not None else []:
            removed += [p for p in _committed_arrays(cache_dir, journal)
                        if f"{VOLUME_DIR}/{p.name}" not in listed and p not in removed]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _committed_arrays(cache_dir: Path, journal: Path) -> list[Path]:
    """The arrays an uncommitted manifest lists that exist (checked as :func:`load_manifest` does)."""
    try:
        manifest = json.loads(journal.read_text(encoding="utf-8"))
        entries = manifest["volumes"]
        for number, entry in enumerate(entries):
            _check_entry_names(journal, number, entry)
        return [p for entry in entries for key in ("file", "labels") if isinstance(entry.get(key), str)
                for p in [entry_file(cache_dir, entry, key)] if p.is_file() or p.is_symlink()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, MedvolError):
        return []  # a journal cut short by the kill: nothing was renamed after it was written


def _listed_files(manifest: dict[str, Any]) -> set[str]:
    """Every array file a manifest lists: volumes and label maps."""
    return {entry[key] for entry in manifest["volumes"] for key in ("file", "labels")
            if isinstance(entry.get(key), str)}


def _old_cache(dst: Path, overwrite: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The cache's manifest (None for a new cache), or with ``overwrite`` a damaged one's description."""
    arrays = sorted((dst / VOLUME_DIR).glob("[!.]*.npy"))
    if not (dst / MANIFEST).exists():
        if not arrays:
            return None, None
        if overwrite:
            return None, f"{len(arrays)} array(s) without a manifest"
        raise MedvolError(f"{dst / MANIFEST}: missing, but {dst / VOLUME_DIR} holds {len(arrays)} array(s); "
                          "not a complete medvol cache: use another --dst, or --overwrite to rebuild it")
    try:
        return load_manifest(dst), None
    except MedvolError as error:
        if overwrite:
            return None, f"a damaged cache ({error}) with {len(arrays)} array(s)"
        raise MedvolError(f"{error}; repair it, use another --dst, or --overwrite to rebuild the cache") from None


def _manifest_identity(dst: Path) -> tuple[int, int] | None:
    """What tells a replaced manifest from the old one (it is renamed into place: a new inode)."""
    try:
        stat = (dst / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def worker_init() -> None:
    """Set up a worker process of a cache build (:mod:`medvol.data.cache`, :mod:`medvol.data.image_cache`)."""
    # Ctrl-C reaches the whole process group: only the main process answers it (it cancels the
    # pool and cleans up), so a worker never prints a traceback of its own.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One thread per worker: the processes already use every core.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
