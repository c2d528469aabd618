"""``medvol study reader score``: accuracy, d′, votes, χ², Fleiss' κ, Likert; JSON, markdown, plot.

- single (the visual Turing test: one image, "real or synthetic?"): per reader and pooled, the
  accuracy, the sensitivity (synthetic images called synthetic) and the specificity (real images
  called real), each with its exact (Clopper–Pearson) interval; the exact two-sided binomial test
  of the accuracy against 0.5; Fleiss' κ between readers on images × {real, synthetic}.

What is computed (docs/studies.md explains each choice):

- real-vs-fake: per reader and pooled, the proportion of pairs where the real image was chosen,
  its exact (Clopper–Pearson) interval, d′ = √2 Φ⁻¹(PC), and a TOST equivalence test of the
  proportion against 0.5 with ``margin``. "Indistinguishable" is said only when TOST rejects
  non-equivalence; a non-significant difference from 0.5 is reported as inconclusive.
- Both modes: votes per source (how often each was chosen), the χ² goodness of fit of the vote
  totals to the shares expected by chance (each source shown equally often: equal shares), the
  per-pair contingency χ² (pairs × the pair's two sources), each source's votes per pair (mean
  and SD over pairs), Fleiss' κ between readers on the same table, Likert and time summaries.

Pooled figures treat every (reader, pair) answer as one independent trial, which they are not
(the same pairs are seen by every reader); per-reader figures and κ show how far that holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medvol.errors import MedvolError
from medvol.study.reader import stats
from medvol.study.reader.answers import Answer, key_images, key_path, load_key, read_answers
from medvol.utils import checked_write

DEFAULT_MARGIN = 0.1
DEFAULT_ALPHA = 0.05
#: The job name in the output marker (``medvol.outputs``).
JOB = "study-reader-score"


def _ordered_sources(key: dict) -> list[str]:
    names = {p["left"] for p in key["pairs"]} | {p["right"] for p in key["pairs"]}
    return (["real"] if "real" in names else []) + sorted(names - {"real"})


def vote_table(key: dict, by_reader: dict[str, dict[str, Answer]]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``(table, columns)``: table[i] = readers choosing the first / second source of pair i
    (first in source order: ``real``, then fake names sorted), columns[i] = those two names."""
    order = _ordered_sources(key)
    table, columns = [], []
    for pair in key["pairs"]:
        first, second = sorted((pair["left"], pair["right"]), key=order.index)
        chosen = [pair[answers[pair["pair"]].choice] for answers in by_reader.values()]
        table.append([chosen.count(first), chosen.count(second)])
        columns.append((first, second))
    return np.asarray(table, dtype=np.int64), columns


def _contingency(table: np.ndarray) -> dict:
    """The per-pair χ², or None values with the reason where it is undefined (a source that no
    reader ever chose, or a study of one pair)."""
    try:
        return stats.chi2_contingency(table)
    except MedvolError as error:
        return {"chi2": None, "p": None, "df": None, "undefined": str(error)}


def _summary(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"n": int(array.size), "mean": float(array.mean()), "median": float(np.median(array)),
            "sd": float(array.std(ddof=1)) if array.size > 1 else None}


def _likert(values: list[int]) -> dict:
    return dict(_summary(values), counts={str(level): values.count(level) for level in range(1, 6)})


def _accuracy(correct: int, n: int, margin: float, alpha: float, confidence: float) -> dict:
    low, high = stats.clopper_pearson(correct, n, confidence)
    dprime, used = stats.dprime_2afc(correct, n)
    tost = stats.tost_proportion(correct, n, margin)
    equivalent = tost["p"] < alpha
    above = low > 0.5
    verdict = ("indistinguishable (equivalent to chance)" if equivalent else
               "distinguishable (above chance)" if above else
               "below chance (fakes chosen as real more often)" if high < 0.5 else "inconclusive")
    return {"correct": correct, "n": n, "accuracy": correct / n, "ci": [low, high], "dprime": dprime,
            "dprime_proportion": used, "tost": tost, "equivalent": equivalent, "verdict": verdict}


def score_answers(key: dict, by_reader: dict[str, dict[str, Answer]], experience: dict | None = None, *,
                  margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA, confidence: float = 0.95) -> dict:
    """The score of a study (module docstring) as a JSON-ready dict."""
    if not 0.0 < alpha < 0.5:
        raise MedvolError(f"--alpha {alpha}: expected a level in (0, 0.5)")
    if not 0.0 < confidence < 1.0:
        raise MedvolError(f"--confidence {confidence}: expected a number in (0, 1)")
    stats.tost_proportion(0, 1, margin)  # a bad margin fails here, naming --margin
    if key["mode"] == "single":
        return score_single(key, by_reader, experience, confidence=confidence, alpha=alpha)
    readers = sorted(by_reader)
    order = _ordered_sources(key)
    pairs = key["pairs"]
    table, columns = vote_table(key, by_reader)
    votes = {name: 0 for name in order}
    shown = {name: 0 for name in order}
    per_pair_votes: dict[str, list[int]] = {name: [] for name in order}
    for row, (first, second) in zip(table, columns):
        for name, count in ((first, row[0]), (second, row[1])):
            votes[name] += int(count)
            shown[name] += len(readers)
            per_pair_votes[name].append(int(count))
    result: dict = {
        "mode": key["mode"], "study": key.get("study"), "n_pairs": len(pairs), "readers": readers,
        "experience": {r: (experience or {}).get(r) for r in readers},
        "votes": votes, "shown": shown,
        "votes_per_pair": {name: _summary(per_pair_votes[name]) for name in order},
        "chi2_totals": stats.chi2_goodness_of_fit([votes[n] for n in order], [shown[n] for n in order]),
        "chi2_pairs": _contingency(table),
        "per_pair": [{"pair": p["pair"], "plane": p.get("plane"), "votes": {a: int(r[0]), b: int(r[1])}}
                     for p, r, (a, b) in zip(pairs, table, columns)],
        "margin": margin, "alpha": alpha, "confidence": confidence,
    }
    result["fleiss_kappa"] = stats.fleiss_kappa(table) if len(readers) >= 2 else None
    if result["fleiss_kappa"] is not None and not np.isfinite(result["fleiss_kappa"]):
        result["fleiss_kappa"] = None  # every answer in one category: agreement is undefined

    all_answers = [by_reader[r][p["pair"]] for r in readers for p in pairs]
    key_of = {p["pair"]: p for p in pairs}
    result["likert"] = {"pooled": _likert([a.difficulty for a in all_answers]),
                        "by_reader": {r: _likert([a.difficulty for a in by_reader[r].values()]) for r in readers}}
    result["seconds"] = {"pooled": _summary([a.seconds for a in all_answers]),
                         "by_reader": {r: _summary([a.seconds for a in by_reader[r].values()]) for r in readers}}
    chosen = lambda a: key_of[a.pair][a.choice]  # noqa: E731 - the source an answer picked
    result["likert"]["by_choice"] = {name: _likert([a.difficulty for a in all_answers if chosen(a) == name])
                                     for name in order if any(chosen(a) == name for a in all_answers)}
    if key["mode"] == "real-vs-fake":
        def accuracy(answers: list[Answer]) -> dict:
            return _accuracy(sum(chosen(a) == "real" for a in answers), len(answers), margin, alpha, confidence)

        result["accuracy"] = {
            "pooled": accuracy(all_answers),
            "by_reader": {r: accuracy(list(by_reader[r].values())) for r in readers},
            "by_fake": {name: accuracy([a for a in all_answers if name in (key_of[a.pair]["left"], key_of[a.pair]["right"])])
                        for name in order if name != "real"},
        }
    else:
        result["votes_by_reader"] = {r: {name: sum(chosen(a) == name for a in by_reader[r].values()) for name in order}
                                     for r in readers}
    return result


def _proportion(k: int, n: int, confidence: float) -> dict:
    low, high = stats.clopper_pearson(k, n, confidence) if n else (None, None)
    return {"k": k, "n": n, "value": k / n if n else None, "ci": [low, high]}


def single_rates(answers: list[Answer], truth: dict[str, str], confidence: float) -> dict:
    """Accuracy, sensitivity (synthetic called synthetic) and specificity (real called real) of
    ``answers``, each with its exact interval, and the two-sided binomial p of the accuracy
    against 0.5."""
    correct = sum(a.choice == truth[a.pair] for a in answers)
    fakes = [a for a in answers if truth[a.pair] == "synthetic"]
    reals = [a for a in answers if truth[a.pair] == "real"]
    accuracy = _proportion(correct, len(answers), confidence)
    accuracy["p_vs_chance"] = stats.binom_test_two_sided(correct, len(answers))
    return {"accuracy": accuracy,
            "sensitivity": _proportion(sum(a.choice == "synthetic" for a in fakes), len(fakes), confidence),
            "specificity": _proportion(sum(a.choice == "real" for a in reals), len(reals), confidence),
            "called_real": sum(a.choice == "real" for a in answers)}


def score_single(key: dict, by_reader: dict[str, dict[str, Answer]], experience: dict | None = None, *,
                 confidence: float = 0.95, alpha: float = DEFAULT_ALPHA) -> dict:
    """The score of a single-image study (the visual Turing test) as a JSON-ready dict.

    Positive = synthetic: sensitivity is the share of synthetic images the readers called
    synthetic, specificity the share of real images called real. Pooled figures treat every
    (reader, image) answer as one trial (the same images are seen by every reader).
    """
    readers = sorted(by_reader)
    items = key["pairs"]
    truth = {item["pair"]: item["truth"] for item in items}
    source = {item["pair"]: item["source"] for item in items}
    all_answers = [by_reader[r][item["pair"]] for r in readers for item in items]
    table = np.asarray([[sum(by_reader[r][item["pair"]].choice == c for r in readers) for c in ("real", "synthetic")]
                        for item in items], dtype=np.int64)
    result: dict = {
        "mode": "single", "study": key.get("study"), "n_pairs": len(items), "n_images": len(items),
        "n_real": sum(t == "real" for t in truth.values()), "n_synthetic": sum(t == "synthetic" for t in truth.values()),
        "readers": readers, "experience": {r: (experience or {}).get(r) for r in readers},
        "positive": "synthetic", "confidence": confidence, "alpha": alpha,
        "pooled": single_rates(all_answers, truth, confidence),
        "by_reader": {r: single_rates(list(by_reader[r].values()), truth, confidence) for r in readers},
        "by_fake": {},
        "per_pair": [{"pair": item["pair"], "plane": item.get("plane"), "truth": item["truth"],
                      "source": item["source"], "votes": {"real": int(row[0]), "synthetic": int(row[1])}}
                     for item, row in zip(items, table)],
    }
    fakes = sorted({s for s in source.values() if s != "real"})
    if len(fakes) > 1:
        for name in fakes:
            mine = [a for a in all_answers if source[a.pair] == name]
            result["by_fake"][name] = _proportion(sum(a.choice == "synthetic" for a in mine), len(mine), confidence)
    kappa = stats.fleiss_kappa(table) if len(readers) >= 2 else None
    result["fleiss_kappa"] = kappa if kappa is not None and np.isfinite(kappa) else None
    result["likert"] = {"pooled": _likert([a.difficulty for a in all_answers]),
                        "by_reader": {r: _likert([a.difficulty for a in by_reader[r].values()]) for r in readers},
                        "by_choice": {c: _likert([a.difficulty for a in all_answers if a.choice == c])
                                      for c in ("real", "synthetic") if any(a.choice == c for a in all_answers)}}
    result["seconds"] = {"pooled": _summary([a.seconds for a in all_answers]),
                         "by_reader": {r: _summary([a.seconds for a in by_reader[r].values()]) for r in readers}}
    return result


def _refuse_out_in_study(out: Path, key_file: Path) -> None:
    """Refuse an output in the study folder or its page: ``--overwrite`` there would remove the
    study medvol made, and a score in the page folder would travel to the readers with it."""
    study = key_file.resolve().parent
    target = out.resolve()
    if target == study or study / "page" in (target, *target.parents):
        raise MedvolError(f"--out {out}: is the study folder or inside its page folder; write the score "
                          "elsewhere (e.g. beside the study) so that it never reaches the readers")


def score_study(study: str | os.PathLike, answer_files: list[str | os.PathLike], out: str | os.PathLike, *,
                margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA, confidence: float = 0.95,
                plot: bool = True, overwrite: bool = False) -> dict:
    """Read the key and answers, score them, write ``score.json``, ``score.md`` and ``score.png``.

    ``out`` is claimed with :func:`medvol.outputs.owned_output`: a folder holding anything medvol
    did not write for this same scoring (same key, answers and options) is refused unless
    ``overwrite``, which removes only what medvol wrote; a user's file (a ``score.md`` of their
    own) is never replaced.

    Returns:
        The score dict (as in score.json).

    Raises:
        MedvolError: anything :func:`load_key` / :func:`read_answers` refuse (naming file and row),
            bad options, an output refused as above or inside the study, a failed write.
    """
    from medvol.outputs import owned_output
    from medvol.study.reader.report import plot_score, score_markdown
    from medvol.utils import sha256_file

    key_file = key_path(study)
    key = load_key(study)
    files = [Path(f) for f in answer_files]
    by_reader, experience = read_answers(files, key)
    result = score_answers(key, by_reader, experience, margin=margin, alpha=alpha, confidence=confidence)
    result["answer_files"] = [str(f) for f in answer_files]
    images = key_images(key_file, key)
    if images is not None:
        study_dir = key_file.parent
        for row, paths in zip(result["per_pair"], images):
            if len(paths) == 1:
                row["image"] = paths[0].relative_to(study_dir).as_posix()
            else:
                row["images"] = {"left": paths[0].relative_to(study_dir).as_posix(),
                                 "right": paths[1].relative_to(study_dir).as_posix()}
    out = Path(out)
    _refuse_out_in_study(out, key_file)
    identity = {"key": str(key_file.resolve()), "key_sha256": sha256_file(key_file),
                "answers": [[str(f.resolve()), sha256_file(f)] for f in files],
                "margin": margin, "alpha": alpha, "confidence": confidence, "plot": plot}
    with owned_output(out, JOB, identity, overwrite=overwrite, inputs=[key_file, *files]) as claimed:
        names = ["score.json", "score.md"] + (["score.png"] if plot else [])
        paths = dict(zip(names, claimed.paths(names)))  # a user's file among them: refused before writing
        with checked_write(paths["score.json"], "score") as tmp:
            tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
        with checked_write(paths["score.md"], "score report") as tmp:
            tmp.write_text(score_markdown(result), encoding="utf-8")
        if plot:
            with checked_write(paths["score.png"], "score plot") as tmp:
                plot_score(result, tmp)
    return result
