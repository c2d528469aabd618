"""``medvol study downstream``: U-Nets (``--task segment``) or classifiers (``--task classify``) trained on
real, augmented, synthetic and mixed data."""

from __future__ import annotations

import argparse
import shlex
import sys

from medvol.utils import add_threads_option, set_threads


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths such as 8,16,32, got {text!r}") from None
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive widths, got {text!r}")
    return values


#: Options of one task only, with the task they belong to (refused with the other).
SEGMENT_ONLY = {"labels": "--labels", "unet_channels": "--unet-channels", "generate_seed": "--generate-seed"}
CLASSIFY_ONLY = {"classify_by": "--classify-by", "positive": "--positive", "net": "--net", "channels": "--channels",
                 "weights": "--weights"}


def register(actions) -> None:
    parser = actions.add_parser(
        "downstream",
        help="does synthetic data help train a segmentation U-Net or a classifier? (Dice / accuracy vs FID)",
        description="Train a MONAI U-Net (--task segment, default) or classifier (--task classify) on: the real "
                    "cache's train split; the same with classical augmentation; each synthetic source alone; "
                    "real + each synthetic source; each with --seeds seeds. Score it on the cache's val split "
                    "(held-out real data): Dice and IoU per class, or accuracy with false positives and negatives, "
                    "sensitivity and specificity; each source's FID beside it. Synthetic data are used for training "
                    "on purpose here, and checked to be marked synthetic. Writes results.json, results.md and a plot "
                    "against FID into --out; an interrupted study resumes, and a later run with another --synthetic "
                    "adds the source (docs/studies.md).")
    parser.add_argument("--task", choices=("segment", "classify"), default="segment",
                        help="segment (default): U-Nets on image + label map; classify: a classifier of a binary "
                             "class per item")
    parser.add_argument("--real", required=True, metavar="CACHE",
                        help="a medvol cache: with label maps, or a 2D image cache with masks (segment), or whose "
                             "items carry a class (classify: phantom factors or a label per item)")
    parser.add_argument("--synthetic", action="append", default=[], metavar="[NAME=]DIR_OR_CKPT", required=True,
                        help="segment: generated images with X_mask files beside them (`medvol generate --out DIR` "
                        "of a model with mask channels), or a checkpoint / run folder to generate them from; "
                        "classify: a folder with negative/ and positive/ of generated images; repeat")
    parser.add_argument("--n-synthetic", type=int, metavar="N",
                        help="synthetic images per source (a folder: its first N, per class for classify; a "
                             "checkpoint: N generated, default 32)")
    parser.add_argument("--seeds", type=int, default=3, help="networks per set-up (default 3)")
    parser.add_argument("--iterations", type=int, default=150, help="training iterations per network (default 150)")
    parser.add_argument("--batch", type=int, help="batch size (default 2 for segment, 4 for classify)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    segment = parser.add_argument_group("segment")
    segment.add_argument("--labels", metavar="NAME,NAME", help="classes to segment (default: every class of the cache)")
    segment.add_argument("--unet-channels", type=_channels, metavar="W,W,...",
                         help="U-Net widths, stride 2 between them (default 8,16,32)")
    segment.add_argument("--generate-seed", type=int, help="latent seed of checkpoint sources (default 0)")
    classify = parser.add_argument_group("classify")
    classify.add_argument("--classify-by", metavar="FACTOR|label",
                          help="where an item's class comes from: a discrete phantom factor of the cache's entries "
                               "(asymmetry (default), habitus, mode) or `label` (the entry's class label; the only one of a "
                               "2D image cache, whose --positive may name classes)")
    classify.add_argument("--positive", metavar="VALUE,VALUE",
                          help="values that are the positive class, every other is negative (default: every value but "
                               "`none` for asymmetry, every label but 0 for label)")
    classify.add_argument("--net", choices=("classifier", "densenet121"),
                          help="MONAI network: classifier (small, widths --channels; default) or densenet121")
    classify.add_argument("--channels", type=_channels, metavar="W,W,...",
                          help="widths of the classifier, stride 2 each (default 8,16,32)")
    classify.add_argument("--weights", metavar="FILE[:SHA256]",
                          help="start every network from this state dict (its sha256 recorded; nothing is downloaded)")
    parser.add_argument("--features", metavar="FILE",
                        help="domain feature file for FID of volumes (default: trained on the real train split "
                        "into OUT/domain_features.pt)")
    parser.add_argument("--feature-iters", type=int, default=100,
                        help="iterations of that training (default 100)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")
    add_threads_option(parser)
    parser.add_argument("--out", required=True, help="the study folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvol.errors import MedvolError

    def log(message: str) -> None:
        print(f"medvol study downstream: {message}", file=sys.stderr, flush=True)

    other = CLASSIFY_ONLY if args.task == "segment" else SEGMENT_ONLY
    given = [flag for dest, flag in other.items() if getattr(args, dest) is not None]
    if given:
        raise MedvolError(f"{given[0]}: an option of --task {'classify' if args.task == 'segment' else 'segment'}, "
                          f"not of --task {args.task}")
    set_threads(args.threads)  # results.json records the count ("threads")
    command = shlex.join(["medvol", *sys.argv[1:]])
    if args.task == "classify":
        return _classify(args, log, command)
    from medvol.study.downstream.study import run_downstream

    labels = [n.strip() for n in args.labels.split(",")] if args.labels else None
    results = run_downstream(args.real, args.synthetic, args.out, n_synthetic=args.n_synthetic, seeds=args.seeds,
                             labels=labels, iterations=args.iterations, batch=args.batch or 2, lr=args.lr,
                             channels=args.unet_channels or (8, 16, 32), features=args.features,
                             feature_iters=args.feature_iters, generate_seed=args.generate_seed or 0,
                             device=args.device, log=log, command=command)
    for row in results["setups"]:
        mean = row["mean_dice"]
        spread = f" ± {mean['std']:.3f}" if mean["std"] is not None else ""
        value = f"{mean['mean']:.3f}{spread}" if mean["mean"] is not None else "n/a"
        iou = row["mean_iou"]["mean"]
        fid = f", FID {row['fid']:.4g}" if row["fid"] is not None else ""
        print(f"{row['title']}{' (' + row['source'] + ')' if row['source'] else ''}: mean Dice {value}"
              f"{f', mean IoU {iou:.3f}' if iou is not None else ''}{fid}")
    print(f"wrote results.json, results.md and dice_vs_fid.png to {args.out}")
    return 0


def _classify(args: argparse.Namespace, log, command: str) -> int:
    from medvol.study.downstream.classify_study import run_classify

    positive = [v.strip() for v in args.positive.split(",")] if args.positive else None
    results = run_classify(args.real, args.synthetic, args.out, classify_by=args.classify_by or "asymmetry",
                           positive=positive, n_synthetic=args.n_synthetic, seeds=args.seeds,
                           iterations=args.iterations, batch=args.batch or 4, lr=args.lr, net=args.net or "classifier",
                           channels=args.channels or (8, 16, 32), weights=args.weights, features=args.features,
                           feature_iters=args.feature_iters, device=args.device, log=log, command=command)
    for row in results["setups"]:
        acc = row["accuracy"]
        value = "n/a" if acc["mean"] is None else f"{acc['mean']:.3f}" + (f" ± {acc['std']:.3f}" if acc["std"] else "")
        fp, fn = row["fp"]["mean"], row["fn"]["mean"]
        counts = f", FP {fp:.1f}, FN {fn:.1f}" if fp is not None else ""
        fid = f", FID {row['fid']:.4g}" if row["fid"] is not None else ""
        print(f"{row['title']}{' (' + row['source'] + ')' if row['source'] else ''}: accuracy {value}{counts}{fid}")
    print(f"wrote results.json, results.md and accuracy_vs_fid.png to {args.out}")
    return 0
