"""tools/memory_timeline.py: the by-layer summary (fake tensors on the CPU, a snapshot on CUDA)."""

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "memory_timeline.py"


def _tool():
    spec = importlib.util.spec_from_file_location("memory_timeline", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fake_timeline_summary(tmp_path):
    assert _tool().main(["--model", "hagan", "--size", "32", "--base-width", "4", "--batch", "2",
                         "--mode", "optimized", "--device", "cpu", "--top", "5", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "memory_timeline.json").read_text(encoding="utf-8"))
    assert 0 < len(summary["modules"]) <= 5 and len(summary["largest"]) <= 5
    assert summary["peak_bytes"] >= sum(summary["persistent"].values())
    sizes = [t["bytes"] for t in summary["largest"]]
    assert sizes == sorted(sizes, reverse=True)
    assert "Alive at the peak, by module" in (tmp_path / "memory_timeline.md").read_text(encoding="utf-8")


@pytest.mark.gpu
def test_cuda_snapshot(tmp_path):
    assert _tool().main(["--model", "crfgan", "--size", "32", "--base-width", "4", "--batch", "1",
                         "--device", "cuda", "--out", str(tmp_path)]) == 0
    snapshot = pickle.loads((tmp_path / "memory_snapshot.pickle").read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"]
    summary = json.loads((tmp_path / "memory_timeline.json").read_text(encoding="utf-8"))
    assert summary["peak_reserved_bytes"] >= summary["peak_bytes"] > 0
    assert summary["modules"]
    assert torch.cuda.is_available()
