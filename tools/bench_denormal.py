"""What flushing float32 denormals to zero does to a CPU training run (``train.flush_denormal``).

Trains one config twice for ``--iterations`` on one thread, with ``--train.flush_denormal true``
and ``false``, and reports per window of the log (``train.log_every`` iterations) the speed the
trainer logged, plus each run's CPU seconds and the 1-minute load before and after. Results go to
``OUT/denormal.json`` and ``OUT/denormal.md``; the two runs' logs beside them.

    python tools/bench_denormal.py --config configs/learn/fastgan_64.yaml --out /tmp/denormal \\
        --iterations 600 --cache /tmp/cache64_256

Speeds are wall-clock: run it on an otherwise idle machine (the load is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learn_check import phantom_cache, train  # noqa: E402

SPEED = re.compile(r"^it (\d+)/\d+ .* ([0-9.]+) it/s")


def speeds(log: Path) -> list[tuple[int, float]]:
    """(iteration, it/s) of each progress line of a training log."""
    found = []
    for line in log.read_text(encoding="utf-8").splitlines():
        match = SPEED.match(line)
        if match:
            found.append((int(match.group(1)), float(match.group(2))))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--cache", metavar="DIR", help="train on a preprocessing cache of the config's phantoms")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out)
    if out.exists():
        sys.exit(f"bench_denormal: {out} exists; name a new folder")
    out.mkdir(parents=True)
    overrides = [*overrides, "--train.iterations", str(args.iterations), "--train.ckpt_every", str(args.iterations),
                 "--train.sample_every", str(args.iterations)]
    if args.cache:
        overrides = [*overrides, *phantom_cache(args.config, overrides, Path(args.cache).resolve())]
    report = {"config": args.config, "iterations": args.iterations, "overrides": overrides, "runs": {}}
    for flush in ("true", "false"):
        log = out / f"flush_{flush}.log"
        timing = train(args.config, out / f"run_flush_{flush}", [*overrides, "--train.flush_denormal", flush], log)
        report["runs"][flush] = dict(timing, speeds=speeds(log))
    rows = ["| iteration | it/s, flush on | it/s, flush off |", "|---|---|---|"]
    on, off = (dict(report["runs"][k]["speeds"]) for k in ("true", "false"))
    rows += [f"| {it} | {on.get(it, '')} | {off.get(it, '')} |" for it in sorted(set(on) | set(off))]
    for flush in ("true", "false"):
        run = report["runs"][flush]
        rows.append(f"\nflush {flush}: {run['cpu_s']} CPU s, {run['wall_s']} s wall, "
                    f"load {run['load1_before']} -> {run['load1_after']}")
    (out / "denormal.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "denormal.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
