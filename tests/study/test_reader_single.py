"""The single-image reader study (visual Turing test): make, blindness, scoring against oracles.

The blindness attacks mirror tests/study/test_reader_blind.py: every real and every "generated"
volume is the same phantom file, so only the presentation (ids, order, names, bytes, times, the
slots the seed draws) could tell a real image from a synthetic one, and no attack may beat a coin.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.study.reader import stats
from medvol.study.reader.answers import Answer
from medvol.study.reader.make import make_study
from medvol.study.reader.score import score_single, score_study

IMAGES = 60
#: Correct answers out of IMAGES beyond which a coin is left behind (about 4e-7 per tail).
LIMIT = 19


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """``real`` and ``fake`` folders of IMAGES / 2 volumes each, all hard links of one phantom."""
    from medvol.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("twins_single")
    original = write_phantoms(1, 48, root / "original", seed=11)[0]
    folders = {"real": root / "scans", "fake": root / "generated"}
    for name, folder in folders.items():
        folder.mkdir()
        for i in range(IMAGES // 2):
            os.link(original, folder / f"{name}_{i:04d}.nii.gz")
    return folders


def _make(out: Path, twins: dict[str, Path]) -> Path:
    return make_study(out, [f"gan={twins['fake']}"], str(twins["real"]), mode="single", images=IMAGES, seed=0,
                      positions="0.1,0.9")


def _page(study: Path) -> tuple[Path, dict]:
    page = study / "page"
    html = (page / "index.html").read_text(encoding="utf-8")
    return page, json.loads(re.search(r'<script id="study-data" type="application/json">(.*?)</script>',
                                      html, re.S).group(1))


def _truth(study: Path, data: dict) -> list[str]:
    key = {p["pair"]: p for p in json.loads((study / "key.json").read_text(encoding="utf-8"))["pairs"]}
    return [key[item["pair"]]["truth"] for item in data["pairs"]]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, twins):
    root = tmp_path_factory.mktemp("attacked_single")
    return _make(root / "study", twins), _make(root / "replay", twins)


def test_single_page_holds_images_only_and_no_key(attacked):
    assert_single_page_holds_images_only(attacked[0])


def assert_single_page_holds_images_only(study: Path) -> None:
    """The page: ids, planes and image paths only; no key, no hidden file; one time; bare PNGs."""
    page, data = _page(study)
    assert set(data) == {"study", "mode", "question", "title", "pairs"} and data["mode"] == "single"
    assert not list(page.rglob("key.json")) and (study / "key.json").is_file()
    assert not [p for p in page.rglob("*") if p.name.startswith(".")]
    times = {(page / item["image"]).stat().st_mtime_ns for item in data["pairs"]}
    assert len(times) == 1
    for item in data["pairs"]:
        assert set(item) == {"pair", "plane", "image"}
        raw = (page / item["image"]).read_bytes()
        at, chunks = 8, []
        while at < len(raw):
            length, kind = struct.unpack(">I4s", raw[at:at + 8])
            chunks.append(kind)
            at += 12 + length
        assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}


def test_no_attack_on_the_single_page_beats_a_coin(attacked):
    assert_no_single_attack_beats_a_coin(*attacked)


def assert_no_single_attack_beats_a_coin(study: Path, replay: Path) -> None:
    """Every attack on a single-image study of IMAGES images, half real, all of the same pixels
    (``replay``: the attacker's copy with the same code, inputs and seed), stays within LIMIT of a coin."""
    page, data = _page(study)
    truth = _truth(study, data)
    assert Counter(truth) == {"real": IMAGES // 2, "synthetic": IMAGES // 2}
    replay_page, replay_data = _page(replay)
    replay_truth = _truth(replay, replay_data)
    by_id = dict(zip((p["pair"] for p in replay_data["pairs"]), replay_truth))
    by_content: dict[bytes, list[str]] = {}
    for item, t in zip(replay_data["pairs"], replay_truth):
        by_content.setdefault((replay_page / item["image"]).read_bytes(), []).append(t)

    def majority(values: list[str]) -> str | None:
        counts = Counter(values).most_common()
        return None if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]) else counts[0][0]

    def by_feature(feature) -> list[str | None]:
        """Guess "real" for the images whose feature lies below the median (None at the median)."""
        values = [feature(page / item["image"]) for item in data["pairs"]]
        middle = sorted(values)[len(values) // 2]
        return [None if v == middle else "real" if v < middle else "synthetic" for v in values]

    attacks = {
        "replay: same image id": [by_id.get(item["pair"]) for item in data["pairs"]],
        "replay: same page position": replay_truth,
        # The seed fixes the slots (plane, slice): were the sources dealt to them by the seed, the
        # attacker's copy would tell which slices are the real ones.
        "replay: same image content": [majority(by_content.get((page / item["image"]).read_bytes(), []))
                                       for item in data["pairs"]],
        "page position (first half real)": ["real" if i < IMAGES // 2 else "synthetic" for i in range(IMAGES)],
        "file name order": by_feature(lambda p: p.name),
        "inode (creation order)": by_feature(lambda p: p.stat().st_ino),
        "modification time": by_feature(lambda p: p.stat().st_mtime_ns),
        "file size": by_feature(lambda p: p.stat().st_size),
        "listing order": by_feature(lambda p: os.listdir(p.parent).index(p.name)),
    }
    for name, guesses in attacks.items():
        correct = sum((g or "real") == t for g, t in zip(guesses, truth))
        assert abs(correct - IMAGES / 2) < LIMIT, f"attack '{name}' recovers {correct} of {IMAGES}"


def test_every_image_has_the_fakes_shape(tmp_path):
    """Real volumes of another size are resized to the generated one: the image size tells nothing."""
    from PIL import Image

    from medvol.data.phantom import write_phantoms

    write_phantoms(3, 40, tmp_path / "real", seed=0)
    write_phantoms(3, 32, tmp_path / "fake", seed=4)
    study = make_study(tmp_path / "s", [f"g={tmp_path / 'fake'}"], str(tmp_path / "real"), mode="single",
                       images=6, real_share=0.5, planes="axial,coronal")
    sizes = {Image.open(p).size for p in (study / "page" / "images").glob("*.png")}
    assert sizes == {(32, 32)}
    key = json.loads((study / "key.json").read_text(encoding="utf-8"))
    assert key["counts"] == {"real": 3, "synthetic": 3} and key["mode"] == "single"
    assert len({p["volume"] for p in key["pairs"]}) == 6  # no volume shown twice


def test_the_real_share_is_an_option(tmp_path, phantom_sources):
    study = make_study(tmp_path / "s", [f"a={phantom_sources['fakeA']}", f"b={phantom_sources['fakeB']}"],
                       str(phantom_sources["real"]), mode="single", images=8, real_share=0.25)
    key = json.loads((study / "key.json").read_text(encoding="utf-8"))
    assert Counter(p["source"] for p in key["pairs"]) == {"real": 2, "a": 3, "b": 3}


@pytest.mark.parametrize("args, culprit", [
    (["--images", "10", "--real-share", "0"], "--real-share 0.0"),
    (["--images", "10", "--real-share", "1"], "--real-share 1.0"),
    (["--images", "3", "--real-share", "0.1"], "gives 0 real images"),
    (["--images", "20"], "volume(s) for 10 images"),
    (["--pairs", "4"], "--pairs is not used by --mode single"),
])
def test_single_make_refusals_are_one_line(tmp_path, phantom_sources, capsys, args, culprit):
    code = main(["study", "reader", "make", "--mode", "single", "--real", str(phantom_sources["real"]),
                 "--fake", f"g={phantom_sources['fakeA']}", "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2 and culprit in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s" / "key.json").exists()


def test_images_option_is_refused_in_pair_modes(tmp_path, phantom_sources, capsys):
    code = main(["study", "reader", "make", "--real", str(phantom_sources["real"]), "--fake",
                 f"g={phantom_sources['fakeA']}", "--images", "4", "--out", str(tmp_path / "s")])
    assert code == 2 and "--images and --real-share are for --mode single" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ scoring


def _key(truths: list[str]) -> dict:
    return {"mode": "single", "study": "t", "pairs": [{"pair": f"i{n}", "truth": t, "plane": "axial",
                                                       "source": "real" if t == "real" else "gan"}
                                                      for n, t in enumerate(truths)]}


def _answers(reader: str, choices: list[str]) -> dict[str, Answer]:
    return {f"i{n}": Answer(reader, f"i{n}", c, 3, 1.0) for n, c in enumerate(choices)}


def test_rates_match_scipy_exact_intervals_and_binomial_test():
    seeded_rng = np.random.default_rng(20261207)
    scipy_stats = pytest.importorskip("scipy.stats")
    truths = ["real"] * 50 + ["synthetic"] * 50
    readers = {}
    for r in ("A", "B", "C", "D"):
        flip = seeded_rng.random(100) < 0.4  # about 60 % accuracy, as in the empirical study
        readers[r] = _answers(r, [("synthetic" if t == "real" else "real") if f else t for t, f in zip(truths, flip)])
    got = score_single(_key(truths), readers)
    for name, rates in [*got["by_reader"].items(), ("pooled", got["pooled"])]:
        answers = list(readers[name].values()) if name != "pooled" else [a for r in readers.values() for a in r.values()]
        truth = {f"i{n}": t for n, t in enumerate(truths)}
        k = sum(a.choice == truth[a.pair] for a in answers)
        test = scipy_stats.binomtest(k, len(answers))
        ci = test.proportion_ci(confidence_level=0.95, method="exact")
        assert rates["accuracy"]["k"] == k and rates["accuracy"]["n"] == len(answers)
        assert rates["accuracy"]["ci"] == pytest.approx([ci.low, ci.high], abs=1e-9)
        assert rates["accuracy"]["p_vs_chance"] == pytest.approx(test.pvalue, rel=1e-9)
        tp = sum(a.choice == "synthetic" for a in answers if truth[a.pair] == "synthetic")
        tn = sum(a.choice == "real" for a in answers if truth[a.pair] == "real")
        n_syn = sum(truth[a.pair] == "synthetic" for a in answers)
        sens = scipy_stats.binomtest(tp, n_syn).proportion_ci(method="exact")
        spec = scipy_stats.binomtest(tn, len(answers) - n_syn).proportion_ci(method="exact")
        assert rates["sensitivity"]["ci"] == pytest.approx([sens.low, sens.high], abs=1e-9)
        assert rates["specificity"]["ci"] == pytest.approx([spec.low, spec.high], abs=1e-9)
        assert rates["sensitivity"]["value"] == tp / n_syn and rates["specificity"]["value"] == tn / (len(answers) - n_syn)


def test_a_reader_who_calls_everything_real():
    truths = ["real"] * 6 + ["synthetic"] * 4
    got = score_single(_key(truths), {"A": _answers("A", ["real"] * 10)})
    r = got["by_reader"]["A"]
    assert (r["accuracy"]["value"], r["sensitivity"]["value"], r["specificity"]["value"]) == (0.6, 0.0, 1.0)
    assert r["called_real"] == 10 and got["fleiss_kappa"] is None


def test_fleiss_kappa_of_the_images_by_answers_table():
    truths = ["real", "real", "synthetic", "synthetic", "real", "synthetic"]
    # Two readers in full agreement, both categories used: kappa 1.
    same = ["real", "synthetic", "synthetic", "real", "real", "synthetic"]
    assert score_single(_key(truths), {"A": _answers("A", same), "B": _answers("B", same)})["fleiss_kappa"] == \
        pytest.approx(1.0)
    # Three readers: kappa from the textbook formula on the per-image counts, computed here.
    a = ["real", "real", "synthetic", "synthetic", "real", "real"]
    b = ["real", "synthetic", "synthetic", "real", "real", "synthetic"]
    c = ["synthetic", "real", "synthetic", "real", "real", "real"]
    got = score_single(_key(truths), {"A": _answers("A", a), "B": _answers("B", b), "C": _answers("C", c)})
    reals = np.array([sum(x[i] == "real" for x in (a, b, c)) for i in range(6)])
    counts = np.stack([reals, 3 - reals], axis=1)
    agree = ((counts * (counts - 1)).sum(axis=1) / 6).mean()
    shares = counts.sum(axis=0) / 18
    chance = (shares ** 2).sum()
    assert got["fleiss_kappa"] == pytest.approx((agree - chance) / (1 - chance))
    assert got["fleiss_kappa"] == pytest.approx(stats.fleiss_kappa(counts))
    assert [p["votes"]["real"] for p in got["per_pair"]] == list(reals)


def test_score_single_from_the_cli(tmp_path, phantom_sources, capsys):
    study = make_study(tmp_path / "s", [f"g={phantom_sources['fakeA']}"], str(phantom_sources["real"]),
                       mode="single", images=8)
    key = json.loads((study / "key.json").read_text(encoding="utf-8"))
    files = []
    for reader in ("R1", "R2"):
        rows = ["reader,pair,choice,difficulty,seconds"]
        rows += [f"{reader},{p['pair']},{p['truth'] if reader == 'R1' else 'real'},2,1.5" for p in key["pairs"]]
        files.append(tmp_path / f"{reader}.csv")
        files[-1].write_text("\n".join(rows) + "\n", encoding="utf-8")
    code = main(["study", "reader", "score", str(study), *map(str, files), "--out", str(tmp_path / "score")])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy 0.750" in out
    result = json.loads((tmp_path / "score" / "score.json").read_text(encoding="utf-8"))
    assert result["by_reader"]["R1"]["accuracy"]["value"] == 1.0
    assert result["by_reader"]["R2"]["specificity"]["value"] == 1.0
    assert result["by_reader"]["R2"]["sensitivity"]["value"] == 0.0
    assert all(p["image"].startswith("page/images/") for p in result["per_pair"])
    assert "visual Turing test" in (tmp_path / "score" / "score.md").read_text(encoding="utf-8")
    # A pair-mode answer (left/right) is refused, naming file and row.
    bad = tmp_path / "bad.csv"
    bad.write_text(f"reader,pair,choice,difficulty,seconds\nR3,{key['pairs'][0]['pair']},left,2,1\n", encoding="utf-8")
    code = main(["study", "reader", "score", str(study), str(bad), "--out", str(tmp_path / "score2")])
    err = capsys.readouterr().err
    assert code == 2 and "row 2: choice 'left', expected real or synthetic" in err


def test_a_single_key_without_both_truths_is_refused(tmp_path):
    from medvol.study.reader.answers import load_key

    path = tmp_path / "key.json"
    path.write_text(json.dumps(dict(_key(["real", "real"]), layout=1)), encoding="utf-8")
    with pytest.raises(MedvolError, match="both real and synthetic"):
        load_key(path)
