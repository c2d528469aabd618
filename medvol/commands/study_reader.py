"""``medvol study reader make|score``: the reader-study kit (two-alternative forced choice, or single
images: the visual Turing test)."""

from __future__ import annotations

import argparse

from medvol.utils import add_threads_option, set_threads


def register(actions) -> None:
    parser = actions.add_parser(
        "reader", help="reader study (pairs, or single images): make the page, score the answers",
        description="Make a static reader-study page (pairs: real vs fake or model vs model; or single images, "
                    "real or synthetic: the visual Turing test) and score the "
                    "readers' answers (docs/studies.md).")
    steps = parser.add_subparsers(dest="reader_command", metavar="STEP")
    steps.required = True
    make = steps.add_parser(
        "make", help="write STUDY/ (page/ for the readers, key.json beside it)",
        description="Pairs of slices at the same position and plane (chosen with --seed), as a "
                    "self-contained page STUDY/page/index.html with its images; sides, pair ids, image names "
                    "and order are drawn from a cryptographic source, not the seed. The answer key goes to "
                    "STUDY/key.json, outside the page folder: give readers STUDY/page/ only.")
    make.add_argument("--real", help="real volumes (a medvol cache or a folder/file/glob) or 2D images (a 2D image "
                                     "cache of `medvol preprocess --images`, a folder of PNG / 2D NIfTI)")
    make.add_argument("--fake", action="append", default=[], metavar="NAME=DIR_OR_CKPT",
                      help="a generated source: a folder of volumes or 2D images, or a checkpoint (file or run "
                           "folder; a 2D model gives images in a study of 2D images); repeat")
    make.add_argument("--pairs", type=int, help="number of pairs (default 30; not with --mode single)")
    make.add_argument("--images", type=int, help="--mode single: number of images (default 100)")
    make.add_argument("--real-share", type=float, default=0.5, dest="real_share",
                      help="--mode single: fraction of real images (default 0.5)")
    make.add_argument("--planes", help="planes to take turns over (default axial,coronal,sagittal; volumes only)")
    make.add_argument("--mode", default="real-vs-fake", choices=["real-vs-fake", "model-vs-model", "single"],
                      help="real-vs-fake and model-vs-model show pairs; single shows one image at a time, "
                           "real or synthetic (the visual Turing test)")
    make.add_argument("--seed", type=int, default=0, help="seeds generation, pairing, sides and order")
    make.add_argument("--window", default="lung",
                      help="lung, mediastinum, bone, LOW,HIGH in HU, or auto (pair percentiles, MR)")
    make.add_argument("--positions", help="slice positions, fractions of the axis (LOW,HIGH; default 0.3,0.7; "
                                          "volumes only)")
    make.add_argument("--real-split", default="all", choices=["all", "train", "val"], dest="real_split",
                      help="volumes of a --real cache (default all)")
    make.add_argument("--title", help="page title")
    make.add_argument("--device", default="auto", help="where checkpoints generate: auto, cpu, cuda[:N]")
    make.add_argument("--allow-synthetic-real", action="store_true", dest="allow_synthetic_real",
                      help="accept --real volumes marked synthetic (refused by default; recorded in key.json)")
    make.add_argument("--overwrite", action="store_true",
                      help="replace a study medvol wrote in --out (removes only medvol's files, never others)")
    make.add_argument("--out", required=True, help="the study folder")
    add_threads_option(make)
    make.set_defaults(func=run_make)

    score = steps.add_parser(
        "score", help="score answer files against STUDY/key.json",
        description="Accuracy with exact binomial intervals, d′ and a TOST equivalence test (real vs fake); "
                    "votes, χ² on the totals and per pair, Fleiss' κ, Likert and time summaries. Writes "
                    "score.json, score.md and score.png.")
    score.add_argument("study", help="the study folder (with key.json beside page/) or the key file")
    score.add_argument("answers", nargs="+", help="answer files exported by the page (CSV or JSON)")
    score.add_argument("--margin", type=float, default=0.1, help="TOST equivalence margin around 0.5 (default 0.1)")
    score.add_argument("--alpha", type=float, default=0.05, help="TOST level (default 0.05)")
    score.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    score.add_argument("--overwrite", action="store_true",
                       help="replace another scoring medvol wrote in --out (removes only medvol's files)")
    score.add_argument("--out", required=True, help="output folder (not the study folder or its page)")
    score.set_defaults(func=run_score)


def run_make(args: argparse.Namespace) -> int:
    import logging

    from medvol.study.reader.make import make_study

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    set_threads(args.threads)  # key.json records the count
    from medvol.errors import MedvolError

    if args.mode == "single" and args.pairs is not None:
        raise MedvolError("--pairs is not used by --mode single: give --images (and --real-share)")
    if args.mode != "single" and (args.images is not None or args.real_share != 0.5):
        raise MedvolError(f"--images and --real-share are for --mode single; --mode {args.mode} takes --pairs")
    pairs = 30 if args.pairs is None else args.pairs
    out = make_study(args.out, args.fake, args.real, pairs=pairs, planes=args.planes, mode=args.mode,
                     seed=args.seed, window=args.window, positions=args.positions, real_split=args.real_split,
                     title=args.title, device=args.device, overwrite=args.overwrite,
                     allow_synthetic_real=args.allow_synthetic_real, images=args.images, real_share=args.real_share)
    what = f"{args.images or 100} single images" if args.mode == "single" else f"{pairs} pairs"
    print(f"wrote {what} to {out}: give readers the folder {out}/page/ only "
          f"(the key is {out}/key.json)")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from medvol.study.reader.score import score_study

    result = score_study(args.study, args.answers, args.out, margin=args.margin, alpha=args.alpha,
                         confidence=args.confidence, overwrite=args.overwrite)
    if result["mode"] == "single":
        pooled = result["pooled"]
        rates = "; ".join(f"{name} {r['value']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
                          for name, r in ((k, pooled[k]) for k in ("accuracy", "sensitivity", "specificity")))
        kappa = result["fleiss_kappa"]
        print(f"pooled over {pooled['accuracy']['n']} answers: {rates}; Fleiss kappa "
              f"{'n/a' if kappa is None else f'{kappa:.3f}'}; wrote score.json, score.md, score.png to {args.out}")
        return 0
    if "accuracy" in result:
        pooled = result["accuracy"]["pooled"]
        low, high = pooled["ci"]
        print(f"pooled accuracy {pooled['accuracy']:.3f} [{low:.3f}, {high:.3f}] over {pooled['n']} answers: "
              f"{pooled['verdict']}")
    votes = ", ".join(f"{name} {count}" for name, count in result["votes"].items())
    t = result["chi2_totals"]
    print(f"votes {votes}; chi2 totals {t['chi2']:.2f} (df {t['df']}, p {t['p']:.3g}); "
          f"wrote score.json, score.md, score.png to {args.out}")
    return 0
