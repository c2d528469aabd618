"""Progress of a command's long steps: a tqdm bar on a terminal, one line per phase in a log.

A bar redrawn with carriage returns is unreadable in a log file or a CI job, and tqdm's own
``disable=None`` makes such runs silent instead: a user then sees nothing for minutes. So
:func:`track` draws a bar only when the stream is a terminal and otherwise writes one plain line
when the phase ends (``features inception2.5d real: 16 vol in 41.2 s``). The library's long
functions take ``progress`` (a callable with :func:`track`'s signature, None for silence) and
the commands pass :func:`track`.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def track(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "vol", *,
          stream: TextIO | None = None) -> Iterator:
    """Yield from ``iterable``, showing progress on ``stream`` (default ``sys.stderr``).

    On a terminal: a tqdm bar (none if tqdm is missing). Elsewhere: one line
    ``DESC: N[/TOTAL] UNIT in T s`` when ``iterable`` is exhausted, and nothing when the phase
    ends otherwise (an error, which the command reports in one line of its own, or a consumer
    that stops early: give it a shorter iterable instead).
    """
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            yield from iterable
            return
        with tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True) as bar:
            yield from bar
        return
    start, done = time.monotonic(), 0
    for item in iterable:
        done += 1
        yield item
    count = f"{done}/{total}" if total is not None and done != total else f"{done}"
    print(f"{desc}: {count} {unit} in {time.monotonic() - start:.1f} s", file=stream, flush=True)
