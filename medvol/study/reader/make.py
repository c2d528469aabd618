"""``medvol study reader make``: pairs of slices, their PNG images, the page and the answer key.

A pair shows two slices at the same position in the same plane: in ``real-vs-fake`` mode a real
volume beside a generated one (the question: which is real?), in ``model-vs-model`` mode two
generated volumes from different models (which is more realistic?). Every choice is drawn from
one ``numpy`` generator seeded with ``seed``: same inputs and seed, the same study, byte for byte.

What ``STUDY/`` holds: ``index.html`` (the page, with the study's pair list inlined),
``images/<pair>_left.png`` and ``..._right.png``, and ``key.json``, the only file that names the
sources. Pair ids are random tokens; the page never sees the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import medvol
from medvol.errors import MedvolError
from medvol.study.reader.images import resolve_window, to_uint8, write_png
from medvol.study.reader.sources import (Source, fake_source, fit_to_shape, parse_fake, real_source,
                                         scratch_folder)
from medvol.utils import atomic_dir, checked_write, torch_threads

log = logging.getLogger("medvol.study")

MODES = ("real-vs-fake", "model-vs-model")
PLANES = ("axial", "coronal", "sagittal")
KEY_FILE = "key.json"
PAGE_FILE = "index.html"
IMAGE_DIR = "images"
#: Default range of slice positions, as fractions of the axis: the central part, where the
#: anatomy is (slices near the edges are mostly air or padding and tell a reader nothing).
DEFAULT_POSITIONS = (0.3, 0.7)

QUESTIONS = {
    "real-vs-fake": "Which image is the real scan?",
    "model-vs-model": "Which image looks more realistic?",
}


@dataclass
class PairPlan:
    """One pair before its images exist: sources, volumes and slice."""

    pair: str
    plane: str
    position: float
    sides: tuple[tuple[str, int], tuple[str, int]]  # ((source name, volume index) left, right)


def parse_planes(text: str) -> list[str]:
    planes = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in planes if p not in PLANES]
    if not planes or bad:
        raise MedvolError(f"--planes {text!r}: expected a comma-separated subset of {', '.join(PLANES)}")
    return list(dict.fromkeys(planes))


def parse_positions(text: str | Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise MedvolError(f"--positions {text!r}: expected LOW,HIGH fractions such as 0.3,0.7") from None
    if not 0.0 <= low <= high <= 1.0:
        raise MedvolError(f"--positions {text!r}: need 0 <= LOW <= HIGH <= 1")
    return low, high


def _token(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        token = "".join(rng.choice(list("abcdefghjkmnpqrstuvwxyz23456789"), size=8))
        if token not in used:
            used.add(token)
            return token


def plan_pairs(mode: str, fakes: list[str], counts: dict[str, int], pairs: int, planes: list[str],
               positions: tuple[float, float], rng: np.random.Generator) -> list[PairPlan]:
    """Draw the pairs: which sources, which volumes, which plane and position, which side.

    Sources, planes and sides are balanced rather than drawn independently: the comparisons
    (real against each fake, or each pair of models) and the planes take turns, exactly half of
    the pairs (rounded) put the first source on the left, and each source's volumes are used in a
    seeded random order, each once before any twice. The presentation order is then shuffled.
    """
    if mode == "real-vs-fake":
        comparisons = [("real", name) for name in fakes]
    else:
        comparisons = list(itertools.combinations(fakes, 2))
    order = {name: list(rng.permutation(count)) for name, count in counts.items()}
    used = {name: 0 for name in counts}

    def next_volume(name: str) -> int:
        index = order[name][used[name] % counts[name]]
        used[name] += 1
        return int(index)

    flips = rng.permutation(np.arange(pairs) % 2 == 1)
    tokens: set[str] = set()
    plans = []
    for i in range(pairs):
        first, second = comparisons[i % len(comparisons)]
        a, b = (first, next_volume(first)), (second, next_volume(second))
        sides = (b, a) if flips[i] else (a, b)
        position = float(rng.uniform(*positions))
        plans.append(PairPlan(_token(rng, tokens), planes[(i // len(comparisons)) % len(planes)], position, sides))
    return [plans[i] for i in rng.permutation(pairs)]


def volumes_needed(mode: str, fakes: list[str], pairs: int) -> dict[str, int]:
    """How many volumes of each fake the pairs use (one per appearance: a checkpoint generates
    that many, so that no two pairs show the same generated volume)."""
    comparisons = [("real", f) for f in fakes] if mode == "real-vs-fake" else list(itertools.combinations(fakes, 2))
    needed = {name: 0 for name in fakes}
    for i in range(pairs):
        for name in comparisons[i % len(comparisons)]:
            if name != "real":
                needed[name] += 1
    return needed


def study_id(seed: int, mode: str, specs: list[str], pairs: int, planes: list[str]) -> str:
    """A short id for the page's saved state (so two studies in one browser keep theirs apart).

    Hashed from the command's inputs; it says nothing about which side holds which source."""
    text = json.dumps([seed, mode, specs, pairs, planes])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def make_study(out: str | os.PathLike, fakes: Sequence[str], real: str | None = None, *, pairs: int = 30,
               planes: str | Sequence[str] = "axial,coronal,sagittal", mode: str = "real-vs-fake", seed: int = 0,
               window: str = "lung", positions: str | Sequence[float] = DEFAULT_POSITIONS, real_split: str = "all",
               title: str | None = None, device: str = "auto", overwrite: bool = False) -> Path:
    """Make a reader study folder (module docstring) and return its path.

    Args:
        out: the study folder to create (refused if it exists and is not empty, unless
            ``overwrite``; written under a temporary name and renamed when complete).
        fakes: ``NAME=DIR_OR_CKPT`` strings: a folder of generated volumes, or a checkpoint (file or
            run folder) from which volumes are generated with ``seed``.
        real: real volumes (a medvol cache or files/folders/globs); required for ``real-vs-fake``.
        pairs: number of pairs.
        planes: planes to take turns over (subset of axial, coronal, sagittal).
        mode: ``"real-vs-fake"`` or ``"model-vs-model"`` (two or more fakes).
        seed: seeds everything: generation, volumes, planes, positions, sides, ids, order.
        window: display window: a viewer preset (``lung``, ``mediastinum``, ``bone``), ``LOW,HIGH``
            in HU, or ``auto`` (the pair's 0.5–99.5 percentiles, for MR).
        positions: range of slice positions as fractions of the axis.
        real_split: ``train``, ``val`` or ``all`` volumes of a cache.
        title: page title.
        device: where checkpoints generate (``auto``, ``cpu``, ``cuda[:N]``).

    Returns:
        The study folder.

    Raises:
        MedvolError: a bad option, an unreadable source, volumes that cannot be paired.
    """
    if mode not in MODES:
        raise MedvolError(f"--mode {mode!r}: choose {' or '.join(MODES)}")
    if pairs < 1:
        raise MedvolError(f"--pairs {pairs}: expected at least 1")
    plane_list = parse_planes(planes) if isinstance(planes, str) else parse_planes(",".join(planes))
    low_high = parse_positions(positions)
    parsed = [parse_fake(text) for text in fakes]
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise MedvolError(f"--fake: names must differ, got {', '.join(names)}")
    if mode == "real-vs-fake" and (real is None or not parsed):
        raise MedvolError("--mode real-vs-fake needs --real and at least one --fake")
    if mode == "model-vs-model":
        if len(parsed) < 2:
            raise MedvolError("--mode model-vs-model needs at least two --fake sources")
        if real is not None:
            raise MedvolError("--real is not used by --mode model-vs-model (it compares --fake sources)")
    resolve_window(window, np.zeros(1), np.ones(1))  # a bad --window fails before any work
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MedvolError(f"--out {out}: exists and is not empty (use --overwrite to replace it)")

    rng = np.random.default_rng(seed)
    needed = volumes_needed(mode, names, pairs)
    with scratch_folder(out) as scratch:
        sources: dict[str, Source] = {}
        if real is not None:
            sources["real"] = real_source(real, real_split)
        for name, spec in parsed:
            # A fake that no pair uses (fewer pairs than comparisons) still gets one volume: it is checked.
            sources[name] = fake_source(name, spec, max(1, needed[name]), seed, scratch, device=device)
        plans = plan_pairs(mode, names, {n: len(s) for n, s in sources.items()}, pairs, plane_list, low_high, rng)
        with atomic_dir(out) as tmp:
            key_pairs = _write_images(tmp, plans, sources, window, mode)
            specs = [f"real={real}"] if real is not None else []
            specs += [f"{n}={s}" for n, s in parsed]
            sid = study_id(seed, mode, specs, pairs, plane_list)
            _write_page(tmp, sid, mode, key_pairs, title)
            key = {
                "study": sid, "mode": mode, "seed": seed, "pairs": key_pairs,
                "sources": {name: source.origin for name, source in sources.items()},
                "window": window, "planes": plane_list, "positions": list(low_high), "real_split": real_split,
                "medvol_version": medvol.__version__, "threads": torch_threads(),
            }
            with checked_write(tmp / KEY_FILE, "answer key") as path:
                path.write_text(json.dumps(key, indent=1), encoding="utf-8")
    return out


def _write_images(folder: Path, plans: list[PairPlan], sources: dict[str, Source], window: str, mode: str) -> list[dict]:
    from medvol.data.datasets import take_slice

    (folder / IMAGE_DIR).mkdir()
    key_pairs = []
    for number, plan in enumerate(plans, start=1):
        loaded = {side: sources[name].load(index) for side, (name, index) in zip(("left", "right"), plan.sides)}
        target_side = _target_side(plan, loaded, mode)
        shape, spacing = loaded[target_side][0].shape, loaded[target_side][1]
        if len(shape) != 3 or min(shape) < 2:
            name, index = plan.sides[0 if target_side == "left" else 1]
            raise MedvolError(f"{sources[name].items[index]}: shape {shape} is not a 3D volume")
        arrays = {}
        for side, (name, index) in zip(("left", "right"), plan.sides):
            array, own_spacing = loaded[side]
            arrays[side] = fit_to_shape(array, own_spacing, shape, spacing, sources[name].items[index])
        axis = PLANES.index(plan.plane)
        k = int(round(plan.position * (shape[axis] - 1)))
        slices = {side: np.array(take_slice(arrays[side], plan.plane, k)) for side in arrays}
        limits = resolve_window(window, slices["left"], slices["right"])
        for side in ("left", "right"):
            name, index = plan.sides[0 if side == "left" else 1]
            try:
                image = to_uint8(slices[side], limits)
            except MedvolError as error:
                raise MedvolError(f"{sources[name].items[index]}: {error}") from None
            write_png(image, folder / IMAGE_DIR / f"{plan.pair}_{side}.png")
        key_pairs.append({
            "pair": plan.pair, "number": number,
            "left": plan.sides[0][0], "right": plan.sides[1][0],
            "left_volume": sources[plan.sides[0][0]].items[plan.sides[0][1]],
            "right_volume": sources[plan.sides[1][0]].items[plan.sides[1][1]],
            "plane": plan.plane, "slice": k, "position": round(plan.position, 4),
            "shape": list(shape), "window": [round(v, 3) for v in limits],
        })
        log.info("pair %d/%d: %s", number, len(plans), plan.pair)
    return key_pairs


def _target_side(plan: PairPlan, loaded: dict, mode: str) -> str:
    """The side whose shape both images take: the fake's in real-vs-fake (the real volume is
    resized to the generated size), the larger one in model-vs-model."""
    if mode == "real-vs-fake":
        return "right" if plan.sides[0][0] == "real" else "left"
    sizes = {side: int(np.prod(loaded[side][0].shape)) for side in loaded}
    return "left" if sizes["left"] >= sizes["right"] else "right"


def _write_page(folder: Path, sid: str, mode: str, key_pairs: list[dict], title: str | None) -> None:
    from medvol.study.reader.page import render_page

    page_pairs = [{"pair": p["pair"], "plane": p["plane"],
                   "left": f"{IMAGE_DIR}/{p['pair']}_left.png", "right": f"{IMAGE_DIR}/{p['pair']}_right.png"}
                  for p in key_pairs]
    data = {"study": sid, "mode": mode, "question": QUESTIONS[mode], "pairs": page_pairs,
            "title": title or "Reader study"}
    with checked_write(folder / PAGE_FILE, "study page") as path:
        path.write_text(render_page(data), encoding="utf-8")
