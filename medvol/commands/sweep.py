"""``medvol sweep --config C --grid G.yaml --runs K --select fid --out DIR``."""

from __future__ import annotations

from medvol.utils import add_threads_option, set_threads


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train and score K configurations drawn from a grid",
        description="Draw K configurations from a grid (configs/sweeps/*.yaml), train each as its "
                    "own `medvol train` run under DIR/runs/<id>/, score each with `medvol "
                    "evaluate`, and write DIR/sweep.csv, sweep.json, report.md (best run per "
                    "loss, spread of scores) and boxplot.png. Re-running the same command "
                    "resumes the sweep; a failing run is recorded and the sweep goes on.")
    parser.add_argument("--config", required=True, help="base training config: a file or a shipped name, e.g. dcgan_tiny")
    parser.add_argument("--grid", required=True, help="grid YAML: a file or a shipped name, e.g. sweeps/empirical_study")
    parser.add_argument("--runs", type=int, required=True, help="K: configurations to draw and train")
    parser.add_argument("--out", required=True, help="sweep folder DIR")
    parser.add_argument("--select", default="fid",
                        help="score that ranks the runs: fid, kid, mmd, precision, recall, density, "
                             "coverage (default fid)")
    parser.add_argument("--features", help="evaluation extractors, comma list (default: inception "
                                           "for 2D models, inception2.5d for 3D)")
    parser.add_argument("--real", default="data",
                        help="real set of the evaluation (default data: each run's training slices)")
    parser.add_argument("--n", type=int, default=256, help="images per set in each evaluation (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="draw and evaluation seed (default 0)")
    parser.add_argument("--bootstrap", type=int, default=50, help="bootstrap rounds per evaluation")
    parser.add_argument("--batch", type=int, default=16, help="generation / extractor batch")
    parser.add_argument("--device", default="cpu", help="evaluation device: cpu or cuda[:N]")
    parser.add_argument("--retry-failed", action="store_true", dest="retry_failed",
                        help="train or score the runs that failed before again")
    add_threads_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from medvol.config import resolve_config
    from medvol.errors import MedvolError
    from medvol.sweep import Sweep

    if args.bootstrap < 0 or args.bootstrap == 1:
        raise MedvolError(f"--bootstrap {args.bootstrap}: give 0 (none) or at least 2 rounds")
    if args.n is not None and args.n < 2:
        raise MedvolError(f"--n {args.n}: need at least 2 images per set")
    # The runs train one at a time, so each run (and each evaluation, in this process) gets them all.
    threads = set_threads(args.threads)
    sweep = Sweep(resolve_config(args.config), resolve_config(args.grid), args.runs, args.out, select=args.select,
                  features=[s for s in args.features.split(",") if s] if args.features else None,
                  n=args.n, seed=args.seed, real=args.real, bootstrap=args.bootstrap,
                  batch=args.batch, device=args.device, retry_failed=args.retry_failed, threads=threads,
                  echo=lambda line: print(line, flush=True))
    state = sweep.run()
    counts: dict[str, int] = {}
    for record in state["runs"]:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(f"{len(state['runs'])} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"wrote {args.out}/sweep.csv, sweep.json, report.md, boxplot.png")
    return 0
