"""The reader study is blind: an attacker holding everything a reader gets recovers no answer.

The study attacked here is built so that any difference between the two sides can only be
leakage: every real and every "generated" volume is the same file (hard links of one phantom),
so both images of a pair have the same pixels, and only the presentation (ids, order, file names,
bytes, metadata, the page) could tell the sides apart. The attacker knows medvol's code, the
inputs and even the seed (the default, 0), and may rebuild the study with them; each attack must
do no better than a coin (the test fails beyond ±19 of 30 correct out of 60 pairs: a chance of
about 1e-6 for a coin, while the page of medvol 0.x before this test gave 60 / 60).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from pathlib import Path

import pytest

from medvol.study.reader.make import make_study

PAIRS = 60
#: Correct answers out of PAIRS that a coin reaches with probability about 4e-7 (each tail).
LIMIT = 19


@pytest.fixture(scope="module")
def twin_sources(tmp_path_factory) -> dict[str, Path]:
    """``real`` and ``fake`` folders of PAIRS volumes each, all hard links of one phantom file."""
    from medvol.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("twins")
    original = write_phantoms(1, 64, root / "original", seed=11)[0]
    folders = {"real": root / "scans", "fake": root / "generated"}
    for name, folder in folders.items():
        folder.mkdir()
        for i in range(PAIRS):
            os.link(original, folder / f"{name}_{i:04d}.nii.gz")
    return folders


def _make(out: Path, sources: dict[str, Path]) -> Path:
    # Slices from most of the axis: many distinct images, so that the attack by content can match
    # most pairs of the attacker's copy to the study's.
    return make_study(out, [f"gan={sources['fake']}"], str(sources["real"]), pairs=PAIRS, seed=0,
                      positions="0.1,0.9")


def _reader_view(study: Path) -> tuple[Path, dict]:
    """The folder a reader gets and the page's study data: everything but the key."""
    page = study / "page" if (study / "page").is_dir() else study  # (the layout before page/)
    html = (page / "index.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id="study-data" type="application/json">(.*?)</script>', html, re.S).group(1))
    return page, data


def _truth(study: Path, data: dict) -> list[str]:
    """The side of the real image of each pair, in page order (read from the key: the referee only)."""
    key = {p["pair"]: p for p in json.loads((study / "key.json").read_text(encoding="utf-8"))["pairs"]}
    return ["left" if key[item["pair"]]["left"] == "real" else "right" for item in data["pairs"]]


def _score(guesses: list[str | None], truth: list[str]) -> int:
    """Correct guesses; an attack without an answer (None) guesses left."""
    return sum((g or "left") == t for g, t in zip(guesses, truth))


def _by_feature(page: Path, data: dict, feature) -> list[str | None]:
    """Guess "real is the side whose image has the smaller feature" (None on a tie)."""
    guesses = []
    for item in data["pairs"]:
        left, right = (feature(page / item[side]) for side in ("left", "right"))
        guesses.append(None if left == right else "left" if left < right else "right")
    return guesses


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, twin_sources):
    root = tmp_path_factory.mktemp("attacked")
    study = _make(root / "study", twin_sources)
    replay = _make(root / "replay", twin_sources)  # the attacker's own copy: same code, inputs and seed
    return study, replay


def test_the_key_is_outside_the_folder_readers_get(attacked):
    study, _ = attacked
    page, _ = _reader_view(study)
    assert page != study and not list(page.rglob("key.json")) and (study / "key.json").is_file()
    assert not [p for p in page.rglob("*") if p.name.startswith(".")]  # no marker, lock or temporary


def test_both_sides_of_a_pair_look_the_same_to_a_reader(attacked):
    """Same voxels on both sides: same PNG bytes (pixels, size, chunks), same time, same page entry."""
    assert_sides_look_the_same(attacked[0])


def assert_sides_look_the_same(study: Path) -> None:
    """Both images of every pair: the same PNG bytes (no chunk but IHDR, IDAT, IEND), one time for all."""
    page, data = _reader_view(study)
    assert set(data) == {"study", "mode", "question", "title", "pairs"}
    times = {(page / item[side]).stat().st_mtime_ns for item in data["pairs"] for side in ("left", "right")}
    assert len(times) == 1
    for item in data["pairs"]:
        assert set(item) == {"pair", "plane", "left", "right"}
        left, right = ((page / item[side]).read_bytes() for side in ("left", "right"))
        assert left == right, item
        at, chunks = 8, []
        while at < len(left):
            length, kind = struct.unpack(">I4s", left[at:at + 8])
            chunks.append(kind)
            at += 12 + length
        assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}


def test_no_attack_on_ids_order_names_or_files_beats_a_coin(attacked):
    assert_no_attack_beats_a_coin(*attacked)


def assert_no_attack_beats_a_coin(study: Path, replay: Path) -> None:
    """Every attack on a study of PAIRS pairs whose sides show the same pixels (``replay``: the
    attacker's own copy, made with the same code, inputs and seed) scores within LIMIT of a coin."""
    page, data = _reader_view(study)
    truth = _truth(study, data)
    assert Counter(truth) == {"left": PAIRS // 2, "right": PAIRS // 2}  # balanced: a constant guess scores 30
    replay_page, replay_data = _reader_view(replay)
    replay_truth = dict(zip((p["pair"] for p in replay_data["pairs"]), _truth(replay, replay_data)))
    replay_by_content: dict[bytes, list[str]] = {}
    for item, side in zip(replay_data["pairs"], _truth(replay, replay_data)):
        replay_by_content.setdefault((replay_page / item["left"]).read_bytes(), []).append(side)

    def majority(sides: list[str]) -> str | None:
        counts = Counter(sides).most_common()
        return None if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]) else counts[0][0]

    attacks = {
        # The rebuilt study's key, matched by pair id (the ids of medvol 0.x came from the seed) ...
        "replay: same pair id": [replay_truth.get(item["pair"]) for item in data["pairs"]],
        # ... by position on the page (a seeded order) ...
        "replay: same page position": _truth(replay, replay_data),
        # ... and by what the images show (plane and slice: seeded sides with fresh ids and order).
        "replay: same image content": [majority(replay_by_content.get((page / item["left"]).read_bytes(), []))
                                       for item in data["pairs"]],
        "file name order": _by_feature(page, data, lambda p: p.name),
        "file name length": _by_feature(page, data, lambda p: len(p.name)),
        "inode (creation order)": _by_feature(page, data, lambda p: p.stat().st_ino),
        "modification time": _by_feature(page, data, lambda p: p.stat().st_mtime_ns),
        "file size": _by_feature(page, data, lambda p: p.stat().st_size),
        "PNG bytes": _by_feature(page, data, lambda p: p.read_bytes()),
        "listing order": _by_feature(page, data, lambda p: os.listdir(p.parent).index(p.name)),
    }
    for name, guesses in attacks.items():
        correct = _score(guesses, truth)
        assert abs(correct - PAIRS / 2) < LIMIT, f"attack '{name}' recovers {correct} of {PAIRS} sides"
