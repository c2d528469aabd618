"""Benchmark medvol.ops.upsample_conv3d: each backend x the generator's upsampling stages.

Stages (batch 2, base width c = 32; G^H stages at the training crop of S/32 embedding slices):

    S=128  G^A 4->8 512->512, 8->16 512->256, 16->32 256->128; G^H 32->64 64->32, 64->128 32->1
    S=256  G^A 4->8 512->512, 8->16 512->256, 16->32 256->128, 32->64 128->64;
           G^H 64->128 64->32, 128->256 32->1

Reports the median time of forward and forward+backward, the peak memory of forward+backward above
the inputs, and the speed-up and memory saving of ``decomposed`` over ``torch`` (interpolate +
conv3d). Inputs are contiguous, as in the optimized models (``--layout channels_last`` for the
channels_last_3d option of ``set_mode``). Writes a CSV keyed by device and layout and prints a
markdown table for docs/kernels.md.

    python tools/bench_upsample_conv.py                       # CUDA if present, else CPU
    python tools/bench_upsample_conv.py --device cpu --batch 1 --sizes 128 --reps 3
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


def stages(size: int, batch: int, c: int = 32) -> list[tuple[str, tuple[int, ...], int]]:
    """(label, input shape [B, C, D, H, W], output channels) of every upsampling stage at size S."""
    trunk = {128: [(4, 512, 512), (8, 512, 256), (16, 256, 128)],
             256: [(4, 512, 512), (8, 512, 256), (16, 256, 128), (32, 128, 64)]}[size]
    emb, crop = size // 4, size // 32
    out = [(f"G^A {s}->{2 * s}", (batch, ci, s, s, s), co) for s, ci, co in trunk]
    out.append((f"G^H {emb}->{2 * emb} (crop)", (batch, 2 * c, crop, emb, emb), c))
    out.append((f"G^H {2 * emb}->{4 * emb} (crop)", (batch, c, 2 * crop, 2 * emb, 2 * emb), 1))
    return out


def worker(config: dict) -> dict:
    from medvol.ops import _bench, upsample_conv3d

    device = torch.device(config["device"])
    torch.manual_seed(0)
    dtype = getattr(torch, config["dtype"])
    shape, out_ch = config["shape"], config["out_channels"]
    fmt = torch.channels_last_3d if config.get("layout") == "channels_last" else torch.contiguous_format
    x = torch.randn(*shape, device=device, dtype=dtype).to(memory_format=fmt).requires_grad_()
    w = (torch.randn(out_ch, shape[1], 3, 3, 3, device=device, dtype=dtype) * 0.02).requires_grad_()
    bias = torch.zeros(out_ch, device=device, dtype=dtype, requires_grad=True)

    def fwd():
        return upsample_conv3d(x, w, bias, backend=config["backend"])

    def fwd_bwd():
        fwd().sum().backward()
        x.grad = w.grad = bias.grad = None

    fwd_bwd()
    return {"peak_mb": _bench.peak_mb(fwd_bwd, device),
            "fwd_ms": _bench.median_ms(fwd, device, config["reps"]),
            "fwd_bwd_ms": _bench.median_ms(fwd_bwd, device, config["reps"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], choices=[128, 256])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--stages", nargs="+", default=None, help="only stages whose label contains one of these")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--backends", nargs="+", default=["torch", "decomposed"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--layout", choices=["contiguous", "channels_last"], default="contiguous",
                        help="memory format of the input (the models use contiguous)")
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "bench" / "upsample_conv.csv")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    from medvol.ops import _bench

    device = torch.device(args.device)
    name = _bench.device_name(device)
    date = datetime.date.today().isoformat()
    rows = []
    for size in args.sizes:
        for label, shape, out_ch in stages(size, args.batch):
            if args.stages and not any(s in label for s in args.stages):
                continue
            for dtype in args.dtypes:
                base = None
                for backend in args.backends:
                    config = dict(device=args.device, shape=shape, out_channels=out_ch, dtype=dtype, backend=backend,
                                  reps=args.reps, layout=args.layout)
                    result = _bench.run_isolated(__file__, config)
                    if backend == "torch" and "error" not in result:
                        base = result
                    if base and "error" not in result:
                        result["speedup_fwd_bwd"] = base["fwd_bwd_ms"] / result["fwd_bwd_ms"]
                        saved = 1 - result["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None
                        result["memory_saving"] = saved
                    rows.append({"device": name, "date": date, "size": size, "stage": label,
                                 **{k: v for k, v in result.items() if k not in ("device", "reps")}})
                    print(rows[-1], file=sys.stderr)
    _bench.write_csv(args.csv, rows, ("device", "size", "stage", "shape", "dtype", "backend", "layout"))
    command = "python tools/bench_upsample_conv.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"Device: {name}; {date}; input layout {args.layout}; `{command.strip()}`\n")
    print("| S | stage | input [B, C, D, H, W] -> O | dtype | backend | fwd ms | fwd+bwd ms | peak MB | "
          "fwd+bwd speed-up | memory saving |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = (f"| {r['size']} | {r['stage']} | {list(r['shape'])} -> {r['out_channels']} | {r['dtype']} | "
                f"{r['backend']} |")
        if "error" in r:
            print(f"{head} error: {r['error']} |||||")
            continue
        saving = r.get("memory_saving")
        print(f"{head} {_bench.fmt(r['fwd_ms'])} | {_bench.fmt(r['fwd_bwd_ms'])} | {_bench.fmt(r['peak_mb'], 0)} | "
              f"{_bench.fmt(r.get('speedup_fwd_bwd'))}x | {_bench.fmt(saving * 100 if saving is not None else None, 0)}"
              f"{'%' if saving is not None else ''} |")
    return 0


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())
