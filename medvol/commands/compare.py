"""``medvol compare OUT_A OUT_B ...``: one table of several `medvol evaluate` outputs."""

from __future__ import annotations


#: What a Ctrl-C leaves (``medvol.cli``).
INTERRUPTED = "nothing was written (--out is written whole or not at all)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="side-by-side table of several evaluations",
        description="Print one markdown table of the scores in several `medvol evaluate` output "
                    "folders. Refuses evaluations computed with different extractors, weights, "
                    "real sets or N, whose scores do not compare.")
    parser.add_argument("folders", nargs="+", help="evaluation output folders (with scores.json)")
    parser.add_argument("--out", help="also write the table to this markdown file (a file that is not a table "
                                      "medvol compare wrote is never replaced)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier table in --out")
    parser.set_defaults(func=run)


def run(args) -> int:
    from medvol.eval.evaluate import check_table_output, compare, write_table

    if args.out:
        check_table_output(args.out, args.overwrite)  # before reading the evaluations
    table = compare(args.folders)
    print(table, end="")
    if args.out:
        write_table(args.out, table, args.overwrite)
    return 0
