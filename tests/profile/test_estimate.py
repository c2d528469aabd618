"""The fake-tensor estimate: the tracker's bookkeeping, and whole training steps traced."""

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from medvol.profile.cases import Case
from medvol.profile.estimate import GRANULE, LiveMemoryTracker, estimate
from profile_checks import MIB, check_consistent, published_case


def test_tracker_counts_live_storages_and_peak():
    tracker = LiveMemoryTracker()
    with FakeTensorMode(), tracker:
        a = torch.empty(MIB // 4)                      # 1 MiB
        view = a[10:]                                   # a view: same storage, not counted again
        b = torch.empty(MIB // 2)                       # 2 MiB -> 3 MiB live
        del a
        assert tracker.current == 3 * MIB               # the view keeps a's storage alive
        del view
        assert tracker.current == 2 * MIB
        c = torch.empty(MIB // 4)                       # back to 3 MiB, not a new peak
        with tracker.region("r"):
            d = torch.empty(2 * MIB // 4)               # 5 MiB inside the region
            del d
        tiny = torch.empty(1)                           # 4 bytes occupy one allocator granule
        assert tracker.current == 3 * MIB + GRANULE
        del b, c, tiny
    tracker.finish()
    assert tracker.current == 0
    assert tracker.peak == 5 * MIB
    assert tracker.frames["r"] == [5 * MIB]


def test_tracker_counts_backward_and_answers_item():
    tracker = LiveMemoryTracker()
    with FakeTensorMode(), tracker:
        w = torch.nn.Parameter(torch.empty(MIB // 4))
        tracker.start_step()
        x = torch.empty(MIB // 4)
        loss = (w * x).sum()
        assert int(torch.randint(0, 5, (1,)).item()) == 1   # data-dependent reads are 1
        loss.backward()
        assert w.grad is not None
    tracker.finish()
    # w, x and the product w*x are alive together before the sum; the gradient comes after.
    assert tracker.peak >= 3 * MIB
    assert tracker.phase_at_peak["parameters"] == MIB


@pytest.mark.parametrize("mode", ["reference", "optimized"])
def test_standin_estimate_is_consistent(standin_path, mode):
    result = estimate(Case("hagan", 64, 2, mode, kind="estimate", factory=standin_path, base_width=8),
                      keep_allocations=True)
    check_consistent(result)
    assert set(result["substeps"]) == {"D", "G", "E", "sub_E"}
    allocations = result["allocations_at_peak"]
    assert sum(a[0] for a in allocations) == result["peak_bytes"]
    assert any(a[2].startswith("G.") for a in allocations)


@pytest.mark.parametrize("model", ["hagan", "crfgan"])
def test_published_estimate_64(model):
    result = estimate(published_case(model, 64, 1, "optimized"))
    check_consistent(result)
    print(model, f"{result['peak_bytes'] / MIB:,.0f} MiB", f"{result['trace_s']:.1f} s")


def test_simulated_oom_reaches_the_estimate(standin_path, monkeypatch):
    monkeypatch.setenv("MEDVOL_PROFILE_SIMULATE_MAX_BATCH", "1")
    case = Case("hagan", 32, 2, "reference", kind="estimate", factory=standin_path)
    with pytest.raises(MemoryError):
        estimate(case)
    estimate(dataclasses.replace(case, batch=1))
