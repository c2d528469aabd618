"""Scoring answer files: the figures on fixed answer tables, the outputs, and bad answer files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medvol import cli
from medvol.errors import MedvolError
from medvol.study.reader.answers import read_answers
from medvol.study.reader.score import score_answers, score_study

scipy_stats = pytest.importorskip("scipy.stats")


def _key(tmp_path: Path, mode: str, sources: list[tuple[str, str]]) -> Path:
    folder = tmp_path / "study"
    folder.mkdir()
    pairs = [{"pair": f"p{i:02d}", "left": a, "right": b, "plane": "axial"} for i, (a, b) in enumerate(sources)]
    (folder / "key.json").write_text(json.dumps({"mode": mode, "pairs": pairs}))
    return folder


def _write_csv(path: Path, rows: list[list], header=("reader", "pair", "choice", "difficulty", "seconds")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def crfgan_like(tmp_path):
    """30 pairs CRF-GAN vs HA-GAN (sides alternating), 12 readers, 215 votes for CRF-GAN."""
    sources = [("crfgan", "hagan") if i % 2 else ("hagan", "crfgan") for i in range(30)]
    study = _key(tmp_path, "model-vs-model", sources)
    rng = np.random.default_rng(0)
    votes = np.full(30, 7)
    votes[:5] += 1  # 7 * 30 + 5 = 215 readers' votes for crfgan in all
    rows = []
    for i, (left, right) in enumerate(sources):
        for_crf = set(rng.permutation(12)[:votes[i]].tolist())
        for r in range(12):
            side = "left" if (left == "crfgan") == (r in for_crf) else "right"
            rows.append([f"R{r:02d}", f"p{i:02d}", side, 1 + (i + r) % 5, 4.5])
    return study, _write_csv(tmp_path / "answers.csv", rows), votes


def test_model_vs_model_votes_and_both_chi2_forms(crfgan_like, tmp_path):
    study, answers, votes = crfgan_like
    result = score_study(study, [answers], tmp_path / "out")
    assert result["votes"] == {"crfgan": 215, "hagan": 145}
    assert result["chi2_totals"]["chi2"] == pytest.approx(13.61, abs=0.005)
    assert result["chi2_totals"]["p"] == pytest.approx(scipy_stats.chisquare([215, 145]).pvalue, rel=1e-9)
    table = np.stack([votes, 12 - votes], axis=1)
    chi2, p, df, _ = scipy_stats.chi2_contingency(table, correction=False)
    assert result["chi2_pairs"] == {"chi2": pytest.approx(chi2), "p": pytest.approx(p), "df": 29}
    assert result["votes_per_pair"]["crfgan"]["mean"] == pytest.approx(215 / 30)
    assert result["votes_per_pair"]["crfgan"]["sd"] == pytest.approx(np.std(votes, ddof=1))
    on_disk = json.loads((tmp_path / "out" / "score.json").read_text(encoding="utf-8"))
    assert on_disk["votes"] == {"crfgan": 215, "hagan": 145}
    assert set(on_disk["chi2_totals"]) >= {"chi2", "p", "df"} and "fleiss_kappa" in on_disk
    markdown = (tmp_path / "out" / "score.md").read_text(encoding="utf-8")
    assert "χ² = 13.61" in markdown and "df = 29" in markdown
    assert (tmp_path / "out" / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" not in result  # no right answer in model-vs-model


def test_fleiss_kappa_is_computed_on_the_pairs_by_sources_table(crfgan_like):
    from medvol.study.reader.answers import load_key
    from medvol.study.reader.stats import fleiss_kappa

    study, answers, votes = crfgan_like
    key = load_key(study)
    by_reader, _ = read_answers([answers], key)
    result = score_answers(key, by_reader)
    assert result["fleiss_kappa"] == pytest.approx(fleiss_kappa(np.stack([votes, 12 - votes], axis=1)))
    # Readers who all agree on every pair (crfgan on even pairs, hagan on odd ones): κ = 1.
    for mine in by_reader.values():
        for pair, answer in list(mine.items()):
            winner = "crfgan" if int(pair[1:]) % 2 == 0 else "hagan"
            side = "left" if next(p for p in key["pairs"] if p["pair"] == pair)["left"] == winner else "right"
            mine[pair] = answer.__class__(answer.reader, pair, side, answer.difficulty, answer.seconds)
    assert score_answers(key, by_reader)["fleiss_kappa"] == pytest.approx(1.0)
    # Everyone always for crfgan: one category only, κ undefined (None), χ² per pair undefined.
    for mine in by_reader.values():
        for pair, answer in list(mine.items()):
            side = "left" if next(p for p in key["pairs"] if p["pair"] == pair)["left"] == "crfgan" else "right"
            mine[pair] = answer.__class__(answer.reader, pair, side, answer.difficulty, answer.seconds)
    unanimous = score_answers(key, by_reader)
    assert unanimous["fleiss_kappa"] is None and unanimous["chi2_pairs"]["chi2"] is None
    assert unanimous["votes"] == {"crfgan": 360, "hagan": 0}


def test_real_vs_fake_accuracy_dprime_and_tost(tmp_path):
    sources = [("real", "gan") if i % 2 else ("gan", "real") for i in range(10)]
    study = _key(tmp_path, "real-vs-fake", sources)
    rows = []
    for r, n_correct in (("A", 10), ("B", 6)):
        for i, (left, _) in enumerate(sources):
            real_side = "left" if left == "real" else "right"
            wrong = "right" if real_side == "left" else "left"
            rows.append([r, f"p{i:02d}", real_side if i < n_correct else wrong, 3, 2.0])
    result = score_study(study, [_write_csv(tmp_path / "a.csv", rows)], tmp_path / "out", plot=False)
    acc = result["accuracy"]
    assert acc["by_reader"]["A"]["accuracy"] == 1.0 and acc["by_reader"]["B"]["accuracy"] == 0.6
    ci = scipy_stats.binomtest(16, 20).proportion_ci(method="exact")
    assert acc["pooled"]["ci"] == [pytest.approx(ci.low), pytest.approx(ci.high)]
    assert acc["by_reader"]["A"]["dprime"] == pytest.approx(2 ** 0.5 * scipy_stats.norm.ppf(0.95))
    assert acc["by_reader"]["A"]["verdict"].startswith("distinguishable")
    # 6 of 10 is not different from chance, and not shown equivalent either.
    assert acc["by_reader"]["B"]["verdict"] == "inconclusive" and not acc["by_reader"]["B"]["equivalent"]
    assert result["votes"] == {"real": 16, "gan": 4}
    assert result["likert"]["pooled"]["counts"]["3"] == 20


def test_indistinguishable_only_from_equivalence(tmp_path):
    sources = [("real", "gan") if i % 2 else ("gan", "real") for i in range(40)]
    study = _key(tmp_path, "real-vs-fake", sources)
    rows = []
    for r in range(10):
        for i, (left, _) in enumerate(sources):
            real_side = "left" if left == "real" else "right"
            correct = (i + r) % 2 == 0  # exactly half right
            rows.append([f"R{r}", f"p{i:02d}", real_side if correct else ("right" if real_side == "left" else "left"), 2, 1])
    result = score_study(study, [_write_csv(tmp_path / "a.csv", rows)], tmp_path / "out", plot=False)
    assert result["accuracy"]["pooled"]["equivalent"]
    assert result["accuracy"]["pooled"]["verdict"].startswith("indistinguishable")
    # The same 50 % from one reader (40 answers) cannot show equivalence within ±0.1.
    assert result["accuracy"]["by_reader"]["R0"]["verdict"] == "inconclusive"


@pytest.mark.parametrize("edit,message", [
    (lambda rows: rows[:-1], "reader R11 has no answer for pair p29"),
    (lambda rows: rows + [["R00", "nosuchpair", "left", 3, 1.0]], "row 362: unknown pair 'nosuchpair'"),
    (lambda rows: [rows[0][:2] + ["middle"] + rows[0][3:]] + rows[1:], "row 2: choice 'middle'"),
    (lambda rows: [rows[0][:3] + [7] + rows[0][4:]] + rows[1:], "row 2: difficulty '7'"),
    (lambda rows: [rows[0][:4] + ["-2"]] + rows[1:], "row 2: seconds '-2'"),
    (lambda rows: rows + [rows[0]], "repeats an answer"),
])
def test_bad_answer_rows_name_file_and_row(crfgan_like, tmp_path, edit, message):
    study, answers, _ = crfgan_like
    with open(answers, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    bad = _write_csv(tmp_path / "bad.csv", edit(rows))
    with pytest.raises(MedvolError) as error:
        score_study(study, [bad], tmp_path / "out")
    assert message in str(error.value) and str(bad) in str(error.value)


def test_wrong_column_is_one_line_error_from_the_cli(crfgan_like, tmp_path, capsys):
    study, answers, _ = crfgan_like
    rows = list(csv.reader(open(answers, newline="", encoding="utf-8")))[1:]
    bad = _write_csv(tmp_path / "bad.csv", rows, header=("reader", "pair", "side", "difficulty", "seconds"))
    assert cli.main(["study", "reader", "score", str(study), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: row 1: unknown column 'side'" in err[0]
    assert not (tmp_path / "o" / "score.json").exists()


def test_cli_score_prints_votes_and_chi2(crfgan_like, tmp_path, capsys):
    study, answers, _ = crfgan_like
    assert cli.main(["study", "reader", "score", str(study), str(answers), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "votes crfgan 215, hagan 145" in out and "chi2 totals 13.61" in out


def test_json_answers_with_odd_values_name_the_answer(crfgan_like, tmp_path):
    study, _, _ = crfgan_like
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"reader": 7, "answers": [{"pair": 3, "choice": "left", "difficulty": 2, "seconds": 1}]}))
    with pytest.raises(MedvolError, match=r"r\.json: answer 1: unknown pair '3'"):
        score_study(study, [bad], tmp_path / "out")
    bad.write_text(json.dumps({"reader": "R", "answers": [{"pair": "p00", "side": "left"}]}))
    with pytest.raises(MedvolError, match=r"r\.json: answer 1: unknown field 'side'"):
        score_study(study, [bad], tmp_path / "out")


def _answers_for(study: Path, path: Path, choice: str = "left") -> Path:
    pairs = json.loads((study / "key.json").read_text(encoding="utf-8"))["pairs"]
    return _write_csv(path, [["R01", p["pair"], choice, 3, 2.0] for p in pairs])


def test_score_never_replaces_a_users_file_even_with_overwrite(crfgan_like, tmp_path, capsys):
    study, answers, _ = crfgan_like
    out = tmp_path / "o"
    out.mkdir()
    (out / "score.md").write_text("my own notes", encoding="utf-8")
    argv = ["study", "reader", "score", str(study), str(answers), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files medvol did not write" in err[0] and "score.md" in err[0]
    assert cli.main(argv + ["--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "score.md: exists and was not written by medvol" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [".medvol-output.json", "score.md"]  # nothing written
    assert (out / "score.md").read_text(encoding="utf-8") == "my own notes"


def test_score_out_of_another_scoring_needs_overwrite(crfgan_like, tmp_path, capsys):
    study, answers, _ = crfgan_like
    out = tmp_path / "o"
    argv = ["study", "reader", "score", str(study), str(answers), "--out", str(out)]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # the same scoring again continues in its own folder
    first = json.loads((out / "score.json").read_text(encoding="utf-8"))
    rows = list(csv.reader(open(answers, newline="", encoding="utf-8")))[1:]
    fewer = _write_csv(tmp_path / "fewer.csv", [r for r in rows if r[0] != "R00"])
    capsys.readouterr()
    other = ["study", "reader", "score", str(study), str(fewer), "--out", str(out)]
    assert cli.main(other) == 2
    assert "holds the outputs of another medvol study-reader-score" in capsys.readouterr().err
    assert json.loads((out / "score.json").read_text(encoding="utf-8")) == first
    assert cli.main(other + ["--overwrite"]) == 0
    assert len(json.loads((out / "score.json").read_text(encoding="utf-8"))["readers"]) == 11


def test_score_out_in_the_study_or_its_page_is_refused(rvf_study, tmp_path):
    answers = _answers_for(rvf_study, tmp_path / "a.csv")
    before = sorted(p.relative_to(rvf_study).as_posix() for p in rvf_study.rglob("*"))
    for out in (rvf_study, rvf_study / "page", rvf_study / "page" / "scores"):
        with pytest.raises(MedvolError, match="study folder or inside its page folder"):
            score_study(rvf_study, [answers], out, plot=False, overwrite=True)
    assert sorted(p.relative_to(rvf_study).as_posix() for p in rvf_study.rglob("*")) == before


def test_score_finds_the_key_in_both_layouts(rvf_study, tmp_path):
    import shutil

    answers = _answers_for(rvf_study, tmp_path / "a.csv")
    new = score_study(rvf_study, [answers], tmp_path / "new", plot=False)
    pair = json.loads((rvf_study / "key.json").read_text(encoding="utf-8"))["pairs"][0]
    assert new["per_pair"][0]["images"] == {"left": f"page/images/{pair['left_image']}",
                                            "right": f"page/images/{pair['right_image']}"}
    # A study made before the page moved to page/: key.json beside index.html and images/.
    old = tmp_path / "old_study"
    shutil.copytree(rvf_study / "page", old)
    key = json.loads((rvf_study / "key.json").read_text(encoding="utf-8"))
    for name in ("layout", "page", "images"):
        key.pop(name)
    (old / "key.json").write_text(json.dumps(key), encoding="utf-8")
    again = score_study(old, [answers], tmp_path / "old", plot=False)
    assert again["accuracy"] == new["accuracy"] and "images" not in again["per_pair"][0]
    # The page folder of a new study is not a study: the message says where the key is.
    with pytest.raises(MedvolError, match=r"page folder of a study .*give the study folder"):
        score_study(rvf_study / "page", [answers], tmp_path / "x", plot=False)


@pytest.mark.parametrize("field,value", [("left_image", "../../key.json"), ("right_image", "/etc/passwd"),
                                         ("page", ".."), ("images", "../..")])
def test_names_in_the_key_stay_inside_the_page_folder(rvf_study, tmp_path, field, value):
    import shutil

    study = tmp_path / "study"
    shutil.copytree(rvf_study, study)
    key = json.loads((study / "key.json").read_text(encoding="utf-8"))
    if field in ("page", "images"):
        key[field] = value
    else:
        key["pairs"][0][field] = value
    (study / "key.json").write_text(json.dumps(key), encoding="utf-8")
    with pytest.raises(MedvolError, match=rf"key\.json .*{field}.*{value}"):
        score_study(study, [_answers_for(study, tmp_path / "a.csv")], tmp_path / "o", plot=False)
    assert not (tmp_path / "o").exists()
