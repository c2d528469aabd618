"""``medvol features train --data CACHE --out FILE``: the domain feature network for evaluation."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "features", help="train the domain feature network used by `medvol evaluate`",
        description="Feature networks for evaluation. `train` fits medvol's 3D autoencoder to the "
                    "train split of a preprocessing cache and writes it to --out, for "
                    "`medvol evaluate --features domain:FILE`.")
    sub = parser.add_subparsers(dest="features_command", metavar="ACTION")
    sub.required = True
    train = sub.add_parser("train", help="train the domain autoencoder on a cache")
    train.add_argument("--data", required=True, help="preprocessing cache (its train split is used)")
    train.add_argument("--out", required=True, help="output file (e.g. domain32.pt)")
    train.add_argument("--iters", type=int, default=300, help="iterations (default 300)")
    train.add_argument("--batch", type=int, default=4, help="batch (default 4)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", metavar="auto|FILE",
                       help="auto: continue the training of --out to --iters (refused if the data or recipe "
                            "changed, unless --allow-changes); FILE: start from another feature file's training "
                            "state and write the continuation to --out (a fork)")
    train.add_argument("--ckpt-every", type=int, default=0, metavar="N",
                       help="also write --out every N iterations, so a killed training resumes (default: at the end)")
    train.add_argument("--allow-changes", action="store_true",
                       help="with --resume auto: continue although the data or recipe changed (recorded)")
    train.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out that is a domain feature file (any other file is "
                            "never replaced)")
    train.set_defaults(func=run)


def run(args) -> int:
    from medvol.eval.domain import train_domain_features

    blob = train_domain_features(args.data, args.out, iters=args.iters, batch=args.batch,
                                 lr=args.lr, seed=args.seed, overwrite=args.overwrite, resume=args.resume,
                                 ckpt_every=args.ckpt_every, allow_changes=args.allow_changes, device=args.device)
    loss = blob["train"]["loss"]
    print(f"wrote {args.out}: {blob['size']}^3 autoencoder, L1 {loss[0]:.4f} -> {loss[-1]:.4f} "
          f"over {len(loss)} iterations on {blob['data']['n_volumes']} volumes")
    return 0
