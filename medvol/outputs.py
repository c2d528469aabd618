"""Where medvol writes: names that stay inside their folder, and output folders medvol owns.

Two rules every writing command follows (README, "Error contract"):

* **Names read from files stay inside their folder.** A name taken from a manifest, a key, a
  sweep record or a sidecar goes through :func:`safe_name` before it is joined to a folder: a
  plain file name (no separator, not ``.``/``..``, not absolute), whose resolved path is inside
  the folder (a symlink pointing out is refused).
* **Nothing is overwritten without ``--overwrite``.** An output folder is *claimed* with
  :func:`owned_output`. medvol keeps a marker file (``.medvol-output.json``) that records which
  job wrote the folder and every file it wrote there. A folder that holds anything medvol did not
  write for this same job is refused unless ``overwrite``; ``overwrite`` removes only the files
  the marker lists (never a file medvol did not write, never an input), and a file medvol did not
  write is never replaced, with or without the flag.

  A job that hands a whole sub-folder to other jobs (a study: each generation's training run,
  cache and samples) records it as a *folder entry*, ``"name/"`` (:meth:`OwnedOutput.path` with a
  trailing slash): medvol created the folder for this job, so the same job continues in it
  whatever it holds. The files the other jobs wrote there are recorded once each step is done
  (:meth:`OwnedOutput.record_tree`); ``overwrite`` removes those, then the folders left empty.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from medvol.errors import MedvolError

MARKER = ".medvol-output.json"
LOCK = ".medvol-output.lock"
#: Names medvol's own atomic writes use for temporaries (``utils._temp_sibling``): ``.<stem>.tmp-<random>``.
TEMP_NAME = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]+")
_FORMAT = 1


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of medvol's own temporary names (left by an interrupted write)."""
    return bool(TEMP_NAME.match(name))


def safe_name(folder: str | os.PathLike, name: Any, what: str = "name") -> Path:
    """``folder / name`` for a ``name`` read from a file, refused unless it stays inside ``folder``.

    Args:
        folder: the folder the name belongs to.
        name: the name as read (any JSON value; only a plain string file name passes).
        what: what the name is, for the message (``"manifest entry"``, ``"sidecar 'volume'"``).

    Returns:
        The joined path (not resolved).

    Raises:
        MedvolError: one line naming ``what`` and the name: not a string, empty, ``.``/``..``,
            absolute, holding a path separator or NUL, or (existing or not) resolving outside
            ``folder`` through a symlink.

    Example:
        >>> safe_name("/cache/volumes", "vol_0001.npy", "manifest entry")
        PosixPath('/cache/volumes/vol_0001.npy')
    """
    folder = Path(folder)
    bad = _not_plain(name)
    if bad is None:
        path = folder / name
        base = folder.resolve()
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            bad = "a link that cannot be resolved"
        else:
            if resolved.parent != base and base not in resolved.parents:
                bad = "a link pointing outside its folder"
    if bad is not None:
        raise MedvolError(f"{what} {name!r} in {folder}: {bad}; refusing to read or write outside the folder")
    return path


def _not_plain(name: Any) -> str | None:
    """Why ``name`` is not a plain file name, or None."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if name in (".", "..") or "\x00" in name or "/" in name or "\\" in name or os.sep in name:
        return "not a plain file name"
    if os.path.isabs(name):
        return "an absolute path"
    return None


def plain_name(folder: str | os.PathLike, name: Any, what: str = "name") -> str:
    """``name`` if it is a plain file name, without looking at the disk (:func:`safe_name`'s string rules).

    For checking every name of a file when it is read (cheap); :func:`safe_name` then checks the
    one path that is opened or written, symlinks included.

    Raises:
        MedvolError: as :func:`safe_name`, for the rules that need no disk access.
    """
    bad = _not_plain(name)
    if bad is not None:
        raise MedvolError(f"{what} {name!r} in {folder}: {bad}; refusing to read or write outside the folder")
    return name


def safe_relpath(folder: str | os.PathLike, rel: Any, what: str = "name") -> Path:
    """Like :func:`safe_name` for a relative path of plain names (``"iter_0000100/scores.json"``)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        raise MedvolError(f"{what} {rel!r} in {folder}: not a relative path; refusing to read or write outside the folder")
    path = Path(folder)
    for part in rel.split("/"):
        path = safe_name(path, part, what)
    safe_name(folder, Path(rel).parts[0], what)
    base = Path(folder).resolve()
    if base not in path.resolve().parents:
        raise MedvolError(f"{what} {rel!r} in {folder}: resolves outside the folder; refusing to read or write it")
    return path


def _read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable medvol output marker ({error}); remove it only if you know "
                          "what wrote this folder") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list) or "job" not in marker:
        raise MedvolError(f"{path}: not a medvol output marker (no job or files)")
    return marker


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _foreign(folder: Path, owned: set[str]) -> list[str]:
    """Files (relative paths) under ``folder`` that medvol did not write: not owned, not its own."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        # A folder entry's content is the job's (module docstring): not walked.
        dirs[:] = [d for d in dirs if (rel_root / d).as_posix() + "/" not in owned]
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (rel_root / name).as_posix()
            if rel in (MARKER, LOCK) or rel in owned or is_temp_name(name):
                continue
            found.append(rel)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    return sorted(found)


def _present(folder: Path, rel: Any) -> bool:
    try:
        path = safe_relpath(folder, rel.rstrip("/") if isinstance(rel, str) else rel, f"{MARKER} entry")
    except MedvolError:
        return False
    return path.exists() or path.is_symlink()


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"{shown} and {len(names) - 3} more" if len(names) > 3 else shown


class FolderLock:
    """Exclusive, non-blocking lock of a folder (created if missing): a run folder, a study, an output.

    Args:
        run_dir: the run folder.
        lock_name: the lock file's name.
        holder: what holds such a lock, for the refusal message.

    Raises:
        MedvolError: another process holds the lock, or the folder cannot be created.
    """

    def __init__(self, run_dir: str | os.PathLike, lock_name: str = ".medvol-run.lock", holder: str = "medvol train"):
        import fcntl

        from medvol.utils import write_failure

        self.run_dir = Path(run_dir)
        self.created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            where = "run folder" if holder == "medvol train" else "folder"
            raise MedvolError(f"{where} {self.run_dir}: cannot create it ({os.strerror(error.errno).lower()})") from None
        self.path = self.run_dir / lock_name
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise MedvolError(f"{'run folder' if holder == 'medvol train' else 'folder'} "
                                      f"{self.run_dir} is in use by another {holder} "
                                      f"(locked: {self.path.name}); wait for it or use --out") from None
                raise
            # A holder that removed the lock file before we locked it leaves us an orphan inode.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                break
            os.close(fd)
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}\n".encode())
        except OSError as error:  # a full disk
            self.release(remove_empty=True)
            raise MedvolError(f"run folder {self.run_dir}: cannot write {lock_name} "
                              f"({write_failure(error, self.run_dir)})") from None

    def release(self, remove_empty: bool = False, remove_lock: bool = False) -> None:
        """Unlock; with ``remove_empty``, delete a folder this lock created that stayed empty; with
        ``remove_lock``, delete the lock file (while still held: a waiter that opened it notices the
        orphan and retries), so that a refused job leaves nothing in a folder that already existed."""
        if self.fd is None:
            return
        if remove_empty and self.created and [p.name for p in self.run_dir.iterdir()] == [self.path.name]:
            self.path.unlink(missing_ok=True)
            self.run_dir.rmdir()
        elif remove_lock:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


class OwnedOutput:
    """An output folder claimed for one job; see :func:`owned_output`.

    Attributes:
        folder: the folder.
        job: the job's kind (``"generate"``, ``"evaluate"``, ...).
        continued: True when the folder already held this same job's outputs.
        removed: files an ``overwrite`` removed (relative paths).
    """

    def __init__(self, folder: Path, job: str, identity: Any, files: list[str], continued: bool,
                 removed: list[str]):
        self.folder = folder
        self.job = job
        self.identity = identity
        self.files = list(files)
        self.continued = continued
        self.removed = removed

    def _save(self) -> None:
        from medvol.utils import checked_write

        body = {"format": _FORMAT, "job": self.job, "identity": self.identity, "files": sorted(set(self.files))}
        with checked_write(self.folder / MARKER, "output marker") as tmp:
            tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")

    def path(self, rel: str) -> Path:
        """The path of output ``rel`` (a name or ``a/b`` relative path), recorded as medvol's.

        A ``rel`` ending in ``/`` is a folder entry (module docstring): the folder is created and
        everything later written in it is this job's.

        Raises:
            MedvolError: ``rel`` leaves the folder, or names a file (or folder) medvol did not write.
        """
        path = safe_relpath(self.folder, rel.rstrip("/") if isinstance(rel, str) else rel, "output")
        if rel not in self.files:
            if rel.endswith("/"):
                if path.exists() or path.is_symlink():
                    raise MedvolError(f"{path}: exists and was not made by medvol for this job; "
                                      "refusing to write into it (move it away or choose another output)")
                self.files.append(rel)
                self._save()  # first: a folder made and not yet recorded would be refused next time
                path.mkdir(parents=True, exist_ok=True)
                return path
            if path.exists() or path.is_symlink():
                raise MedvolError(f"{path}: exists and was not written by medvol for this job; "
                                  "refusing to replace it (move it away or choose another output)")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files.append(rel)
            self._save()
        return path

    def paths(self, rels: Iterable[str]) -> list[Path]:
        """:meth:`path` for many outputs at once: one marker write; parents are created.

        Raises:
            MedvolError: a name leaves the folder, or names a file medvol did not write (then
                none is recorded).
        """
        rels = list(rels)
        paths = [safe_relpath(self.folder, rel, "output") for rel in rels]
        for rel, path in zip(rels, paths):
            if rel not in self.files and (path.exists() or path.is_symlink()):
                raise MedvolError(f"{path}: exists and was not written by medvol for this job; "
                                  "refusing to replace it (move it away or choose another output)")
        for rel, path in zip(rels, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
        new = [rel for rel in dict.fromkeys(rels) if rel not in self.files]
        if new:
            self.files.extend(new)
            self._save()
        return paths

    def record_tree(self, rel: str) -> int:
        """Record every file now under folder entry ``rel`` (``"name/"``) as this job's.

        Other jobs write inside a folder entry (a study's training runs, caches, samples); what
        they wrote is recorded here once a step is done, so that an ``overwrite`` removes exactly
        those files, and keeps a file someone else put there (its folder then stays, and a new
        job refuses to write into it). Returns how many files were added.
        """
        if rel not in self.files or not rel.endswith("/"):
            raise MedvolError(f"{rel!r}: not a folder entry of {self.folder}")
        base = self.folder / rel.rstrip("/")
        known = set(self.files)
        new = []
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
            for name in files:
                if name == LOCK or is_temp_name(name):
                    continue
                path = (Path(root) / name).relative_to(self.folder).as_posix()
                if path not in known:
                    new.append(path)
        if new:
            self.files.extend(new)
            self._save()
        return len(new)

    def owns(self, rel: str) -> bool:
        """Whether ``rel`` is recorded as written by medvol for this job."""
        return rel in self.files

    def check(self, *rels: str) -> None:
        """Refuse now, before any work, what :meth:`path` would refuse later (records nothing).

        Raises:
            MedvolError: an output leaves the folder, or names a file medvol did not write.
        """
        for rel in rels:
            path = safe_relpath(self.folder, rel.rstrip("/") if isinstance(rel, str) else rel, "output")
            if rel not in self.files and (path.exists() or path.is_symlink()):
                raise MedvolError(f"{path}: exists and was not written by medvol for this job; "
                                  "refusing to replace it (move it away or choose another output)")

    def write_all(self, contents: dict[str, bytes | str], what: str = "output") -> list[Path]:
        """Write several outputs as one: each to a temporary name first, then all renamed.

        A failed write (a full disk) leaves none of them under its final name, and no temporary.

        Args:
            contents: output name (as :meth:`path`) -> its bytes (``str`` is written as UTF-8).
            what: what the outputs are, for the message.

        Returns:
            The final paths, in the order given.

        Raises:
            MedvolError: one line naming the file that could not be written and why.
        """
        from medvol.utils import _temp_sibling, fsync_file, write_failure

        paths = [self.path(rel) for rel in contents]
        staged: list[tuple[Path, Path]] = []
        try:
            for path, body in zip(paths, contents.values()):
                tmp = _temp_sibling(path, directory=False)
                staged.append((tmp, path))
                data = body.encode("utf-8") if isinstance(body, str) else body
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    fsync_file(tmp)
                except OSError as error:
                    raise MedvolError(f"cannot write {what} {path}: {write_failure(error, path.parent)}") from None
            for tmp, path in staged:
                os.replace(tmp, path)
        finally:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return paths


def claim_output(folder: str | os.PathLike, job: str, identity: Any = None, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), option: str = "--out",
                 outputs: Iterable[str] = ()) -> OwnedOutput:
    """Claim ``folder`` for one job's outputs (without the lock; see :func:`owned_output`).

    Args:
        folder: the output folder; created (with parents) when missing.
        job: the job's kind, recorded in the marker.
        identity: what makes two runs "the same job" (a JSON-able value: the command's inputs and
            settings). A folder holding the same job's outputs is continued.
        overwrite: accept a folder with other contents: the files another medvol job wrote there
            are removed, files medvol did not write are kept (and never replaced).
        inputs: the job's inputs; never removed, whatever the marker says.
        option: the option that named the folder, for messages.
        outputs: the names this job will write, when known: one that names a file medvol did
            not write is refused here, before ``overwrite`` removes anything.

    Raises:
        MedvolError: the folder is a file; holds another job's outputs or files medvol did not
            write (without ``overwrite``); one of ``outputs`` is a file medvol did not write;
            its marker is damaged.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MedvolError(f"{option} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"{option} {folder}: cannot create it ({os.strerror(error.errno or 0).lower()})") from None
    identity = _json_roundtrip(identity)
    marker, owned, same, kept = _assess(folder, job, identity, overwrite, inputs, option, outputs)
    removed: list[str] = []
    if marker is not None and not same and owned and not _holds_inputs(folder, owned, kept):
        for rel in sorted(owned):
            path = folder / rel.rstrip("/")  # present, so safe (_present)
            if rel.endswith("/"):
                continue  # folder entries go below, once the files recorded in them are gone
            if path.resolve() in kept or not (path.is_file() or path.is_symlink()):
                continue
            path.unlink()
            removed.append(rel)
            with contextlib.suppress(OSError):  # an emptied sub-folder goes too
                parent = path.parent
                while parent != folder and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent
        for rel in sorted((r for r in owned if r.endswith("/")), key=len, reverse=True):
            if _remove_empty_tree(folder / rel.rstrip("/")):
                removed.append(rel)
        owned = set()
    files = sorted(owned) if same else []
    out = OwnedOutput(folder, job, identity, files, continued=same, removed=removed)
    out._save()
    return out


def _remove_empty_tree(path: Path) -> bool:
    """Remove the folders under ``path`` (and it) that hold no file: what :meth:`OwnedOutput.record_tree`
    did not record stays, with the folders that lead to it. Whether ``path`` went."""
    if path.is_symlink():
        return False
    if not path.exists():
        return True  # its last recorded file took it (an emptied sub-folder goes with its file)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / d).rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
    return not path.exists()


def check_output(folder: str | os.PathLike, job: str, identity: Any = None, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), option: str = "--out",
                 outputs: Iterable[str] = ()) -> list[str]:
    """What :func:`claim_output` would refuse, refused now, creating, removing and recording nothing.

    For a job that computes long and writes at the end: its output is checked before the work
    and claimed (:func:`owned_output`) only to write, so a failed job leaves no folder behind.

    Returns:
        The files under ``folder`` that medvol did not write (relative paths): kept by an
        ``overwrite``, and never replaced (empty when the folder is missing).

    Raises:
        MedvolError: as :func:`claim_output`.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MedvolError(f"{option} {folder}: exists and is not a folder")
    if folder.is_dir():
        _, owned, _, _ = _assess(folder, job, _json_roundtrip(identity), overwrite, inputs, option, outputs)
        return _foreign(folder, owned)
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedvolError(f"{option} {folder}: cannot create it ({parent} is not a folder)")
    return []


def _holds_inputs(folder: Path, owned: set[str], kept: set[Path]) -> bool:
    """Whether another job's outputs include one of this job's inputs: then they are all kept (an
    input's sidecars, factor files and marks belong with it), and ``overwrite`` removes none."""
    for rel in owned:
        path = (folder / rel.rstrip("/")).resolve()
        if path in kept or (rel.endswith("/") and any(path in k.parents for k in kept)):
            return True
    return False


def _assess(folder: Path, job: str, identity: Any, overwrite: bool, inputs, option: str, outputs):
    """The refusals of :func:`claim_output` for an existing ``folder``.

    Returns:
        ``(marker, owned, same, kept)``: the marker (or None), the files it lists that are there,
        whether it is this same job, and the resolved inputs (never removed).
    """
    marker = _read_marker(folder)
    # Files a job recorded but never wrote (it failed first) are no outputs to keep or to remove.
    owned = {rel for rel in marker["files"] if _present(folder, rel)} if marker else set()
    same = marker is not None and marker.get("job") == job and _json_roundtrip(marker.get("identity")) == identity
    foreign = _foreign(folder, owned)
    kept = {Path(p).resolve() for p in inputs}
    if (marker is not None and not same and owned) or foreign:
        if not overwrite:
            if foreign:
                raise MedvolError(f"{option} {folder}: holds files medvol did not write for this job "
                                  f"({_describe(foreign)}); use a new or empty folder, or --overwrite "
                                  "(which keeps them and never replaces them)")
            raise MedvolError(f"{option} {folder}: holds the outputs of another medvol {marker['job']} "
                              f"({len(owned)} files); use another folder, or --overwrite to remove them")
        # What will still be there once overwrite removed the other job's files: files medvol did
        # not write, and inputs. None of them may be one of this job's outputs.
        replaceable = {rel for rel in owned if same or (folder / rel).resolve() not in kept}
        if not same and _holds_inputs(folder, owned, kept):
            replaceable = set()
        OwnedOutput(folder, job, identity, sorted(replaceable), False, []).check(*outputs)
    return marker, owned, same, kept


@contextlib.contextmanager
def owned_output(folder: str | os.PathLike, job: str, identity: Any = None, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), option: str = "--out",
                 outputs: Iterable[str] = ()) -> Iterator[OwnedOutput]:
    """Claim ``folder`` (:func:`claim_output`) and hold it against a second run while in use.

    A second medvol process claiming the same folder meanwhile is refused (``fcntl`` lock on
    ``.medvol-output.lock``, dropped by the kernel if the holder dies).

    Example:
        >>> with owned_output("samples", "generate", {"checkpoint": "ckpt.pt", "n": 4}) as out:  # doctest: +SKIP
        ...     with checked_write(out.path("sample_0000.nii.gz")) as tmp: ...
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MedvolError(f"{option} {folder}: exists and is not a folder")
    created = not folder.exists()
    try:  # here, so that a failure names the option rather than a "run folder"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"{option} {folder}: cannot create it ({os.strerror(error.errno or 0).lower()})") from None
    lock = FolderLock(folder, lock_name=LOCK, holder=f"medvol {job}")
    claimed = None
    try:
        claimed = claim_output(folder, job, identity, overwrite=overwrite, inputs=inputs, option=option,
                               outputs=outputs)
        yield claimed
    except BaseException:
        # A job that failed before writing anything leaves no folder (or marker) it created.
        if created and (claimed is None or not any(_present(folder, rel) for rel in claimed.files)):
            with contextlib.suppress(OSError):
                (folder / MARKER).unlink()
        raise
    finally:
        # Unlinked while still held: a process waiting on the old inode sees it gone and retries.
        with contextlib.suppress(OSError):
            (folder / LOCK).unlink()
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
