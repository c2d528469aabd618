"""One run per folder: the run-folder lock and the check that a new run does not land on an old one.

A run folder holds one run's ``config.yaml`` and ``checkpoints/``. Training a second run into it
would interleave two runs' checkpoints (and pruning would delete the new ones first), so a new run
is refused where a run already exists; ``--resume auto`` continues it and ``--out`` starts
elsewhere. Two processes training into one folder at once are kept apart by an exclusive
``fcntl.flock`` on ``.medvol-run.lock``: the kernel drops the lock when its holder dies, so a killed
run never leaves the folder locked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from medvol.errors import MedvolError
from medvol.utils import write_failure

LOCK_NAME = ".medvol-run.lock"


class RunFolderLock:
    """Exclusive, non-blocking lock of a run folder (created if missing).

    Args:
        run_dir: the run folder.
        lock_name: the lock file's name (``medvol sweep`` locks its folder with its own).
        holder: what holds such a lock, for the refusal message.

    Raises:
        MedvolError: another process holds the lock, or the folder cannot be created.
    """

    def __init__(self, run_dir: str | os.PathLike, lock_name: str = LOCK_NAME, holder: str = "medvol train"):
        import fcntl

        self.run_dir = Path(run_dir)
        self.created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MedvolError(f"run folder {self.run_dir}: cannot create it ({os.strerror(error.errno).lower()})") from None
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

    def release(self, remove_empty: bool = False) -> None:
        """Unlock; with ``remove_empty``, delete a folder this lock created that stayed empty."""
        if self.fd is None:
            return
        if remove_empty and self.created and [p.name for p in self.run_dir.iterdir()] == [self.path.name]:
            self.path.unlink(missing_ok=True)
            self.run_dir.rmdir()
        os.close(self.fd)
        self.fd = None


def existing_run(run_dir: str | os.PathLike) -> str | None:
    """What in ``run_dir`` shows that a run lives there (``None`` for a new or empty folder)."""
    from medvol.train.checkpoint import list_checkpoints

    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir / "checkpoints", require_checksum=False)
    if found:
        return f"checkpoints up to iteration {found[-1][0]}"
    if (run_dir / "config.yaml").is_file():
        return "a config.yaml"
    return None


def refuse_second_run(run_dir: str | os.PathLike, resume_from: Path | None) -> None:
    """Refuse to start a new run (or import another folder's checkpoint) where a run exists.

    Args:
        run_dir: the run folder.
        resume_from: the explicit checkpoint being resumed (``None`` for a fresh start); one
            inside ``run_dir`` continues that run and is allowed.

    Raises:
        MedvolError: naming ``--resume auto`` and ``--out`` as the ways on.
    """
    run_dir = Path(run_dir)
    held = existing_run(run_dir)
    if held is None:
        return
    if resume_from is not None and Path(resume_from).resolve().parent == (run_dir / "checkpoints").resolve():
        return
    what = "a new run" if resume_from is None else f"a run from {resume_from}"
    raise MedvolError(f"run folder {run_dir} already holds a run ({held}); refusing to mix {what} into it: "
                      f"continue it with --resume auto, or train into another folder with --out")
