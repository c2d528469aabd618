"""Stopping a run on Ctrl-C or a scheduler's SIGTERM without losing the iterations since the last
checkpoint.

While training, SIGINT and SIGTERM only set a flag; the trainer looks at it between two steps,
where the state is consistent, writes a checkpoint there and raises :class:`TrainingInterrupted`
(exit status 130 for SIGINT, 143 for SIGTERM, as a shell reports a process killed by them).
Further signals during that save are noted and ignored, so a second Ctrl-C cannot cut the
checkpoint short (it is written atomically in any case).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after checkpointing; ``exit_code`` is 128 + the signal number.

    Args:
        signum: the signal received.
        iteration: iterations completed.
        checkpoint: the checkpoint holding them (``None`` if none could be written).
        advice: how to continue, as the command that ran the training says it (a study that
            trains resumes by being run again, not with ``--resume``).
    """

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None,
                 advice: str = "continue with --resume auto"):
        self.signum = int(signum)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.exit_code = 128 + self.signum
        kept = f"saved {checkpoint}" if checkpoint is not None else "no checkpoint written"
        super().__init__(f"interrupted by {signal.Signals(self.signum).name} at iteration {iteration}; "
                         f"{kept}; {advice}")


class StopSignals:
    """Context manager: SIGINT/SIGTERM set :attr:`signum` instead of raising, until exit.

    Outside the main thread (where Python cannot install handlers) it does nothing, and a signal
    keeps its usual effect.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        # os.write, not print: a handler may run while the main code is inside a print.
        note = ("stopping at the end of this iteration and saving a checkpoint"
                if first else "already stopping: the checkpoint is being saved")
        os.write(2, f"medvol train: {signal.Signals(signum).name} received, {note}\n".encode())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
