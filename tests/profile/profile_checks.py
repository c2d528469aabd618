"""Shared checks of estimate results (structure and consistency only: numbers are recorded, never asserted)."""

from medvol.profile.cases import Case

MIB = 2**20


def check_consistent(result):
    persistent = result["persistent"]
    assert persistent["parameters"] >= 4 * result["params"]["total"]
    # Everything persistent is alive together at the end of a step, so the peak covers it.
    assert result["peak_bytes"] >= sum(persistent.values())
    assert sum(result["phase_at_peak"].values()) == result["peak_bytes"]
    assert max(result["iteration_peaks"]) == result["peak_bytes"]
    for sub in result["substeps"].values():
        assert 0 < sub["peak_bytes"] <= result["peak_bytes"]


def published_case(model, size, batch, mode):
    return Case(model, size, batch, mode, kind="estimate")
