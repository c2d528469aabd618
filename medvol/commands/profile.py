"""``medvol profile``: peak memory and iterations/s of the training step, side by side.

Example::

    medvol profile --model hagan,crfgan --size 128,256 --batch 2,4,6 \\
        --mode reference,optimized --iters 10 --warmup 3 --device cuda --budget 12GiB --out prof/
    medvol profile --estimate --size 256,512 --batch 1,2,4,6 --out est/      # no device needed
    medvol profile --model dcgan,mlpgan --size 64,128 --batch 16,64 --device cpu --out prof2d/
"""

from __future__ import annotations

import argparse
import shlex

from medvol.errors import MedvolError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile", help="measure (or estimate) peak memory and iterations/s per configuration",
        description="Profile the full training step of each model x size x batch x mode, each "
                    "configuration in a fresh process. Out of memory is reported as OOM. Writes "
                    "profile.md, profile.csv, profile.json and profile.png into --out.")
    parser.add_argument("--model", default="hagan,crfgan",
                        help="comma list of hagan, crfgan, ldm (3D), dcgan, mlpgan, stylegan2, fastgan, spade, pix2pix, cyclegan, ldm2d (2D)")
    parser.add_argument("--size", default="64",
                        help="comma list of sizes: volume side (3D, e.g. 64,128,256,512) or image side "
                             "(2D: 32, 64, 128, 256)")
    parser.add_argument("--batch", default=None,
                        help="comma list of batch sizes (default: 1,2 for 3D models, 16,64 for 2D ones)")
    parser.add_argument("--mode", default="reference,optimized",
                        help="comma list: reference (fp32) and/or optimized (bf16 autocast where the "
                             "device has native bf16, checkpointing, fused ops)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--device", default=None,
                        help="cuda or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--budget", default=None,
                        help="memory cap such as 12GB or 11GiB (1MB to 100TB): on CUDA enforced with "
                             "set_per_process_memory_fraction; on the CPU and for --estimate a "
                             "peak above it is reported as OOM")
    parser.add_argument("--find-max-batch", action="store_true",
                        help="also search the largest batch that fits (doubling then bisection)")
    parser.add_argument("--max-batch-limit", type=int, default=None,
                        help="upper end of the --find-max-batch search (default 64 for 3D models, "
                             "1024 for 2D ones)")
    parser.add_argument("--estimate", action="store_true",
                        help="estimate peak memory on fake tensors (seconds on any machine); with "
                             "a GPU present (or --measure) it is printed beside the measured peak")
    parser.add_argument("--measure", action="store_true",
                        help="with --estimate on a machine without CUDA: measure on the CPU too")
    parser.add_argument("--base-width", type=int, default=None,
                        help="generator base width c (default: each model's published width: 32 for "
                             "the 3D models, 64 dcgan, 256 mlpgan)")
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "phantom"],
                        help="batches of device noise (default) or procedural phantoms from the host")
    parser.add_argument("--factory", default=None,
                        help="module:function building the system (default medvol.models:build); "
                             "for profiling your own GANSystem")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds before one configuration is abandoned (reported as error)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model build option for every case, e.g. crf_forwards=reuse, "
                             "crf_layout=depth, crf_self_pairs=false (repeatable; default: published)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=run)


#: Accepted ``--budget`` values in bytes: below 1 MB nothing fits, above 100 TB is no machine's memory.
BUDGET_RANGE = (10**6, 10**14)


def _device(args) -> str:
    import torch

    if args.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.split(":")[0] not in ("cuda", "cpu"):
        raise MedvolError(f"--device: {args.device!r} is not cuda or cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise MedvolError("--device cuda: CUDA is not available on this machine")
    return args.device


def _command(args: argparse.Namespace) -> str:
    """The command line, rebuilt from the parsed options (also right when called from Python)."""
    words = ["medvol", "profile"]
    for name in ("model", "size", "batch", "mode", "iters", "warmup", "device", "budget",
                 "max_batch_limit", "base_width", "data", "factory", "out"):
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    words += [word for option in getattr(args, "model_option", []) for word in ("--model-option", option)]
    words += [f"--{flag.replace('_', '-')}" for flag in ("find_max_batch", "estimate", "measure")
              if getattr(args, flag)]
    return " ".join(shlex.quote(word) for word in words)


def _check_model_options(models: list[str], options: dict[str, object]) -> None:
    """Refuse up front an option a model does not have (not late, in every worker)."""
    from medvol.models import MODEL_OPTIONS

    for model in models:
        unknown = sorted(set(options) - set(MODEL_OPTIONS[model]))
        if unknown:
            raise MedvolError(f"--model-option {unknown[0]}: {model} has no such option "
                              f"(it has: {', '.join(MODEL_OPTIONS[model]) or 'none'})")
        import torch

        from medvol.models import build

        try:  # the values too: a tiny build on the meta device costs nothing
            with torch.device("meta"):
                build(model, 32, base_width=2, latent_dim=2, **options)
        except MedvolError as error:
            raise MedvolError(f"--model-option: {error}") from None


def _sizes(text: str, models: list[str], custom: bool) -> list[int]:
    """``--size`` checked against every model's sizes up front (not late, in every worker); a
    custom factory decides its own sizes."""
    from medvol.models.registry import MODEL_SIZES
    from medvol.profile.cases import parse_list

    if custom:
        return parse_list(text, "--size", kind=int)
    allowed = sorted({s for m in models for s in MODEL_SIZES[m]})
    sizes = parse_list(text, "--size", kind=int, allowed=allowed)
    for model in models:
        for size in sizes:
            if size not in MODEL_SIZES[model]:
                raise MedvolError(f"--size: {model} supports {', '.join(map(str, MODEL_SIZES[model]))}, "
                                  f"not {size}")
    return sizes


def run(args: argparse.Namespace) -> int:
    from medvol.profile.cases import (DEFAULT_BATCHES, DEFAULT_FACTORY, MODES, grid, model_dims, model_names,
                                      parse_list, parse_model_options)
    from medvol.profile.runner import run_profile
    from medvol.utils import parse_size_bytes

    models = parse_list(args.model, "--model", allowed=None if args.factory else model_names())
    sizes = _sizes(args.size, models, bool(args.factory))
    given = parse_list(args.batch, "--batch", kind=int) if args.batch is not None else None
    batches = {m: given or list(DEFAULT_BATCHES[model_dims(m)]) for m in models}
    modes = parse_list(args.mode, "--mode", allowed=MODES)
    if args.iters < 1 or args.warmup < 0:
        raise MedvolError("--iters must be >= 1 and --warmup >= 0")
    if args.base_width is not None and args.base_width < 1:
        raise MedvolError("--base-width must be positive")
    if args.max_batch_limit is not None and args.max_batch_limit < 1:
        raise MedvolError("--max-batch-limit must be positive")
    budget = parse_size_bytes(args.budget) if args.budget else None
    if budget is not None and not BUDGET_RANGE[0] <= budget <= BUDGET_RANGE[1]:
        raise MedvolError(f"--budget {args.budget}: expected between 1MB and 100TB "
                          f"(a memory cap for one process)")
    device = _device(args)
    measure = not args.estimate or args.measure or device.startswith("cuda")
    if args.find_max_batch and args.estimate and not measure and budget is None:
        raise MedvolError("--find-max-batch with --estimate needs --budget (nothing runs out of "
                          "memory on fake tensors)")
    model_options = ",".join(args.model_option)
    if model_options and not args.factory:
        _check_model_options(models, parse_model_options(model_options))
    common = dict(model_options=model_options, iters=args.iters, warmup=args.warmup, base_width=args.base_width,
                  budget_bytes=budget, data=args.data, factory=args.factory or DEFAULT_FACTORY)
    cases = []
    for kind in ("measure", "estimate"):
        if (kind == "measure" and measure) or (kind == "estimate" and args.estimate):
            for model in models:
                cases += grid([model], sizes, batches[model], modes, kind=kind, device=device, **common)
    report = run_profile(cases, args.out, max_batch=args.find_max_batch,
                         max_batch_limit=args.max_batch_limit, command=_command(args),
                         timeout=args.timeout)
    print(f"wrote {args.out}/profile.md, profile.csv, profile.json, profile.png")
    errors = [r for r in report["results"] if r["status"] == "error"]
    return 1 if errors and len(errors) == len(report["results"]) else 0
