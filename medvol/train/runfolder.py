"""One run per folder: the run-folder lock and the check that a new run does not land on an old one.

A run folder holds one run's ``config.yaml`` and ``checkpoints/``. Training a second run into it
would interleave two runs' checkpoints (and pruning would delete the new ones first), so a new run
is refused where a run already exists; ``--resume auto`` continues it and ``--out`` starts
elsewhere. Two processes training into one folder at once are kept apart by an exclusive
``fcntl.flock`` on ``.medvol-run.lock``: the kernel drops the lock when its holder dies, so a killed
run never leaves the folder locked.
"""

from __future__ import annotations

import os
from pathlib import Path

from medvol.errors import MedvolError
from medvol.outputs import FolderLock as RunFolderLock  # noqa: F401 (the run folder's lock)

LOCK_NAME = ".medvol-run.lock"


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
