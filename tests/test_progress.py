"""medvol.progress.track: a bar on a terminal, one plain line per phase elsewhere."""

import io
import re

import pytest

from medvol.progress import track


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_phase():
    log = io.StringIO()
    assert list(track(range(3), 3, "features x real", stream=log)) == [0, 1, 2]
    assert re.fullmatch(r"features x real: 3 vol in \d+\.\d s\n", log.getvalue())
    log = io.StringIO()
    assert list(track(range(2), 5, "montage", stream=log)) == [0, 1]
    assert re.fullmatch(r"montage: 2/5 vol in \d+\.\d s\n", log.getvalue())


def test_a_phase_that_fails_or_is_left_prints_no_line():
    # the command's one-line error must stay the last word
    log = io.StringIO()
    with pytest.raises(KeyError):
        for _ in track(range(3), 3, "preprocess", stream=log):
            raise KeyError("consumer")
    for i in track(range(5), 5, "left", stream=log):
        break
    assert log.getvalue() == ""


def test_an_error_of_the_source_prints_no_line():
    def broken():
        yield 1
        raise ValueError("bad volume")

    log = io.StringIO()
    with pytest.raises(ValueError):
        list(track(broken(), 2, "features", stream=log))
    assert log.getvalue() == ""


def test_a_terminal_gets_a_bar_and_no_plain_line():
    tty = Terminal()
    assert list(track(range(4), 4, "bootstrap", "round", stream=tty)) == [0, 1, 2, 3]
    text = tty.getvalue()
    assert "\r" in text and "bootstrap" in text and "4/4" in text
    assert not re.search(r"bootstrap: 4 round in", text)
