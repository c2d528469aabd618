"""``medvol sweep --config C --grid G.yaml --runs K --out DIR [--storage URL --study NAME]
[--workers K] [--gpus 0,1,...]``."""

from __future__ import annotations

from medvol.utils import add_threads_option, set_threads


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train and score K configurations drawn from a grid (an Optuna study)",
        description="Draw K configurations from a grid (configs/sweeps/*.yaml), train each as its "
                    "own `medvol train` run under DIR/runs/<id>/, score each with `medvol "
                    "evaluate`, one Optuna trial per run, and write DIR/sweep.csv, sweep.json, "
                    "report.md (best run per loss, spread of scores), boxplot.png and params/*.png. "
                    "The study lives in DIR/study.db (SQLite) or in --storage (PostgreSQL: start "
                    "the same command on several machines). Re-running the same command resumes "
                    "the sweep; a failing run is recorded and the sweep goes on.")
    parser.add_argument("--config", required=True, help="base training config: a file or a shipped name, e.g. dcgan_tiny")
    parser.add_argument("--grid", required=True, help="grid YAML: a file or a shipped name, e.g. sweeps/empirical_study")
    parser.add_argument("--runs", type=int, required=True, help="K: configurations to draw and train")
    parser.add_argument("--out", required=True, help="sweep folder DIR (shared by all workers of the sweep)")
    parser.add_argument("--storage", help="SQLAlchemy URL of the study: sqlite:///PATH or "
                                          "postgresql://USER@HOST:PORT/DB (default sqlite:///DIR/study.db)")
    parser.add_argument("--study", help="study name in the storage (default: DIR's name)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes started by this command (default 1)")
    parser.add_argument("--gpus", help="GPU ids, comma list: worker j uses GPU j mod their number "
                                       "(CUDA_VISIBLE_DEVICES) for training and scoring")
    parser.add_argument("--sampler", default="random", choices=["random", "grid"],
                        help="random: seeded draws without repeats (default); grid: every "
                             "configuration of the grid once, in seeded order")
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
    parser.add_argument("--prune", default="none", choices=["none", "median", "halving"],
                        help="score each new checkpoint and stop runs that will not win: median or "
                             "successive halving (default none, as the empirical study)")
    parser.add_argument("--prune-startup", type=int, default=2, dest="prune_startup",
                        help="median pruner: runs completed before any is pruned (default 2)")
    parser.add_argument("--prune-warmup", type=int, default=0, dest="prune_warmup",
                        help="median pruner: iterations before a run can be pruned (default 0)")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="seconds between a trial's heartbeats; after two missed, another worker "
                             "retries its run (default 60)")
    parser.add_argument("--max-retry", type=int, default=2, dest="max_retry",
                        help="retries of a run whose worker died (default 2)")
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
    # Each worker's runs train one at a time: a worker (and the run it trains) gets its share.
    threads = set_threads(args.threads)
    sweep = Sweep(resolve_config(args.config), resolve_config(args.grid), args.runs, args.out, storage=args.storage, study=args.study,
                  sampler=args.sampler, select=args.select,
                  features=[s for s in args.features.split(",") if s] if args.features else None,
                  n=args.n, seed=args.seed, real=args.real, bootstrap=args.bootstrap,
                  batch=args.batch, device=args.device, prune=args.prune,
                  prune_startup=args.prune_startup, prune_warmup=args.prune_warmup,
                  retry_failed=args.retry_failed, max_retry=args.max_retry, heartbeat=args.heartbeat,
                  workers=args.workers, threads=threads,
                  gpus=[g for g in args.gpus.split(",") if g.strip()] if args.gpus else None,
                  echo=lambda line: print(line, flush=True))
    state = sweep.run()
    counts: dict[str, int] = {}
    for record in state["runs"]:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(f"{len(state['runs'])} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"wrote {args.out}/sweep.csv, sweep.json, report.md, boxplot.png, params/")
    return 0
