"""score.md and score.png of a scored reader study."""

from __future__ import annotations

from pathlib import Path

from medvol.utils import optional_import


def _p(value: float) -> str:
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.2e}"


def _ci(acc: dict) -> str:
    low, high = acc["ci"]
    return f"{acc['accuracy']:.3f} [{low:.3f}, {high:.3f}]"


def _rate(r: dict) -> str:
    if r["value"] is None:
        return "—"
    low, high = r["ci"]
    return f"{r['k']} / {r['n']} = {r['value']:.3f} [{low:.3f}, {high:.3f}]"


def single_markdown(result: dict) -> str:
    """The score of a single-image study (visual Turing test) as markdown."""
    pct = round(100 * result["confidence"])
    lines = [f"# Reader study {result.get('study') or ''}: single images (visual Turing test)", "",
             f"{len(result['readers'])} reader(s), {result['n_images']} images each "
             f"({result['n_real']} real, {result['n_synthetic']} synthetic).", "",
             f"## Accuracy, sensitivity, specificity ({pct} % Clopper–Pearson intervals; positive = synthetic)", "",
             "| reader | accuracy [CI] | p vs 0.5 | sensitivity [CI] | specificity [CI] | called real |",
             "|---|---|---|---|---|---|"]
    rows = [(r, result["by_reader"][r]) for r in result["readers"]] + [("**pooled**", result["pooled"])]
    for name, r in rows:
        lines.append(f"| {name} | {_rate(r['accuracy'])} | {_p(r['accuracy']['p_vs_chance'])} | "
                     f"{_rate(r['sensitivity'])} | {_rate(r['specificity'])} | {r['called_real']} |")
    if result["by_fake"]:
        lines += ["", "| source | called synthetic [CI] |", "|---|---|"]
        lines += [f"| {name} | {_rate(r)} |" for name, r in result["by_fake"].items()]
    kappa = result["fleiss_kappa"]
    lines += ["", f"- Fleiss' κ between readers (images × real/synthetic): {kappa:.3f}" if kappa is not None else
              "- Fleiss' κ: needs at least two readers (and answers in both categories)",
              "- p vs 0.5: exact two-sided binomial test of the accuracy. A non-significant p is "
              "*inconclusive*, not evidence that the images are indistinguishable.", "",
              "## Difficulty (1 … 5) and time", "",
              "| reader | Likert mean | median | seconds, median |", "|---|---|---|---|"]
    for r in result["readers"]:
        lk, sec = result["likert"]["by_reader"][r], result["seconds"]["by_reader"][r]
        lines.append(f"| {r} | {lk['mean']:.2f} | {lk['median']:g} | {sec['median']:.1f} |")
    lines += ["", "## Per image", "", "| image | plane | truth | votes |", "|---|---|---|---|"]
    for p in result["per_pair"]:
        lines.append(f"| {p['pair']} | {p['plane']} | {p['truth']} | real {p['votes']['real']}, "
                     f"synthetic {p['votes']['synthetic']} |")
    return "\n".join(lines) + "\n"


def score_markdown(result: dict) -> str:
    """The score as a markdown report (the numbers of score.json, in tables)."""
    if result["mode"] == "single":
        return single_markdown(result)
    pct = round(100 * result["confidence"])
    lines = [f"# Reader study {result.get('study') or ''}: {result['mode']}", "",
             f"{len(result['readers'])} reader(s), {result['n_pairs']} pairs each.", ""]
    if result["mode"] == "real-vs-fake":
        m = result["margin"]
        lines += [f"## Accuracy (real image chosen), {pct} % Clopper–Pearson interval, d′, TOST (margin ±{m:g})", "",
                  "| reader | correct / n | accuracy [CI] | d′ | TOST p | verdict |", "|---|---|---|---|---|---|"]
        acc = result["accuracy"]
        rows = [(r, acc["by_reader"][r]) for r in result["readers"]] + [("**pooled**", acc["pooled"])]
        rows += [(f"pooled vs {name}", a) for name, a in acc["by_fake"].items()] if len(acc["by_fake"]) > 1 else []
        for name, a in rows:
            lines.append(f"| {name} | {a['correct']} / {a['n']} | {_ci(a)} | {a['dprime']:.2f} | "
                         f"{_p(a['tost']['p'])} | {a['verdict']} |")
        lines += ["", f"\"Indistinguishable\" needs the TOST p below α = {result['alpha']:g}: the accuracy is then "
                  f"shown to lie within 0.5 ± {m:g}. A difference from 0.5 that is not significant is "
                  "*inconclusive*, not evidence of indistinguishability.", ""]
    lines += ["## Votes", "", "| source | votes | shown | votes per pair, mean ± SD |", "|---|---|---|---|"]
    for name, count in result["votes"].items():
        s = result["votes_per_pair"][name]
        sd = f" ± {s['sd']:.2f}" if s["sd"] is not None else ""
        lines.append(f"| {name} | {count} | {result['shown'][name]} | {s['mean']:.2f}{sd} |")
    t, c = result["chi2_totals"], result["chi2_pairs"]
    kappa = result["fleiss_kappa"]
    lines += ["", f"- χ² goodness of fit on the totals: χ² = {t['chi2']:.2f}, df = {t['df']}, p = {_p(t['p'])}",
              f"- χ² contingency, pairs × sources: χ² = {c['chi2']:.2f}, df = {c['df']}, p = {_p(c['p'])}"
              if c["chi2"] is not None else f"- χ² contingency, pairs × sources: undefined ({c['undefined']})",
              f"- Fleiss' κ between readers: {kappa:.3f}" if kappa is not None else
              "- Fleiss' κ: needs at least two readers (and answers in both categories)", ""]
    if "votes_by_reader" in result:
        names = list(result["votes"])
        lines += ["## Votes by reader", "", "| reader | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {r} | " + " | ".join(str(v[n]) for n in names) + " |" for r, v in result["votes_by_reader"].items()]
        lines.append("")
    lines += ["## Difficulty (1 extremely subtle … 5 obvious) and time", "",
              "| reader | Likert mean ± SD | median | 1 | 2 | 3 | 4 | 5 | seconds, median |", "|---" * 9 + "|"]
    rows = [(r, result["likert"]["by_reader"][r], result["seconds"]["by_reader"][r]) for r in result["readers"]]
    rows.append(("**pooled**", result["likert"]["pooled"], result["seconds"]["pooled"]))
    rows += [(f"chose {n}", lk, None) for n, lk in result["likert"]["by_choice"].items()]
    for name, lk, sec in rows:
        sd = f" ± {lk['sd']:.2f}" if lk["sd"] is not None else ""
        counts = " | ".join(str(lk["counts"][str(level)]) for level in range(1, 6))
        lines.append(f"| {name} | {lk['mean']:.2f}{sd} | {lk['median']:g} | {counts} | "
                     f"{sec['median']:.1f} |" if sec else f"| {name} | {lk['mean']:.2f}{sd} | {lk['median']:g} | {counts} | |")
    lines += ["", "## Per pair", "", "| pair | plane | votes |", "|---|---|---|"]
    for p in result["per_pair"]:
        lines.append(f"| {p['pair']} | {p['plane']} | " + ", ".join(f"{k} {v}" for k, v in p["votes"].items()) + " |")
    return "\n".join(lines) + "\n"


def plot_score(result: dict, path: Path) -> None:
    """Two panels: accuracy per reader with intervals (real-vs-fake) or votes per source
    (model-vs-model), and the Likert distribution by chosen source."""
    matplotlib = optional_import("matplotlib", "the reader-study plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if result["mode"] == "single":
        names = result["readers"] + ["pooled"]
        rates = [result["by_reader"][r] for r in result["readers"]] + [result["pooled"]]
        for offset, (what, color) in zip((-0.2, 0.0, 0.2), (("accuracy", "k"), ("sensitivity", "tab:red"),
                                                            ("specificity", "tab:blue"))):
            got = [(i + offset, r[what]) for i, r in enumerate(rates) if r[what]["value"] is not None]
            left.errorbar([x for x, _ in got], [v["value"] for _, v in got],
                          yerr=[[v["value"] - v["ci"][0] for _, v in got], [v["ci"][1] - v["value"] for _, v in got]],
                          fmt="o", capsize=3, color=color, label=what)
        left.axhline(0.5, color="tab:green", lw=1)
        left.set_xticks(range(len(names)), names, rotation=45, ha="right")
        left.set_ylim(0, 1.02)
        left.set_ylabel(f"{round(100 * result['confidence'])} % exact CI")
        left.set_title("Real or synthetic?")
        left.legend(loc="lower right", fontsize=8)
    elif result["mode"] == "real-vs-fake":
        acc = result["accuracy"]
        names = result["readers"] + ["pooled"]
        values = [acc["by_reader"][r] for r in result["readers"]] + [acc["pooled"]]
        y = [a["accuracy"] for a in values]
        err = [[a["accuracy"] - a["ci"][0] for a in values], [a["ci"][1] - a["accuracy"] for a in values]]
        left.errorbar(range(len(names)), y, yerr=err, fmt="o", capsize=4, color="k")
        m = result["margin"]
        left.axhspan(0.5 - m, 0.5 + m, color="tab:green", alpha=0.15, label=f"equivalence margin ±{m:g}")
        left.axhline(0.5, color="tab:green", lw=1)
        left.set_xticks(range(len(names)), names, rotation=45, ha="right")
        left.set_ylim(0, 1.02)
        left.set_ylabel(f"accuracy, {round(100 * result['confidence'])} % exact CI")
        left.set_title("Real image chosen")
        left.legend(loc="lower right", fontsize=8)
    else:
        names = list(result["votes"])
        left.bar(names, [result["votes"][n] for n in names], color="tab:blue")
        t = result["chi2_totals"]
        left.set_title(f"Votes (χ² = {t['chi2']:.2f}, p = {_p(t['p'])})")
        left.set_ylabel("votes")
    by_choice = result["likert"]["by_choice"]
    width = 0.8 / max(1, len(by_choice))
    for i, (name, lk) in enumerate(by_choice.items()):
        right.bar([level + (i - (len(by_choice) - 1) / 2) * width for level in range(1, 6)],
                  [lk["counts"][str(level)] for level in range(1, 6)], width=width, label=f"chose {name}")
    right.set_xticks(range(1, 6), ["1\nextremely\nsubtle", "2", "3", "4", "5\nobvious"])
    right.set_ylabel("answers")
    right.set_title("Difficulty")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
