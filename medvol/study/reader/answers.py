"""Reading a study's key and the readers' answer files, with one-line errors naming file and row.

An answer file is the CSV the page exports (``reader,pair,choice,difficulty,seconds``, one row per
pair) or its JSON export (``{"reader", "experience", "answers": [{"pair", "choice",
"difficulty", "seconds"}, …]}``); one CSV may hold several readers. Every reader must answer every
pair of the key exactly once. In the single-image mode (the visual Turing test) the ``pair``
column holds the image's id and ``choice`` is ``real`` or ``synthetic``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from medvol.errors import MedvolError

COLUMNS = ("reader", "pair", "choice", "difficulty", "seconds")
CHOICES = ("left", "right")
SINGLE_CHOICES = ("real", "synthetic")
MODES = ("real-vs-fake", "model-vs-model", "single")


def choices_of(key: dict) -> tuple[str, str]:
    """The two answers a key's mode allows."""
    return SINGLE_CHOICES if key.get("mode") == "single" else CHOICES


@dataclass(frozen=True)
class Answer:
    reader: str
    pair: str
    choice: str
    difficulty: int
    seconds: float


def key_path(study: str | Path) -> Path:
    """The key file of a study: ``STUDY/key.json`` (both layouts: ``page/`` beside it, or the page
    and ``images/`` beside it, as studies made before the page moved to ``page/``), or the file."""
    path = Path(study)
    if not path.is_dir():
        return path
    if not (path / "key.json").is_file() and (path / "index.html").is_file() and (path.parent / "key.json").is_file():
        raise MedvolError(f"{path}: this is the page folder of a study (handed to readers, no key); "
                          f"give the study folder {path.parent}, which holds key.json")
    return path / "key.json"


def key_images(path: Path, key: dict) -> list[tuple[Path, ...]] | None:
    """The (left, right) image paths of each pair of the key at ``path`` (``(image,)`` in the
    single-image mode); None for a key of the first layout (which names no files).

    Every name goes through :func:`medvol.outputs.safe_name`: a key is a file anyone may have
    edited, and its names must stay inside the study's page folder.
    """
    from medvol.outputs import safe_name

    layout = key.get("layout", 1)
    if layout == 1:
        return None
    if layout != 2:
        raise MedvolError(f"{path}: key layout {layout!r} is newer than this medvol understands")
    page = safe_name(path.parent, key.get("page"), f"{path.name} 'page'")
    images = safe_name(page, key.get("images"), f"{path.name} 'images'")
    if key.get("mode") == "single":
        return [(safe_name(images, item.get("image"), f"{path.name} image #{number}"),)
                for number, item in enumerate(key["pairs"], start=1)]
    return [tuple(safe_name(images, pair.get(f"{side}_image"), f"{path.name} pair #{number} {side}_image")
                  for side in ("left", "right"))
            for number, pair in enumerate(key["pairs"], start=1)]


def load_key(study: str | Path) -> dict:
    """``STUDY/key.json`` (or a key file given directly), checked.

    Raises:
        MedvolError: no key (naming the page folder if that was given), an unreadable key, one that
            lacks mode or pairs, or names an image outside the study's page folder.
    """
    path = key_path(study)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedvolError(f"{path}: no answer key (give the folder `medvol study reader make` wrote)") from None
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable answer key ({error})") from None
    pairs = key.get("pairs") if isinstance(key, dict) else None
    if not isinstance(key, dict) or key.get("mode") not in MODES or not isinstance(pairs, list) or not pairs:
        raise MedvolError(f"{path}: not a reader-study key (needs mode and a non-empty pairs list)")
    single = key["mode"] == "single"
    fields = ("pair", "source", "truth") if single else ("pair", "left", "right")
    for number, pair in enumerate(pairs, start=1):
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in fields):
            raise MedvolError(f"{path}: {'image' if single else 'pair'} #{number} lacks {'/'.join(fields)}")
        if single and pair["truth"] not in SINGLE_CHOICES:
            raise MedvolError(f"{path}: image #{number} has truth {pair['truth']!r}, expected real or synthetic")
    if single and len({p["truth"] for p in pairs}) < 2:
        raise MedvolError(f"{path}: a single-image key needs both real and synthetic images")
    key_images(path, key)
    return key


def _check_row(where: str, row: dict, pairs: set[str], choices: tuple[str, str] = CHOICES) -> Answer:
    reader = str(row.get("reader") or "").strip()
    if not reader:
        raise MedvolError(f"{where}: empty reader")
    pair = str(row.get("pair") or "").strip()
    if pair not in pairs:
        raise MedvolError(f"{where}: unknown pair {pair!r} (not in the study's key)")
    choice = str(row.get("choice") or "").strip().lower()
    if choice not in choices:
        raise MedvolError(f"{where}: choice {row.get('choice')!r}, expected {' or '.join(choices)}")
    difficulty_text = str(row.get("difficulty")).strip()
    if difficulty_text not in ("1", "2", "3", "4", "5"):
        raise MedvolError(f"{where}: difficulty {row.get('difficulty')!r}, expected an integer 1 to 5")
    try:
        seconds = float(str(row.get("seconds")).strip())
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise MedvolError(f"{where}: seconds {row.get('seconds')!r}, expected a number >= 0")
    return Answer(reader, pair, choice, int(difficulty_text), seconds)


def _read_csv(path: Path, pairs: set[str], choices: tuple[str, str] = CHOICES) -> list[Answer]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MedvolError(f"{path}: unreadable answers ({error})") from None
    if not rows:
        raise MedvolError(f"{path}: empty file (expected the header {','.join(COLUMNS)})")
    header = [h.strip().lower() for h in rows[0]]
    if header != list(COLUMNS):
        extra = [h for h in header if h not in COLUMNS]
        missing = [c for c in COLUMNS if c not in header]
        what = (f"unknown column {extra[0]!r}" if extra else f"missing column {missing[0]!r}" if missing
                else "columns in another order")
        raise MedvolError(f"{path}: row 1: {what}; expected the header {','.join(COLUMNS)}")
    answers = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(COLUMNS):
            raise MedvolError(f"{path}: row {number}: {len(row)} fields, expected {len(COLUMNS)}")
        answers.append(_check_row(f"{path}: row {number}", dict(zip(COLUMNS, row)), pairs, choices))
    return answers


def _read_json(path: Path, pairs: set[str], choices: tuple[str, str] = CHOICES) -> tuple[list[Answer], dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{path}: unreadable answers ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("answers"), list) or not data.get("reader"):
        raise MedvolError(f"{path}: expected the page's JSON export (reader and answers)")
    answers = []
    for number, item in enumerate(data["answers"], start=1):
        if not isinstance(item, dict):
            raise MedvolError(f"{path}: answer {number}: not an object")
        unknown = [k for k in item if k not in COLUMNS and k != "answered"]
        if unknown:
            raise MedvolError(f"{path}: answer {number}: unknown field {unknown[0]!r}")
        answers.append(_check_row(f"{path}: answer {number}", dict(item, reader=data["reader"]), pairs, choices))
    experience = data.get("experience") if isinstance(data.get("experience"), dict) else {}
    return answers, {str(data["reader"]): experience}


def read_answers(files: list[str | Path], key: dict) -> tuple[dict[str, dict[str, Answer]], dict[str, dict]]:
    """All readers' answers: ``({reader: {pair: Answer}}, {reader: experience})``.

    Raises:
        MedvolError: an unreadable file, a wrong column, a bad value, an unknown or repeated pair
            (naming file and row), or a reader with pairs unanswered (naming file, reader and pair).
    """
    pairs = [p["pair"] for p in key["pairs"]]
    known = set(pairs)
    by_reader: dict[str, dict[str, Answer]] = {}
    where: dict[tuple[str, str], str] = {}
    files_of: dict[str, Path] = {}
    experience: dict[str, dict] = {}
    if not files:
        raise MedvolError("no answer files given")
    for file in files:
        path = Path(file)
        if path.suffix.lower() == ".json":
            answers, exp = _read_json(path, known, choices_of(key))
            experience.update(exp)
        else:
            answers = _read_csv(path, known, choices_of(key))
        if not answers:
            raise MedvolError(f"{path}: no answers")
        for number, answer in enumerate(answers, start=1):
            mine = by_reader.setdefault(answer.reader, {})
            if answer.pair in mine:
                raise MedvolError(f"{path}: answer {number} (reader {answer.reader}, pair {answer.pair}) repeats "
                                  f"an answer from {where[(answer.reader, answer.pair)]}")
            mine[answer.pair] = answer
            where[(answer.reader, answer.pair)] = str(path)
            files_of[answer.reader] = path
    for reader, mine in by_reader.items():
        missing = [p for p in pairs if p not in mine]
        if missing:
            raise MedvolError(f"{files_of[reader]}: reader {reader} has no answer for pair {missing[0]} "
                              f"({len(missing)} of {len(pairs)} pairs missing)")
    return by_reader, experience
