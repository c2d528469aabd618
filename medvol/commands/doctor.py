"""``medvol doctor``: what this machine offers medvol (versions, devices, bf16, threads, extras) and a
quick check of every op backend against the reference; exit 1 when a built backend disagrees."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="what this machine offers medvol; checks the fast ops against the reference",
        description="Print versions (torch, CUDA, triton), devices with native bf16 and what "
                    "train.amp auto picks there, threads, the optional extras installed, and every "
                    "op backend (meanfield_crf, upsample_conv3d) checked against the float64 "
                    "reference on each device, forward and gradients (Triton: on a GPU, or on the "
                    "CPU with TRITON_INTERPRET=1). The first thing to run on a new machine and to "
                    "paste into a bug report. Exit status 0 when every backend found agrees, 1 when "
                    "one disagrees or fails.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.doctor import diagnose, format_report

    report = diagnose()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["ok"] else 1
