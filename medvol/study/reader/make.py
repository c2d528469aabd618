"""``medvol study reader make``: pairs of slices, their PNG images, the page and the answer key.

A pair shows two slices at the same position in the same plane: in ``real-vs-fake`` mode a real
volume beside a generated one (the question: which is real?), in ``model-vs-model`` mode two
generated volumes from different models (which is more realistic?). A study of 2D images (a 2D
image cache, folders of PNG / 2D NIfTI, 2D models: :func:`medvol.study.reader.sources.open_sources`)
shows the images themselves, every one resized to the first fake's shape; its plane is ``"2d"``.

Blinding. The seed makes the *design* reproducible (generation, which volumes, planes, slice
positions); the *presentation* (which source goes left, the pair ids, the image file names, the
page order and the study id) is drawn from ``secrets``, so that nobody holding the page, even with
medvol's code, the inputs and the seed, can tell the sides apart by anything but the pixels.

What ``STUDY/`` holds: ``page/`` (handed to readers: ``index.html`` with the study's pair list
inlined, and ``images/<random>.png``, one modification time for all) and, beside it, ``key.json``,
the only file that names the sources. A study is written in a scratch folder beside ``STUDY/``,
then moved into the claimed folder (:func:`medvol.outputs.owned_output`), the key last.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import medvol
from medvol.errors import MedvolError
from medvol.study.reader.images import resolve_window, to_uint8, write_png
from medvol.study.reader.sources import Source, fit_to_shape, open_sources, parse_fake, scratch_folder
from medvol.utils import checked_write, torch_threads

log = logging.getLogger("medvol.study")

MODES = ("real-vs-fake", "model-vs-model", "single")
PLANES = ("axial", "coronal", "sagittal")
KEY_FILE = "key.json"
#: The folder handed to readers (``STUDY/page/``): the page and its images, never the key.
PAGE_DIR = "page"
PAGE_FILE = "index.html"
IMAGE_DIR = "images"
#: Layout of a study folder: 2 = ``key.json`` beside ``page/``; 1 (before) = all in one folder.
LAYOUT = 2
#: The job name in the output marker (``medvol.outputs``).
JOB = "study-reader-make"
#: Default range of slice positions, as fractions of the axis: the central part, where the
#: anatomy is (slices near the edges are mostly air or padding and tell a reader nothing).
DEFAULT_POSITIONS = (0.3, 0.7)

QUESTIONS = {
    "real-vs-fake": "Which image is the real scan?",
    "model-vs-model": "Which image looks more realistic?",
    "single": "Is this image real or synthetic?",
}
#: The "plane" of every image of a 2D study (the page shows no plane for it).
PLANE_2D = "2d"
#: The two answers of the single-image mode (the visual Turing test), and what each source is.
SINGLE_CHOICES = ("real", "synthetic")
DEFAULT_IMAGES = 100


@dataclass
class PairPlan:
    """One pair before its images exist: sources, volumes and slice."""

    pair: str
    plane: str
    position: float
    sides: tuple[tuple[str, int], tuple[str, int]]  # ((source name, volume index) left, right)
    images: tuple[str, str] = ("", "")  # the left and right image file names (in PAGE_DIR/IMAGE_DIR)


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


#: Alphabet of pair ids: no look-alike characters (0/o, 1/l/i), so an id reads back unambiguously.
ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def _secret_token(length: int, used: set[str]) -> str:
    """A fresh random token from :data:`ID_ALPHABET`, drawn from ``secrets`` (never from the seed)."""
    while True:
        token = "".join(secrets.choice(ID_ALPHABET) for _ in range(length))
        if token not in used:
            used.add(token)
            return token


def plan_pairs(mode: str, fakes: list[str], counts: dict[str, int], pairs: int, planes: list[str],
               positions: tuple[float, float], rng: np.random.Generator) -> list[PairPlan]:
    """Draw the design from the seed: which sources, which volumes, which plane and position.

    Sources and planes are balanced rather than drawn independently: the comparisons (real against
    each fake, or each pair of models) and the planes take turns, and each source's volumes are
    used in a seeded random order. Every plan has its comparison's first source on the left here;
    :func:`present` then draws the sides, the ids and the order from ``secrets``.
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

    plans = []
    for i in range(pairs):
        first, second = comparisons[i % len(comparisons)]
        sides = ((first, next_volume(first)), (second, next_volume(second)))
        position = float(rng.uniform(*positions))
        plans.append(PairPlan("", planes[(i // len(comparisons)) % len(planes)], position, sides))
    return plans


def present(plans: list[PairPlan]) -> list[PairPlan]:
    """The presentation of a design: sides, pair ids, image names and page order, from ``secrets``.

    Nothing here depends on the seed, so that neither the seed (the default is 0, and it is
    recorded in the key) nor medvol's code lets anyone holding the page recover the answers:
    exactly half of the pairs (rounded down) put the comparison's second source on the left,
    which ones is drawn by the operating system's cryptographic generator, as are the ids, the
    image file names and the order of the pairs on the page.
    """
    chooser = secrets.SystemRandom()
    flips = [i < len(plans) // 2 for i in range(len(plans))]
    chooser.shuffle(flips)
    ids: set[str] = set()
    names: set[str] = set()
    shown = []
    for plan, flip in zip(plans, flips):
        sides = (plan.sides[1], plan.sides[0]) if flip else plan.sides
        images = (f"{_secret_token(16, names)}.png", f"{_secret_token(16, names)}.png")
        shown.append(PairPlan(_secret_token(8, ids), plan.plane, plan.position, sides, images))
    chooser.shuffle(shown)
    return shown


@dataclass
class ItemPlan:
    """One image of the single-image mode before it exists: its source, volume and slice."""

    item: str
    plane: str
    position: float
    source: tuple[str, int]  # (source name, volume index)
    image: str = ""


def single_counts(images: int, real_share: float, fakes: list[str]) -> dict[str, int]:
    """How many images each source gives: ``round(images * real_share)`` real, the rest shared
    by the fakes in turn."""
    n_real = int(round(images * real_share))
    counts = {"real": n_real, **{name: 0 for name in fakes}}
    for i in range(images - n_real):
        counts[fakes[i % len(fakes)]] += 1
    return counts


def plan_single(counts: dict[str, int], sizes: dict[str, int], planes: list[str],
                positions: tuple[float, float], rng: np.random.Generator) -> list[ItemPlan]:
    """Draw the single-image design from the seed: the slots (plane and slice position of every
    image, planes taking turns) and, per source, the order its volumes are used in (each once).

    Which slot shows which source is *not* drawn here: :func:`present_single` deals the sources
    to the slots from ``secrets``. Were it seeded, anyone holding the seed (the default, 0, is in
    the key) could compute which planes and slice positions are the real ones and tell a real
    image by where its slice lies.
    """
    total = sum(counts.values())
    slots = [(planes[i % len(planes)], float(rng.uniform(*positions))) for i in range(total)]
    volumes = {name: [int(v) for v in rng.permutation(sizes[name])[:count]] for name, count in counts.items()}
    sources = [(name, volume) for name, count in counts.items() for volume in volumes[name]]
    return [ItemPlan("", plane, position, source) for (plane, position), source in zip(slots, sources)]


def present_single(plans: list[ItemPlan]) -> list[ItemPlan]:
    """The presentation of a single-image design, all from ``secrets``: which slot (plane and
    position) shows which source's volume, the image ids and names, and the page order of real
    and synthetic images (a fresh cryptographic shuffle, never the seed's)."""
    chooser = secrets.SystemRandom()
    sources = [plan.source for plan in plans]
    chooser.shuffle(sources)
    ids: set[str] = set()
    names: set[str] = set()
    shown = [ItemPlan(_secret_token(8, ids), plan.plane, plan.position, source, f"{_secret_token(16, names)}.png")
             for plan, source in zip(plans, sources)]
    chooser.shuffle(shown)
    return shown


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


def _refuse_repeats(source: Source, count: int, spec: str, unit: str = "pairs") -> None:
    """Refuse a source with fewer volumes than the pairs it appears in.

    A volume shown in two pairs can be recognised: a reader who notices the repeat (the same
    body in another plane or slice) learns that both images come from one source, and where only
    one side repeats, which one. So every image of a side comes from a volume of its own.
    """
    if len(source) < count:
        what = "image" if source.dims == 2 else "volume"
        raise MedvolError(
            f"{spec}: {len(source)} {what}(s) for {count} {unit} would show a{'n' * (what == 'image')} {what} "
            f"{'in more than one pair' if unit == 'pairs' else 'more than once'} "
            f"(a reader who recognises the repeat learns its source); give at least {count} volumes "
            f"or fewer --{unit}")


def _refuse_synthetic_real(source: Source, spec: str, allow: bool) -> list[str]:
    """The real volumes marked synthetic (:func:`medvol.data.provenance.provenance_of`); refused
    unless ``allow`` (then each is named in a warning and in the key)."""
    if not source.synthetic:
        return []
    item, evidence = source.synthetic[0]
    more = f" and {len(source.synthetic) - 1} more" if len(source.synthetic) > 1 else ""
    if not allow:
        raise MedvolError(f"--real {spec}: {item}{more} is marked synthetic ({evidence}); the real side of a "
                          "reader study must be scans (use --allow-synthetic-real to accept it; the key records it)")
    log.warning("--allow-synthetic-real: %d real volume(s) of %s are marked synthetic (first: %s); recorded in %s",
                len(source.synthetic), spec, item, KEY_FILE)
    return [item for item, _ in source.synthetic]


def _publish(out: Path, scratch: Path, page: Path, key: dict, identity: dict, overwrite: bool,
             inputs: list) -> None:
    """Move the finished page from ``scratch`` into the claimed ``out`` (one modification time for
    every page file), then write the key last: a study with a key is complete."""
    from medvol.outputs import owned_output

    page_files = sorted(p.relative_to(scratch).as_posix() for p in page.rglob("*") if p.is_file())
    with owned_output(out, JOB, identity, overwrite=overwrite, inputs=inputs) as claimed:
        targets = claimed.paths(page_files + [KEY_FILE])
        for rel, target in zip(page_files, targets):
            shutil.move(scratch / rel, target)
        _same_times(targets[:-1])
        with checked_write(targets[-1], "answer key") as path:
            path.write_text(json.dumps(key, indent=1), encoding="utf-8")


def make_study(out: str | os.PathLike, fakes: Sequence[str], real: str | None = None, *, pairs: int = 30,
               planes: str | Sequence[str] | None = None, mode: str = "real-vs-fake", seed: int = 0,
               window: str = "lung", positions: str | Sequence[float] | None = None, real_split: str = "all",
               title: str | None = None, device: str = "auto", overwrite: bool = False,
               allow_synthetic_real: bool = False, images: int | None = None, real_share: float = 0.5) -> Path:
    """Make a reader study folder (module docstring) and return its path.

    Args:
        out: the study folder. A folder holding files medvol did not write, or another study, is
            refused unless ``overwrite``; ``overwrite`` removes only the files a medvol study wrote
            there, never anything else (inputs, a user's files), and never replaces such a file.
        fakes: ``NAME=DIR_OR_CKPT`` strings: a folder of generated volumes, or a checkpoint (file or
            run folder) from which volumes are generated with ``seed``.
        real: real volumes (a medvol cache or files/folders/globs); required for ``real-vs-fake``.
        pairs: number of pairs.
        planes: planes to take turns over (subset of axial, coronal, sagittal; default all three).
            Not for a study of 2D images (refused there, as ``positions``).
        mode: ``"real-vs-fake"``, ``"model-vs-model"`` (two or more fakes) or ``"single"`` (the
            visual Turing test: one image at a time, real or synthetic; ``images`` and
            ``real_share`` instead of ``pairs``).
        seed: seeds the design: generation, volumes, planes, positions (not the sides, ids, image
            names or order, which come from ``secrets``: :func:`present`).
        window: display window: a viewer preset (``lung``, ``mediastinum``, ``bone``), ``LOW,HIGH``
            in HU, or ``auto`` (the pair's 0.5–99.5 percentiles, for MR).
        positions: range of slice positions as fractions of the axis (default 0.3, 0.7).
        real_split: ``train``, ``val`` or ``all`` volumes of a cache.
        title: page title.
        device: where checkpoints generate (``auto``, ``cpu``, ``cuda[:N]``).
        overwrite: see ``out``.
        allow_synthetic_real: accept real volumes marked synthetic (recorded in the key).
        images: ``single`` mode: the number of images (default 100).
        real_share: ``single`` mode: the fraction of real images (default 0.5; rounded to a count).

    Returns:
        The study folder.

    Raises:
        MedvolError: a bad option or ``out``, an unreadable source, volumes that cannot be paired, a
            source with fewer volumes than its pairs, real volumes marked synthetic, 2D images and
            volumes in one study.
    """
    from medvol.outputs import check_output

    if mode not in MODES:
        raise MedvolError(f"--mode {mode!r}: choose {', '.join(MODES)}")
    if mode == "single":
        images = DEFAULT_IMAGES if images is None else images
        if images < 2:
            raise MedvolError(f"--images {images}: expected at least 2")
        if not 0.0 < real_share < 1.0:
            raise MedvolError(f"--real-share {real_share}: expected a fraction strictly between 0 and 1")
        n_real = int(round(images * real_share))
        if n_real < 1 or n_real >= images:
            raise MedvolError(f"--real-share {real_share} of --images {images} gives {n_real} real images: "
                              "need at least one real and one synthetic")
    elif images is not None:
        raise MedvolError(f"--images is for --mode single; --mode {mode} takes --pairs")
    if pairs < 1:
        raise MedvolError(f"--pairs {pairs}: expected at least 1")
    given_layout = {"--planes": planes, "--positions": positions}
    planes = ",".join(PLANES) if planes is None else planes
    plane_list = parse_planes(planes) if isinstance(planes, str) else parse_planes(",".join(planes))
    low_high = parse_positions(DEFAULT_POSITIONS if positions is None else positions)
    parsed = [parse_fake(text) for text in fakes]
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise MedvolError(f"--fake: names must differ, got {', '.join(names)}")
    if mode in ("real-vs-fake", "single") and (real is None or not parsed):
        raise MedvolError(f"--mode {mode} needs --real and at least one --fake")
    if mode == "model-vs-model":
        if len(parsed) < 2:
            raise MedvolError("--mode model-vs-model needs at least two --fake sources")
        if real is not None:
            raise MedvolError("--real is not used by --mode model-vs-model (it compares --fake sources)")
    resolve_window(window, np.zeros(1), np.ones(1))  # a bad --window fails before any work
    out = Path(out)
    # The study's id names this job: a second make into the same folder is another job (it would
    # draw other sides and ids), so a finished study is never replaced without --overwrite.
    sid = secrets.token_hex(6)
    identity = {"study": sid}
    kept = check_output(out, JOB, identity, overwrite=overwrite)
    mine = [rel for rel in kept if rel == KEY_FILE or rel.split("/")[0] == PAGE_DIR]
    if mine:
        raise MedvolError(f"--out {out}: {mine[0]} was not written by medvol; refusing to replace it "
                          "(move it away or choose another --out)")

    rng = np.random.default_rng(seed)
    if mode == "single":
        return _make_single(out, sid, identity, names, parsed, real, images, real_share, plane_list, low_high, rng,
                            seed=seed, window=window, real_split=real_split, title=title, device=device,
                            overwrite=overwrite, allow_synthetic_real=allow_synthetic_real,
                            given_layout=given_layout)
    needed = volumes_needed(mode, names, pairs)
    with scratch_folder(out) as scratch:
        synthetic_real: list[str] = []
        specs = dict(parsed)

        def check(opened: dict[str, Source], dims: int) -> None:
            _layout_of(dims, plane_list, low_high, given_layout)
            for name, source in opened.items():
                if name == "real":
                    _refuse_repeats(source, pairs, f"--real {real}")
                    synthetic_real.extend(_refuse_synthetic_real(source, real, allow_synthetic_real))
                else:
                    _refuse_repeats(source, needed[name], f"--fake {name}={specs[name]}")

        # A fake that no pair uses (fewer pairs than comparisons) still gets one volume: it is checked.
        sources, dims = open_sources(real, real_split, parsed, needed, seed, scratch, device=device, check=check)
        plane_list, low_high = _layout_of(dims, plane_list, low_high, given_layout)
        design = plan_pairs(mode, names, {n: len(s) for n, s in sources.items()}, pairs, plane_list, low_high, rng)
        plans = present(design)
        page = scratch / PAGE_DIR
        key_pairs = _write_images(page, plans, sources, window, mode)
        _write_page(page, sid, mode, key_pairs, title)
        key = {
            "study": sid, "mode": mode, "seed": seed, "layout": LAYOUT, "page": PAGE_DIR, "images": IMAGE_DIR,
            "presentation": "sides, pair ids, image names and page order drawn from secrets, not from the seed",
            "pairs": key_pairs,
            "sources": {name: source.origin for name, source in sources.items()},
            "window": window, "planes": plane_list, "positions": list(low_high) if dims == 3 else None,
            "real_split": real_split,
            "dims": dims,
            "allow_synthetic_real": bool(allow_synthetic_real), "synthetic_real": synthetic_real,
            "medvol_version": medvol.__version__, "threads": torch_threads(),
        }
        inputs = [spec for _, spec in parsed] + ([real] if real is not None else [])
        _publish(out, scratch, page, key, identity, overwrite,
                 inputs + [item for source in sources.values() for item in source.items])
    return out


def _make_single(out: Path, sid: str, identity: dict, names: list[str], parsed: list, real: str, images: int,
                 real_share: float, plane_list: list[str], low_high: tuple[float, float], rng: np.random.Generator, *,
                 seed: int, window: str, real_split: str, title: str | None, device: str, overwrite: bool,
                 allow_synthetic_real: bool, given_layout: dict) -> Path:
    """The single-image mode of :func:`make_study` (``out`` already checked)."""
    counts = single_counts(images, real_share, names)
    with scratch_folder(out) as scratch:
        synthetic_real: list[str] = []
        specs = {"real": f"--real {real}", **{name: f"--fake {name}={spec}" for name, spec in parsed}}

        def check(opened: dict[str, Source], dims: int) -> None:
            _layout_of(dims, plane_list, low_high, given_layout)
            for name, source in opened.items():
                _refuse_repeats(source, counts[name], specs[name], "images")
                if name == "real":
                    synthetic_real.extend(_refuse_synthetic_real(source, real, allow_synthetic_real))

        sources, dims = open_sources(real, real_split, parsed, counts, seed, scratch, device=device, check=check)
        plane_list, low_high = _layout_of(dims, plane_list, low_high, given_layout)
        design = plan_single(counts, {n: len(src) for n, src in sources.items()}, plane_list, low_high, rng)
        plans = present_single(design)
        page = scratch / PAGE_DIR
        key_items = _write_single_images(page, plans, sources, window, names[0])
        page_items = [{"pair": item["pair"], "plane": item["plane"], "image": f"{IMAGE_DIR}/{item['image']}"}
                      for item in key_items]
        data = {"study": sid, "mode": "single", "question": QUESTIONS["single"], "pairs": page_items,
                "title": title or "Reader study"}
        from medvol.study.reader.page import render_page

        with checked_write(page / PAGE_FILE, "study page") as path:
            path.write_text(render_page(data), encoding="utf-8")
        key = {
            "study": sid, "mode": "single", "seed": seed, "layout": LAYOUT, "page": PAGE_DIR, "images": IMAGE_DIR,
            "presentation": "image ids, image names and page order drawn from secrets, not from the seed",
            "choices": list(SINGLE_CHOICES), "real_share": real_share,
            "counts": {"real": counts["real"], "synthetic": images - counts["real"]},
            "pairs": key_items,
            "sources": {name: source.origin for name, source in sources.items()},
            "window": window, "planes": plane_list, "positions": list(low_high) if dims == 3 else None,
            "real_split": real_split,
            "dims": dims,
            "allow_synthetic_real": bool(allow_synthetic_real), "synthetic_real": synthetic_real,
            "medvol_version": medvol.__version__, "threads": torch_threads(),
        }
        _publish(out, scratch, page, key, identity, overwrite,
                 [spec for _, spec in parsed] + [real] + [item for src in sources.values() for item in src.items])
    return out


def _layout_of(dims: int, plane_list: list[str], low_high: tuple[float, float], given: dict):
    """The planes and slice positions of a study: as given for volumes; for 2D images there are
    none (one "plane", :data:`PLANE_2D`), and giving them is refused."""
    if dims == 3:
        return plane_list, low_high
    named = [option for option, value in given.items() if value is not None]
    if named:
        raise MedvolError(f"{named[0]}: the study's sources are 2D images, which have no planes or slice positions")
    return [PLANE_2D], low_high  # positions drawn by the design, never used


def _view(array: np.ndarray, plane: str, position: float, shape) -> tuple[np.ndarray, int | None]:
    """What a reader sees of an array of ``shape``: a 2D image itself (slice None), or the slice
    of a volume at ``position`` in ``plane``."""
    from medvol.data.datasets import take_slice

    if plane == PLANE_2D:
        return np.array(array), None
    axis = PLANES.index(plane)
    k = int(round(position * (shape[axis] - 1)))
    return np.array(take_slice(array, plane, k)), k


def _check_shape(shape, dims: int, what: str) -> None:
    if len(shape) != dims or min(shape) < 2:
        raise MedvolError(f"{what}: shape {tuple(shape)} is not a {'3D volume' if dims == 3 else '2D image'}")


def _write_single_images(folder: Path, plans: list[ItemPlan], sources: dict[str, Source], window: str,
                         first_fake: str) -> list[dict]:
    """One PNG per item, every one at the shape of the first fake's volumes (real volumes are
    resized to it, as in the pairs), so that the image size never tells a real image apart."""
    (folder / IMAGE_DIR).mkdir(parents=True)
    shape, spacing = None, None
    reference = next((p.source for p in plans if p.source[0] == first_fake), None)
    if reference is not None:
        array, spacing = sources[first_fake].load(reference[1])
        shape = array.shape
    if shape is None:
        raise MedvolError(f"{sources[first_fake].items[0]}: no image of it is shown")
    _check_shape(shape, sources[first_fake].dims, sources[first_fake].items[0])
    items = []
    for number, plan in enumerate(plans, start=1):
        name, index = plan.source
        what = sources[name].items[index]
        array, own_spacing = sources[name].load(index)
        array = fit_to_shape(array, own_spacing, shape, spacing, what)
        image, k = _view(array, plan.plane, plan.position, shape)
        limits = resolve_window(window, image)
        try:
            pixels = to_uint8(image, limits)
        except MedvolError as error:
            raise MedvolError(f"{what}: {error}") from None
        write_png(pixels, folder / IMAGE_DIR / plan.image)
        items.append({"pair": plan.item, "number": number, "source": name,
                      "truth": "real" if name == "real" else "synthetic", "image": plan.image, "volume": what,
                      "plane": plan.plane, "slice": k, "position": None if k is None else round(plan.position, 4),
                      "shape": list(shape),
                      "window": [round(v, 3) for v in limits]})
        log.info("image %d/%d: %s", number, len(plans), plan.item)
    return items


def _same_times(paths: list[Path]) -> None:
    """Give every file of the page one modification time, so that the times say nothing about
    the order in which images were written."""
    now = time.time_ns()
    for path in paths:
        os.utime(path, ns=(now, now))


def _write_images(folder: Path, plans: list[PairPlan], sources: dict[str, Source], window: str, mode: str) -> list[dict]:
    (folder / IMAGE_DIR).mkdir(parents=True)
    key_pairs = []
    for number, plan in enumerate(plans, start=1):
        loaded = {side: sources[name].load(index) for side, (name, index) in zip(("left", "right"), plan.sides)}
        target_side = _target_side(plan, loaded, mode)
        shape, spacing = loaded[target_side][0].shape, loaded[target_side][1]
        name, index = plan.sides[0 if target_side == "left" else 1]
        _check_shape(shape, sources[name].dims, sources[name].items[index])
        arrays = {}
        for side, (name, index) in zip(("left", "right"), plan.sides):
            array, own_spacing = loaded[side]
            arrays[side] = fit_to_shape(array, own_spacing, shape, spacing, sources[name].items[index])
        views = {side: _view(arrays[side], plan.plane, plan.position, shape) for side in arrays}
        slices, k = {side: image for side, (image, _) in views.items()}, views["left"][1]
        limits = resolve_window(window, slices["left"], slices["right"])
        for side in ("left", "right"):
            name, index = plan.sides[0 if side == "left" else 1]
            try:
                image = to_uint8(slices[side], limits)
            except MedvolError as error:
                raise MedvolError(f"{sources[name].items[index]}: {error}") from None
            write_png(image, folder / IMAGE_DIR / plan.images[0 if side == "left" else 1])
        key_pairs.append({
            "pair": plan.pair, "number": number,
            "left": plan.sides[0][0], "right": plan.sides[1][0],
            "left_image": plan.images[0], "right_image": plan.images[1],
            "left_volume": sources[plan.sides[0][0]].items[plan.sides[0][1]],
            "right_volume": sources[plan.sides[1][0]].items[plan.sides[1][1]],
            "plane": plan.plane, "slice": k, "position": None if k is None else round(plan.position, 4),
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
                   "left": f"{IMAGE_DIR}/{p['left_image']}", "right": f"{IMAGE_DIR}/{p['right_image']}"}
                  for p in key_pairs]
    data = {"study": sid, "mode": mode, "question": QUESTIONS[mode], "pairs": page_pairs,
            "title": title or "Reader study"}
    with checked_write(folder / PAGE_FILE, "study page") as path:
        path.write_text(render_page(data), encoding="utf-8")
