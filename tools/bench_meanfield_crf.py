"""Benchmark medvol.ops.meanfield_crf: each backend x the CRF-GAN shapes, against the reference.

CRF-GAN's CRF has N = S/4 nodes (depth slices of the 2c = 64-channel (S/4)^3 embedding), each with
F = 64 (S/4)^2 features, batch 2, T = 10 iterations: S = 128 -> N = 32, F = 65,536;
S = 256 -> N = 64, F = 262,144; S = 512 -> N = 128, F = 1,048,576.

Reports the median time of forward and forward+backward, peak memory of forward+backward above the
inputs, the speed-up of forward+backward over ``torch``, and on CUDA the achieved fraction of DRAM
bandwidth (bytes: feats read once forward, read once and grad_feats written once backward). Writes
a CSV keyed by device (``--csv``) and prints a markdown table for docs/kernels.md.

    python tools/bench_meanfield_crf.py                      # CUDA if present, else CPU
    python tools/bench_meanfield_crf.py --device cpu --sizes 128 256 --reps 5
    python tools/bench_meanfield_crf.py --forms published no-self-pairs   # both self-pair settings
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EMB_CHANNELS = 64
# The pair-potential settings of meanfield_crf: the published CRF-GAN one and medvol's alternative.
FORMS = {"published": dict(self_pairs=True, eps=1e-6), "no-self-pairs": dict(self_pairs=False, eps=1e-6)}


def _shape(size: int, batch: int) -> tuple[int, int, int]:
    n = size // 4
    return batch, n, EMB_CHANNELS * n * n


def worker(config: dict) -> dict:
    from medvol.ops import _bench, meanfield_crf

    device = torch.device(config["device"])
    torch.manual_seed(0)
    B, N, F = config["shape"]
    dtype = getattr(torch, config["dtype"])
    feats = torch.randn(B, N, F, device=device, dtype=dtype, requires_grad=True)
    unary = torch.randn(B, N, device=device, requires_grad=True)
    compat = (torch.randn(N, N, device=device) / N).requires_grad_()
    grad = torch.randn(B, N, device=device)

    def fwd():
        return meanfield_crf(feats, unary, compat, iterations=config["iterations"], backend=config["backend"],
                             **FORMS[config["form"]])

    def fwd_bwd():
        fwd().backward(grad)
        feats.grad = unary.grad = compat.grad = None

    fwd_bwd()  # warm-up (loads/compiles kernels) before the peak is taken
    out = {"peak_mb": _bench.peak_mb(fwd_bwd, device),
           "fwd_ms": _bench.median_ms(fwd, device, config["reps"]),
           "fwd_bwd_ms": _bench.median_ms(fwd_bwd, device, config["reps"])}
    moved = feats.numel() * feats.element_size()
    out["fwd_gbs"] = moved / out["fwd_ms"] / 1e6
    out["fwd_bwd_gbs"] = 3 * moved / out["fwd_bwd_ms"] / 1e6
    peak = _bench.peak_bandwidth_gbs(device)
    if peak:
        out["fwd_bw_frac"] = out["fwd_gbs"] / peak
        out["fwd_bwd_bw_frac"] = out["fwd_bwd_gbs"] / peak
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="volume sizes S")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--forms", nargs="+", default=["published"], choices=sorted(FORMS),
                        help="self-pair settings (published: self_pairs=True; no-self-pairs: False), eps 1e-6")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "bench" / "meanfield_crf.csv")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    from medvol.ops import _bench, available_backends

    device = torch.device(args.device)
    probe = torch.zeros(1, 1, 1, device=device)
    backends = args.backends or [b for b, why in available_backends("meanfield_crf", probe).items() if why is None]
    if device.type == "cpu" and args.backends is None and "triton" in backends:
        backends.remove("triton")  # interpreted Triton on the CPU measures the interpreter
    name = _bench.device_name(device)
    date = datetime.date.today().isoformat()
    rows = []
    for size in args.sizes:
        for form in args.forms:
            for dtype in args.dtypes:
                base = None
                for backend in ["torch"] + [b for b in backends if b != "torch"]:
                    config = dict(device=args.device, shape=_shape(size, args.batch), dtype=dtype, backend=backend,
                                  iterations=args.iterations, reps=args.reps, form=form)
                    result = _bench.run_isolated(__file__, config)
                    if backend == "torch":
                        base = result.get("fwd_bwd_ms")
                    if base and result.get("fwd_bwd_ms"):
                        result["speedup_fwd_bwd"] = base / result["fwd_bwd_ms"]
                    rows.append({"device": name, "date": date, "size": size, "form": form,
                                 **{k: v for k, v in result.items() if k not in ("device", "reps")}})
                    print(rows[-1], file=sys.stderr)
    _bench.write_csv(args.csv, rows, ("device", "size", "shape", "form", "dtype", "backend", "iterations"))
    command = "python tools/bench_meanfield_crf.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"Device: {name}; {date}; `{command.strip()}`\n")
    print("| S | B, N, F | form | dtype | backend | fwd ms | fwd+bwd ms | peak MB | fwd+bwd speed-up | fwd+bwd GB/s | "
          "of peak BW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | {r['shape']} | {r['form']} | {r['dtype']} | {r['backend']} | error: {r['error']} ||||||")
            continue
        frac = r.get("fwd_bwd_bw_frac")
        print(f"| {r['size']} | {', '.join(map(str, r['shape']))} | {r['form']} | {r['dtype']} | {r['backend']} | "
              f"{_bench.fmt(r['fwd_ms'])} | {_bench.fmt(r['fwd_bwd_ms'])} | {_bench.fmt(r['peak_mb'], 0)} | "
              f"{_bench.fmt(r.get('speedup_fwd_bwd'))}x | {_bench.fmt(r['fwd_bwd_gbs'], 1)} | "
              f"{_bench.fmt(frac * 100 if frac else None, 0)}{'%' if frac else ''} |")
    return 0


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())
