"""``medvol doctor`` (issue 24, item 10): reports the machine, checks every backend found against the
float64 reference, and exits non-zero when one disagrees."""

from __future__ import annotations

import json
import os

import pytest
import torch

from medvol import cli
from medvol.ops import _loader
from medvol.ops import upsample_conv
from medvol.utils import OPTIONAL_PACKAGES


def _report(capsys) -> tuple[int, dict]:
    code = cli.main(["doctor", "--json"])
    return code, json.loads(capsys.readouterr().out)


def _row(report: dict, op: str, backend: str, device: str = "cpu") -> dict:
    return next(r for r in report["ops"] if (r["op"], r["backend"], r["device"]) == (op, backend, device))


def test_every_backend_found_here_agrees(capsys):
    code, report = _report(capsys)
    assert code == 0 and report["ok"]
    assert report["versions"]["torch"] == torch.__version__
    cpu = report["devices"][0]
    assert cpu["device"] == "cpu" and cpu["amp_auto"] == ("bf16" if cpu["native_bf16"] else "none")
    assert _row(report, "upsample_conv3d", "decomposed")["status"] == "pass"
    assert _row(report, "upsample_conv3d", "torch")["status"] == "reference"
    cpp = _row(report, "meanfield_crf", "cpp")
    assert cpp["status"] == ("pass" if _loader.cpp_status() is None else "unavailable")
    # Triton runs interpreted on the CPU only under TRITON_INTERPRET=1 (tests/conftest.py sets it
    # where there is no GPU).
    triton = _row(report, "meanfield_crf", "triton")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and _loader._import_triton() is None
    assert triton["status"] == ("pass" if interpreted else "unavailable"), triton
    assert report["threads"]["torch"] == torch.get_num_threads()
    assert set(report["extras"]) == {extra for _, extra in OPTIONAL_PACKAGES.values()}


def test_a_backend_that_disagrees_fails_the_exit_status(capsys, monkeypatch):
    # The decomposed upsample-conv with its folded weights off by 1 %: a wrong kernel.
    fold = upsample_conv.fold_weights
    monkeypatch.setattr(upsample_conv, "fold_weights", lambda weight: fold(weight) * 1.01)
    code, report = _report(capsys)
    assert code == 1 and not report["ok"]
    row = _row(report, "upsample_conv3d", "decomposed")
    assert row["status"] == "FAIL" and row["error_vs_tolerance"] > 1
    assert _row(report, "upsample_conv3d", "torch")["status"] == "reference"


def test_a_backend_that_raises_is_an_error(capsys, monkeypatch):
    def broken(x, weight, bias):
        raise RuntimeError("kernel launch failed\nsecond line")

    monkeypatch.setattr(upsample_conv, "_decomposed", broken)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "upsample_conv3d decomposed on cpu: error (RuntimeError: kernel launch failed)" in out
    assert out.rstrip().splitlines()[-1].startswith("PROBLEM")


def test_text_report_names_what_a_bug_report_needs(capsys, monkeypatch):
    monkeypatch.delenv("MEDVOL_NO_JIT", raising=False)
    assert cli.main(["doctor"]) == 0
    assert "MEDVOL_NO_JIT" not in os.environ  # set only while checking
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "train.amp auto -> " in out and "threads: torch " in out
    assert "medvol._C: " in out and "extras:" in out
    assert out.rstrip().splitlines()[-1] == "all found backends agree with the reference"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_gpu_backends_checked(capsys):
    code, report = _report(capsys)
    assert code == 0, [r for r in report["ops"] if r["status"] not in ("pass", "reference", "unavailable")]
    assert _row(report, "meanfield_crf", "triton", "cuda:0")["status"] == "pass"
    assert _row(report, "upsample_conv3d", "decomposed", "cuda:0")["status"] == "pass"
