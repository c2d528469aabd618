"""`medvol profile` end to end on the CPU: fresh worker processes, every output file, OOM cells."""

import csv
import json

import pytest

from medvol import cli
from medvol.profile.report import FILES


def test_tiny_profile_writes_every_output(tmp_path, monkeypatch, capsys):
    # Batch 2 "does not fit": OOM must become a table cell, not a crash.
    monkeypatch.setenv("MEDVOL_PROFILE_SIMULATE_MAX_BATCH", "1")
    out = tmp_path / "prof"
    status = cli.main(["profile", "--model", "crfgan", "--size", "32", "--base-width", "4",
                       "--batch", "1,2", "--mode", "reference,optimized", "--iters", "2", "--warmup", "1",
                       "--device", "cpu", "--out", str(out)])
    assert status == 0
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name not in FILES]  # no temp files left behind

    report = json.loads((out / "profile.json").read_text(encoding="utf-8"))
    meta = report["meta"]
    assert meta["versions"]["torch"] and meta["versions"]["medvol"]
    assert meta["command"].startswith("medvol profile") and "--base-width 4" in meta["command"]
    assert meta["device"].startswith("CPU") and meta["date"].endswith("UTC")
    results = {(r["case"]["batch"], r["case"]["mode"], r["case"]["kind"]): r for r in report["results"]}
    assert len(results) == 4
    pids = {r["pid"] for r in report["results"] if "pid" in r}
    assert len(pids) == 4                                   # one fresh process per configuration
    for mode in ("reference", "optimized"):
        ok = results[(1, mode, "measure")]
        assert ok["status"] == "ok", ok.get("error")
        assert ok["it_per_s"] > 0 and len(ok["step_s"]) == 2
        assert ok["params"]["total"] > 0
        assert set(ok["substeps"]) == {"D", "G", "E", "crf"}
        assert ok["data_wait_s_median"] >= 0
        assert ok["peak_rss_bytes"] == ok["peak_bytes"] > 0
        failed = results[(2, mode, "measure")]
        assert failed["status"] == "OOM" and "simulated" in failed["error"]

    table = (out / "profile.md").read_text(encoding="utf-8")
    assert "| CRF-GAN | optimized |" in table and "OOM" in table and "×)" in table
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert len(rows) == 4
    assert {row["status"] for row in rows} == {"ok", "OOM"}
    optimized = [r for r in rows if r["mode"] == "optimized" and r["status"] == "ok"]
    assert all(r["mem_ratio_vs_reference"] for r in optimized)
    assert "wrote" in capsys.readouterr().out


def test_estimate_with_budget_and_max_batch(tmp_path):
    # On fake tensors a budget is checked after the trace; a tiny one makes every batch OOM.
    out = tmp_path / "est"
    assert cli.main(["profile", "--estimate", "--device", "cpu", "--model", "hagan", "--size", "32",
                     "--base-width", "4", "--batch", "1", "--mode", "optimized", "--budget", "1MB",
                     "--find-max-batch", "--out", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text(encoding="utf-8"))
    [result] = report["results"]
    assert result["case"]["kind"] == "estimate" and result["status"] == "OOM"
    assert "exceeds the budget" in result["error"] and result["peak_bytes"] > 10**6
    [found] = report["max_batch"]
    assert found["max_batch"] == 0 and [t["batch"] for t in found["trials"]] == [1]
    table = (out / "profile.md").read_text(encoding="utf-8")
    assert "Estimated peak memory" in table and "Largest batch that fits" in table
    assert "Measured" not in table


def test_bad_option_is_one_line_error(tmp_path, capsys):
    assert cli.main(["profile", "--model", "vae", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err


@pytest.mark.parametrize("argv, culprit", [
    (["--size", "64,x"], "--size"), (["--budget", "lots"], "lots"),
    (["--estimate", "--find-max-batch", "--device", "cpu"], "--budget"),
])
def test_option_errors_name_the_option(tmp_path, capsys, argv, culprit):
    assert cli.main(["profile", "--out", str(tmp_path)] + argv) == 2
    assert culprit in capsys.readouterr().err


def test_model_options_reach_the_built_system(tmp_path):
    """The CRF step with the published fresh forwards runs G and D again; reusing the G step's
    tensors does not, so the two estimates of the CRF sub-step differ, and the reports say which."""
    crf_peaks = {}
    for option in ([], ["--model-option", "crf_forwards=reuse"]):
        out = tmp_path / ("reuse" if option else "fresh")
        assert cli.main(["profile", "--estimate", "--device", "cpu", "--model", "crfgan", "--size", "32",
                         "--base-width", "4", "--batch", "1", "--mode", "reference", *option,
                         "--out", str(out)]) == 0
        (result,) = json.loads((out / "profile.json").read_text(encoding="utf-8"))["results"]
        assert result["status"] == "ok", result.get("error")
        assert result["case"]["model_options"] == ("crf_forwards=reuse" if option else "")
        crf_peaks[bool(option)] = result["substeps"]["crf"]["peak_bytes"]
        table = (out / "profile.md").read_text(encoding="utf-8")
        assert ("model options crf_forwards=reuse" if option else "model options published defaults") in table
        (row,) = csv.DictReader((out / "profile.csv").open(encoding="utf-8"))
        assert row["model_options"] == ("crf_forwards=reuse" if option else "")
    assert crf_peaks[True] != crf_peaks[False]


@pytest.mark.parametrize("argv, message", [
    (["--model", "hagan", "--model-option", "crf_layout=depth"], "--model-option crf_layout: hagan has no such option"),
    (["--model", "crfgan", "--model-option", "crf_layout"], "expected KEY=VALUE"),
    (["--model", "crfgan", "--model-option", "crf_layout=sideways"], "crf layout"),
])
def test_bad_model_options_are_one_line_errors(tmp_path, capsys, argv, message):
    status = cli.main(["profile", "--estimate", "--device", "cpu", "--size", "32", "--base-width", "4",
                       "--batch", "1", "--mode", "reference", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--size", "64,100"], "--size: '100' is not one of 32, 64, 128, 256, 512"),
    (["--budget", "99999999TB"], "--budget 99999999TB: expected between 1MB and 100TB"),
    (["--budget", "100KB"], "--budget 100KB: expected between 1MB and 100TB"),
], ids=["size", "huge-budget", "tiny-budget"])
def test_bad_size_and_budget_are_refused_up_front(tmp_path, capsys, argv, message):
    out = tmp_path / "prof"
    assert cli.main(["profile", "--model", "crfgan", "--batch", "1", "--mode", "reference", "--device", "cpu",
                     *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medvol profile: error: {message}"), err
    assert not out.exists()


@pytest.mark.parametrize("limit, culprit", [
    (3_000, "profile.png"),   # the tables fit, the plot does not
    (600, "profile.json"),    # not even the results after the first case
], ids=["plot", "results"])
def test_estimate_on_a_full_disk(tmp_path, standin_path, medvol_with_file_limit, limit, culprit):
    """A full disk (files limited through RLIMIT_FSIZE, as in tests/train/test_full_disk.py) is one
    line naming the file and exit 2 (issue 22), and no output or temporary takes a final name."""
    out = tmp_path / "prof"
    done = medvol_with_file_limit(["profile", "--estimate", "--device", "cpu", "--model", "hagan", "--size", "32",
                                   "--factory", standin_path, "--batch", "1", "--mode", "optimized", "--out", out],
                                  limit=limit)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medvol profile: error: cannot write "), lines
    assert str(out / culprit) in lines[0]
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if ".tmp-" in name], left
    assert not {"profile.md", "profile.csv", "profile.png"} & set(left), left
