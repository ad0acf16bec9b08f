"""One-off migration (2026-12-07): the records made with the learned samplers' K = 20 update take the names of
that update, so that `adaptive`, `adaptive-mix`, ... can mean the cheaper K = 40 update from then on.

A record of `adaptive` (and of -mix, -min-snr, -unbiased and the flow ones) whose fingerprint is the old
update's becomes `adaptive-k20`, file and fields; its `-final` control becomes `adaptive-k20-final`. The pinned
presets (methods.py: `adaptive-k20`, ...) have exactly the old fingerprints, so the reports keep every record.
Run once from the repository root, then `python benchmarks/rebuild_reports.py GRID` for each grid:

    python studies/k20_records.py [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from timestep_sampling.bench.settings import FINAL_SUFFIX, method_fingerprint

BENCH = Path(__file__).resolve().parents[1] / "docs" / "bench"
RENAMED = ("adaptive", "adaptive-mix", "adaptive-min-snr", "adaptive-unbiased", "flow-adaptive", "flow-adaptive-mix",
           "flow-adaptive-min-snr")
SUFFIX = "-k20"


def renamed(record: dict) -> str | None:
    """The record's new method name, or None if it keeps its own."""
    method = record["method"]
    if method in RENAMED and record.get("fingerprint") == method_fingerprint(method + SUFFIX, record["schedule"],
                                                                             record["grid"]["T"]):
        return method + SUFFIX
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    for grid in sorted(p for p in BENCH.iterdir() if p.is_dir()):
        records = {p: json.loads(p.read_text()) for p in sorted(grid.glob("*.json"))}
        records = {p: r for p, r in records.items() if isinstance(r, dict) and "method" in r and "evals" in r}
        moves = {}
        for path, r in records.items():
            new = renamed(r)
            if new:
                moves[path] = new
        learned = {(r["method"], r["schedule"], r["seed"]): moves[p] for p, r in records.items() if p in moves}
        for path, r in records.items():  # each renamed run's `-final` control follows it
            source = r["method"][:-len(FINAL_SUFFIX)] if r["method"].endswith(FINAL_SUFFIX) else None
            if source and (source, r["schedule"], r["seed"]) in learned:
                moves[path] = learned[(source, r["schedule"], r["seed"])] + FINAL_SUFFIX
        for path, new in moves.items():
            r = records[path]
            target = path.with_name(f"{new}__{r['schedule']}__s{r['seed']}.json")
            print(f"{grid.name}: {path.name} -> {target.name}")
            if args.dry_run:
                continue
            r["method"] = new
            for e in r["evals"]:
                e["method"] = new
            subprocess.run(["git", "mv", str(path), str(target)], check=True)
            target.write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
