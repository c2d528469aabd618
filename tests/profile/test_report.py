"""Report writers on hand-made results: table shape, ratios, estimate beside measurement, CSV."""

import csv
import io

from medvol.profile.cases import Case
from medvol.profile.report import markdown, to_csv

MIB = 2**20


def _result(model, size, batch, mode, kind, status="ok", peak=None, its=None, reserved=None):
    result = {"case": Case(model, size, batch, mode, kind=kind, device="cuda").to_dict(), "status": status,
              "device_name": "NVIDIA Test"}
    if status == "ok":
        result.update(peak_bytes=peak * MIB, it_per_s=its, params={"G": 10, "total": 10})
        if reserved is not None:
            result["peak_reserved_bytes"] = reserved * MIB
    else:
        result["error"] = "CUDA out of memory"
    return result


def _report():
    results = [
        _result("crfgan", 256, 2, "reference", "measure", peak=7000, its=1.0, reserved=7500),
        _result("crfgan", 256, 2, "optimized", "measure", peak=2100, its=3.0, reserved=2500),
        _result("crfgan", 256, 6, "reference", "measure", status="OOM"),
        _result("crfgan", 256, 6, "optimized", "measure", peak=5000, its=1.2, reserved=5600),
        _result("crfgan", 256, 2, "reference", "estimate", peak=6000),
        _result("crfgan", 256, 2, "optimized", "estimate", peak=1800),
    ]
    meta = {"command": "medvol profile --device cuda", "date": "2026-01-01 00:00 UTC", "device": "NVIDIA Test",
            "versions": {"torch": "2", "cuda": "13", "triton": "3", "medvol": "0.1", "python": "3.11"}}
    return {"meta": meta, "results": results, "max_batch": []}


def test_markdown_shape_ratios_and_estimate_beside_measurement():
    text = markdown(_report())
    assert "| model | mode | 256³ b2 | 256³ b6 |" in text
    assert "| CRF-GAN | reference | 7,000 / 7,500 | OOM |" in text
    assert "| CRF-GAN | optimized | 2,100 / 2,500 (0.30×) | 5,000 / 5,600 (ref OOM) |" in text
    assert "| CRF-GAN | optimized | 3 (3.00×) | 1.2 (ref OOM) |" in text
    # estimate 1,800 beside measured 2,100 allocated / 2,500 reserved: differences 300 and 700
    assert "| CRF-GAN 256³ b2 optimized | 1,800 | 2,100 | 300 | 2,500 | 700 |" in text
    assert "- Device: NVIDIA Test" in text and "`medvol profile --device cuda`" in text


def test_csv_has_a_row_per_result_and_ratios():
    rows = list(csv.DictReader(io.StringIO(to_csv(_report()))))
    assert len(rows) == 6
    optimized = [r for r in rows if r["mode"] == "optimized" and r["kind"] == "measure" and r["batch"] == "2"]
    assert float(optimized[0]["mem_ratio_vs_reference"]) == 0.3
    assert float(optimized[0]["its_ratio_vs_reference"]) == 3.0
    oom = [r for r in rows if r["status"] == "OOM"]
    assert len(oom) == 1 and oom[0]["peak_mib"] == ""
