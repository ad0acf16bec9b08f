"""Give the runs of a bench grid the scores they lack at an earlier step, from a grid of shorter runs that are
their beginnings (records.py, `scores_from_prefix`).

The ancestral FD (1000 model calls an image) is costly, so a grid may compute it at its last step only; to
know how soon a method reaches a quality, its FD is also wanted halfway. Training the same cells again for
half the steps, with the ancestral FD at their end, gives it at a third of the cost of running the whole grid
again: the trainer's learning rate and EMA do not depend on the run's length, so those runs are the long
runs' first halves, and each is checked to be one (equal bits/dim and DDIM FD at every shared checkpoint)
before its score is copied. The record notes what was added and where the shorter run was made.

    timestep-sampling bench --out runs/half --steps 1500 --eval-every 500 --fd-ddpm-every 1500 \\
        --records docs/bench/ancestral1500 ...              # the same cells, half as long
    python benchmarks/scores_from_prefix.py docs/bench/ancestral3k docs/bench/ancestral1500 [--dry-run]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from timestep_sampling.bench.records import load_record, rewrite_record, scores_from_prefix
from timestep_sampling.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path, help="the long runs' records, given the scores")
    parser.add_argument("prefixes", type=Path, help="the records of the shorter runs of the same cells")
    parser.add_argument("--metrics", default="fd_ddpm", help="comma-separated scores to copy (default fd_ddpm)")
    parser.add_argument("--dry-run", action="store_true", help="check and say, write nothing")
    args = parser.parse_args()
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    filled = 0
    for path in sorted(args.records.glob("*.json")):
        record, prefix = load_record(path), load_record(args.prefixes / path.name)
        if record is None or prefix is None:
            continue
        try:
            new, added = scores_from_prefix(record, prefix, metrics)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        step = max(e["step"] for e in prefix["evals"])
        print(f"{path.stem}: " + (f"{', '.join(added)} at step {step} added" if added else "nothing to add"))
        if added and not args.dry_run:
            rewrite_record(path, new)
            filled += 1
    print(f"{filled} record(s) given scores" + (" (dry run)" if args.dry_run else ""))


if __name__ == "__main__":
    main()
