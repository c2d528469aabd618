"""tools/gpu_check.sh: the dry run (CPU, tiny sizes) runs every part and reports each one's
status, so the prepared GPU run cannot rot; bad input and earlier results are handled."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from published_standin import write_standin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
PARTS = ["build", "pytest", "bench_meanfield_crf", "bench_upsample_conv", "estimate", "profile_crfgan",
         "budget_12gib", "profile_512", "vs_published", "learn_data", "learn32"]


def run(*args, timeout=1000, python=sys.executable):
    env = dict(os.environ, PYTHON=str(python))
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def status(out: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in (out / "status.tsv").read_text(encoding="utf-8").splitlines()]
    return {row[0]: row[1] for row in rows}


def test_dry_run_runs_every_part_and_writes_the_tables(tmp_path):
    clone = write_standin(tmp_path / "clone", size=32)
    out = tmp_path / "out"
    # No time limits: the test checks the wiring and must pass however slow or loaded the host.
    proc = run("--dry-run", "--no-time-limits", "--out", out, "--published", clone)
    assert proc.returncode == 0, proc.stderr
    parts = status(out)
    assert sorted(parts) == sorted(PARTS)
    assert all(value == "ok" for value in parts.values()), (parts, {
        name: (out / "logs" / f"{name}.log").read_text(encoding="utf-8")[-2000:] for name, value in parts.items() if value != "ok"})
    for table in ["build/build.md", "bench/meanfield_crf.md", "bench/meanfield_crf.csv", "bench/upsample_conv.md",
                  "bench/upsample_conv.csv", "profile_crfgan/profile.md", "profile_crfgan/profile.csv",
                  "estimate/profile.md", "budget_12gib/profile.md", "profile_512/profile.md",
                  "estimate_vs_measured/profile.md", "vs_published/vs_published.md", "pytest/junit.xml",
                  "learn/cache/manifest.json", "learn/montage.png", "learn/losses.png", "learn/learn.md"]:
        assert (out / table).stat().st_size > 0, table
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "dry run" in summary
    for name in PARTS:
        assert f"| {name} |" in summary
    assert summary.count("| ok | 0 |") == len(PARTS)
    assert "| CRF-GAN 32³ b1 reference |" in summary  # the estimate beside the measured peak
    assert "| CRF-GAN | 32³ | 1 |" in summary  # the published comparison
    # The learning check: trained at the dry run's size on its own cache, sampled, scored, shown.
    learned = json.loads((out / "learn" / "numbers.json").read_text(encoding="utf-8"))
    assert learned["model"] == "crfgan@32" and learned["iteration"] == 3 and learned["n"] == 6
    assert 0 <= learned["mode_coverage"] <= 1 and learned["factor_w1_mean"] > 0
    assert set(learned["factors"]["continuous"]) >= {"body_width_mm", "lung_ml"}
    assert "## Does it learn? (`learn/`)" in summary and "![real phantoms beside samples](learn/montage.png)" in summary
    assert "| SSIM pairs (lower: more varied) |" in summary
    measured = json.loads((out / "profile_crfgan" / "profile.json").read_text(encoding="utf-8"))
    assert {r["case"]["mode"] for r in measured["results"]} == {"reference", "optimized"}
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["dry_run"] and meta["elapsed_s"] >= 0


def test_earlier_results_are_kept_and_parts_past_the_budget_are_skipped(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("an earlier run", encoding="utf-8")
    proc = run("--dry-run", "--out", out, "--budget-s", "0", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (out / "summary.md").read_text(encoding="utf-8") == "an earlier run"
    (run_dir,) = [p for p in out.iterdir() if p.name.startswith("run-")]
    parts = status(run_dir)
    assert set(PARTS) - {"estimate"} <= set(parts) and "estimate" in parts
    assert all(value.startswith("skipped") for value in parts.values()), parts
    assert "skipped (no time left)" in (run_dir / "summary.md").read_text(encoding="utf-8")


def test_summary_is_written_when_the_full_report_cannot_run(tmp_path):
    """The full report is one more Python start at the very end (issue 22: a cold start on a loaded
    host missed its 10-s reserve and left no summary.md); the parts' table must be there anyway."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\n[ "$2" = summary ] && exit 1\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    out = tmp_path / "out"
    proc = run("--dry-run", "--out", out, "--budget-s", "0", python=python, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "dry run" in summary and "full report" in summary
    for name in PARTS:
        assert f"| {name} | skipped" in summary, name
    assert not list(out.glob(".summary*")), "temporary left behind"


@pytest.mark.parametrize("args, message", [
    (["--dry-run"], "--out DIR is required"),
    (["--dry-run", "--out", "{tmp}/o", "--published", "{tmp}"], "no train.py there"),
    (["--dry-run", "--out", "{tmp}/o", "--budget-s", "soon"], "whole seconds"),
    (["--out", "{tmp}/o", "--frobnicate"], "unknown argument"),
])
def test_bad_input(tmp_path, args, message):
    proc = run(*[a.format(tmp=tmp_path) for a in args], timeout=30)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "o").exists()
