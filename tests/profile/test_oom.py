"""Out of memory is a result: simulated allocation failures, killed workers, largest-batch search."""

import dataclasses

import pytest

from medvol.profile.cases import Case
from medvol.profile.runner import find_max_batch, run_in_subprocess, run_profile


def test_killed_worker_is_oom(standin_path, monkeypatch):
    monkeypatch.setenv("STANDIN_KILL_ABOVE_BATCH", "1")
    result = run_in_subprocess(Case("hagan", 16, 2, "reference", factory=standin_path, iters=1, warmup=0))
    assert result["status"] == "OOM" and "SIGKILL" in result["error"]


def test_simulated_memory_error_in_worker(monkeypatch):
    monkeypatch.setenv("MEDVOL_PROFILE_SIMULATE_MAX_BATCH", "3")
    result = run_in_subprocess(Case("hagan", 32, 4, "optimized", base_width=4, iters=1, warmup=0))
    assert result["status"] == "OOM" and "MemoryError" in result["error"]
    assert result["params"]["total"] > 0                  # built before it failed: reported


def test_broken_factory_is_an_error_not_oom():
    result = run_in_subprocess(Case("hagan", 32, 1, "reference", factory="no_such_module:build"))
    assert result["status"] == "error" and "no_such_module" in result["error"]


def _limited(max_fit, calls):
    def run(case):
        calls.append(case.batch)
        assert case.warmup == 1 and case.iters == 1
        return {"status": "ok" if case.batch <= max_fit else "OOM", "peak_bytes": case.batch}
    return run


@pytest.mark.parametrize("max_fit, limit, expected, at_limit", [
    (5, 64, 5, False), (0, 64, 0, False), (1, 64, 1, False), (64, 64, 64, True),
    (100, 48, 48, True), (40, 48, 40, False), (6, 6, 6, True),
])
def test_find_max_batch_doubling_then_bisection(max_fit, limit, expected, at_limit):
    calls = []
    found = find_max_batch(Case("hagan", 256, 1, "optimized"), limit=limit, run=_limited(max_fit, calls))
    assert found["max_batch"] == expected and found["at_limit"] == at_limit and found["error"] is None
    assert len(calls) == len(set(calls)) <= 2 * limit.bit_length()   # no batch tried twice
    assert [t["batch"] for t in found["trials"]] == calls


def test_find_max_batch_sequence_for_limit_5():
    calls = []
    find_max_batch(Case("crfgan", 256, 1, "reference"), run=_limited(5, calls))
    assert calls == [1, 2, 4, 8, 6, 5]


def test_find_max_batch_stops_on_error():
    def run(case):
        return {"status": "error" if case.batch == 4 else "ok", "error": "boom"}
    found = find_max_batch(Case("hagan", 64, 1, "reference"), run=run)
    assert found["error"].startswith("batch 4") and found["max_batch"] == 0


def test_run_profile_reports_max_batch(tmp_path):
    calls = []
    cases = [Case("hagan", 64, b, m) for b in (1, 2) for m in ("reference", "optimized")]

    def run(case):
        calls.append(case)
        fits = case.batch <= (3 if case.mode == "optimized" else 1)
        return {"case": case.to_dict(), "status": "ok" if fits else "OOM", "peak_bytes": 2**20 * case.batch,
                "it_per_s": 1.0 / case.batch, "device_name": "test device",
                **({} if fits else {"error": "simulated"})}

    report = run_profile(cases, tmp_path, max_batch=True, max_batch_limit=8, run=run, log=lambda _: None)
    found = {f["mode"]: f["max_batch"] for f in report["max_batch"]}
    assert found == {"reference": 1, "optimized": 3}
    table = (tmp_path / "profile.md").read_text(encoding="utf-8")
    assert "Largest batch that fits" in table and "| HA-GAN | optimized | measure | 3 |" in table
    assert "| HA-GAN | reference | 1.00 / " not in table
    assert report["meta"]["device"] == "test device"
    assert dataclasses.asdict(calls[0]) == cases[0].to_dict()


@pytest.mark.gpu
def test_cuda_budget_makes_oom_a_result():
    case = Case("crfgan", 64, 2, "reference", device="cuda", budget_bytes=64 * 2**20, iters=1, warmup=0)
    result = run_in_subprocess(case)
    assert result["status"] == "OOM" and "OutOfMemoryError" in result["error"]
    fits = run_in_subprocess(dataclasses.replace(case, budget_bytes=None, size=32, base_width=4))
    assert fits["status"] == "ok"
    assert fits["peak_reserved_bytes"] >= fits["peak_allocated_bytes"] > 0
