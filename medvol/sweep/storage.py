"""Where a sweep's study lives: an Optuna RDB storage, and the short lock that plans it.

The study is the sweep's record: every trial (one training run), its parameters, state, score
and intermediate scores. Two storages are supported:

* ``sqlite:///DIR/study.db`` (the default, in the sweep folder): one machine, nothing to set up;
  several worker processes on that machine share it.
* ``postgresql://user@host:port/db`` (any SQLAlchemy PostgreSQL URL): workers on several
  machines, each started with the same command.

Trials are *planned* (the study created, its identity checked, the drawn configurations
enqueued, stale trials failed and retried, a waiting trial popped) under :func:`planning_lock`,
held for milliseconds: Optuna has no atomic "enqueue this configuration unless it is there", so
two workers starting together would otherwise enqueue every run twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator

from medvol.errors import MedvolError

DB_NAME = "study.db"
#: Seconds a process waits for the SQLite file while another process writes it.
SQLITE_TIMEOUT = 120


def default_storage(out: str | os.PathLike) -> str:
    """The SQLite storage in the sweep folder ``out``."""
    return f"sqlite:///{Path(out).resolve() / DB_NAME}"


def _url(storage: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError:
        raise MedvolError(f"--storage {storage!r}: not a database URL (sqlite:///PATH or "
                          "postgresql://USER@HOST:PORT/DB)") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise MedvolError(f"--storage {storage}: an in-memory SQLite database cannot be shared by "
                              "workers; give a file (sqlite:///PATH)")
    elif backend != "postgresql":
        raise MedvolError(f"--storage {storage}: {backend} is not supported; use sqlite:///PATH (one "
                          "machine) or postgresql://... (several machines)")
    return url


def describe(storage: str) -> str:
    """The URL without its password, for messages and records."""
    return _url(storage).render_as_string(hide_password=True)


def open_storage(storage: str, heartbeat: int, on_stale: Callable | None):
    """An Optuna RDB storage for ``storage`` with heartbeats every ``heartbeat`` seconds.

    A trial whose worker stops sending heartbeats for two intervals is stale: the next worker
    that plans fails it and calls ``on_stale(study, frozen_trial)``.

    Raises:
        MedvolError: an unsupported URL, an unreachable server, a SQLite file in a missing folder.
    """
    import warnings

    import optuna
    from sqlalchemy.exc import OperationalError

    url = _url(storage)
    kwargs: dict = {}
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database).parent
        if not folder.is_dir():
            raise MedvolError(f"--storage {storage}: folder {folder} does not exist")
        kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    else:
        kwargs = {"pool_pre_ping": True}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                storage, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=on_stale)
        except (OperationalError, ImportError, ModuleNotFoundError) as error:
            first = str(getattr(error, "orig", None) or error).strip().splitlines()
            raise MedvolError(f"--storage {describe(storage)}: cannot open it ({first[0] if first else error})") from None


def _lock_key(study: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for the study name."""
    return int.from_bytes(hashlib.sha256(f"medvol sweep {study}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def planning_lock(storage: str, study: str) -> Iterator[None]:
    """Hold the study's planning lock (blocking) while the body plans trials.

    SQLite: an ``flock`` on ``<database>.plan.lock`` beside the file (a SQLite study is one
    machine's). PostgreSQL: a session advisory lock keyed by the study name, held on its own
    connection; the server drops it if the worker dies.
    """
    url = _url(storage)
    if url.get_backend_name() == "sqlite":
        import fcntl

        path = Path(url.database + ".plan.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                except OSError as error:  # EINTR from a signal handler that returned
                    if error.errno != errno.EINTR:
                        raise
            yield
        finally:
            os.close(fd)  # closing drops the flock
        return
    import sqlalchemy as sa

    engine = sa.create_engine(storage, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(study)})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(study)})
                conn.commit()
    finally:
        engine.dispose()
