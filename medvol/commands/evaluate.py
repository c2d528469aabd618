"""``medvol evaluate --real SRC --fake SRC --out DIR``: FID/KID/MMD/PRDC with provenance."""

from __future__ import annotations

import shlex
import sys

from medvol.utils import add_threads_option, set_threads


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score generated volumes against real ones",
        description="Score a generated set against a real one (Frechet distance, KID, Gaussian "
                    "MMD, precision/recall/density/coverage) on the chosen feature extractors, "
                    "with bootstrap intervals over volumes. Writes scores.json (every score with "
                    "its provenance) and scores.md into --out. A 2D model's checkpoint or a folder "
                    "of 2D images (PNG, 2D NIfTI) as --fake is scored as images against real "
                    "slices (--real data: the run's own training slices).")
    parser.add_argument("--real", required=True,
                        help="cache folder, volume file/folder/glob, phantom[:SEED], or features .npy; "
                             "for 2D also data (a 2D checkpoint's training slices) or 2D images")
    parser.add_argument("--fake", help="as --real, or a checkpoint / run folder (generated on the fly)")
    parser.add_argument("--run", help="instead of --fake: score a run's checkpoints (see --every)")
    parser.add_argument("--every", type=int, default=1,
                        help="--run: checkpoints whose iteration is a multiple of K, and the last")
    parser.add_argument("--best", help="--run: the score that picks the best checkpoint "
                                       "(default mean/fid or fid)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--features",
                        help="comma list: inception2.5d[:PATH], inception-logits[2.5d]:PATH (class logits for is), medicalnet:PATH[:SHA256], "
                             "domain:FILE[:SHA256] (medvol's own features, from `medvol features "
                             "train`), inception[:PATH] (2D images), or a registered extractor "
                             "(default inception2.5d for volumes, inception for 2D images)")
    parser.add_argument("--metrics", default="fid,kid,mmd,prdc",
                        help="comma list of fid,kid,mmd,prdc,msssim,memorization,factors,is,umap (default: the "
                             "first four; factors: phantom ground truth, phantom data only; is needs --features "
                             "inception-logits[2.5d]:PATH; umap: features_umap.png beside features_pca.png, "
                             "needs umap-learn)")
    parser.add_argument("--is-splits", type=int, default=10, dest="is_splits",
                        help="is: the parts the samples are cut into; the score is their mean, "
                             "with their std (default 10)")
    parser.add_argument("--train", help="training set for memorization: a cache (its train split) or volumes "
                                        "(default: the train split of --real when it is a cache)")
    parser.add_argument("--diversity-n", type=int, default=16, dest="diversity_n",
                        help="msssim: volumes per set kept for pairwise MS-SSIM (default 16)")
    parser.add_argument("--n", type=int, help="volumes per set (default: all; 16 generated); 2D: "
                                               "images per set (default 256)")
    parser.add_argument("--plane", default="axial", choices=["axial", "coronal", "sagittal"],
                        help="2D image folders: the plane of the real slices (a checkpoint's own "
                             "plane is used for its runs)")
    parser.add_argument("--size", type=int, help="volume size for raw volumes, phantoms and checks "
                                              "(default: the size of a cache given as --real or --fake)")
    parser.add_argument("--modality", choices=["ct", "mr"],
                        help="raw volumes: ct or mr (default: as the cache on the other side, else ct)")
    parser.add_argument("--window", help="raw CT volumes: HU window MIN,MAX (default: as the cache on the "
                                         "other side, else -1024,600)")
    parser.add_argument("--split", choices=["train", "val", "all"],
                        help="split of a --real cache (default: val when it holds enough volumes for "
                             "--metrics, else the whole cache; said on stderr and in scores.json)")
    parser.add_argument("--seed", type=int, default=0, help="generation, bootstrap and KID seed")
    parser.add_argument("--k", type=int, default=5, help="nearest neighbours of PRDC (default 5; fewer, "
                                                          "with a warning, where a set is smaller than k + 1)")
    parser.add_argument("--bootstrap", type=int, default=50,
                        help="bootstrap rounds over volumes (0: none; default 50)")
    parser.add_argument("--slices-per-volume", type=int, default=16, dest="slices_per_volume",
                        help="2.5D: non-empty slices per plane and volume (default 16)")
    parser.add_argument("--batch", type=int, default=16, help="extractor batch (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier evaluation in --out (removes only what medvol wrote there; a "
                             "file medvol did not write is never replaced)")
    parser.add_argument("--allow-synthetic-real", action="store_true", dest="allow_synthetic_real",
                        help="score against a real set that holds volumes or images marked synthetic "
                             "(generated); refused without it, recorded in scores.json with it")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (instead of a warning) when a set holds fewer than --n volumes or images")
    add_threads_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import logging

    from medvol.data.preprocess import parse_window
    from medvol.errors import MedvolError
    from medvol.eval.evaluate import evaluate
    from medvol.progress import track

    if args.bootstrap < 0 or args.bootstrap == 1:
        raise MedvolError(f"--bootstrap {args.bootstrap}: give 0 (none) or at least 2 rounds")
    if args.slices_per_volume < 1 or args.batch < 1:
        raise MedvolError("--slices-per-volume and --batch must be at least 1")
    if (args.fake is None) == (args.run is None):
        raise MedvolError("give exactly one of --fake and --run")
    set_threads(args.threads)  # scores.json records the count ("threads")
    logging.basicConfig(level=logging.WARNING, format="medvol evaluate: %(message)s")  # warning lines
    logging.getLogger("medvol.evaluate").setLevel(logging.INFO)  # and what was inferred (split, references)
    options = dict(
        features=[s for s in args.features.split(",") if s] if args.features else None,
        metrics=[m for m in args.metrics.split(",") if m],
        n=args.n, size=args.size, modality=args.modality,
        window=parse_window(args.window) if args.window else None,
        split=args.split, seed=args.seed, k=args.k, n_boot=args.bootstrap,
        slices_per_volume=args.slices_per_volume, batch=args.batch, device=args.device,
        overwrite=args.overwrite, progress=track, plane=args.plane, train=args.train, diversity_n=args.diversity_n,
        allow_synthetic_real=args.allow_synthetic_real, strict=args.strict, is_splits=args.is_splits,
        command="medvol " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    if args.run is not None:
        from medvol.eval.evaluate import evaluate_run

        summary = evaluate_run(args.run, args.real, args.out, every=args.every, best=args.best,
                               **options)
        print(f"scored {len(summary['iterations'])} checkpoint(s) of {args.run}; best by "
              f"{summary['best_score']} ({summary['direction']} is better): iteration "
              f"{summary['best_iteration']} = {summary['best_value']:.6g}")
        print(f"wrote {args.out}/curve.csv, curve.png, best.json, iter_*/scores.json")
        return 0
    report = evaluate(args.real, args.fake, args.out, **options)
    _print_report(report, args.out)
    return 0


def _print_report(report: dict, out) -> None:
    for ext in report["extractors"]:
        print(f"{ext['info']['extractor']}:")
        for name, s in ext["scores"].items():
            ci = f"  [{s['ci_low']:.4g}, {s['ci_high']:.4g}] {s['interval']}" if "ci_low" in s else ""
            if "bias_corrected" in s:
                ci += f" (bias-corrected {s['bias_corrected']:.4g})"
            print(f"  {name:<24} {s['value']:.6g}{ci}")
        for w in ext["warnings"]:
            print(f"  warning: {w}")
    if "diversity" in report:
        d = report["diversity"]
        print(f"diversity (MS-SSIM): real {d['real']['mean']:.4f}, fake {d['fake']['mean']:.4f}")
    if "memorization" in report:
        m = report["memorization"]
        print(f"memorisation: authenticity {m['authenticity']:.3f}, likely copies "
              f"{len(m['likely_copies'])}: {', '.join(m['likely_copies'][:5])}")
    if "factors" in report:
        f = report["factors"]
        worst = max(f["continuous"].items(), key=lambda kv: -1 if kv[1]["w1_norm"] != kv[1]["w1_norm"] else kv[1]["w1_norm"])
        print(f"phantom factors: mode coverage {f['modes']['coverage']:.2f}, largest W1/std {worst[0]} "
              f"{worst[1]['w1_norm']:.3f} (real-vs-real floor {worst[1]['floor_norm']:.3f})")
    print(f"wrote {out}/scores.json, scores.md")
