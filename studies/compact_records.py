"""Rewrite bench records (`bench --records FOLDER`) written before 2026-12-04 in the compact form the bench
writes now: a learned sampler's density track as one line of text per evaluation (records.py,
`pack_density`) instead of one number per line, about a third of the size. Lossless: every record is read
back and must equal the original, number for number, before it replaces it; a record already compact, or
without a density track, is left as it is.

    python studies/compact_records.py docs/bench/credit3k docs/bench/long10k [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from timestep_sampling.bench.records import pack_record, unpack_record


def compact(path: Path, dry_run: bool = False) -> tuple[int, int]:
    """(bytes before, bytes after) of one record file."""
    text = path.read_text()
    record = json.loads(text)
    density = (record.get("sampler") or {}).get("density")
    if not density or all(isinstance(row, str) for row in density):
        return len(text), len(text)
    new = json.dumps(pack_record(record), indent=1) + "\n"
    if unpack_record(json.loads(new)) != record:
        raise SystemExit(f"{path}: the compact form does not read back as the original; left as it is")
    if not dry_run:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(new)
        os.replace(tmp, path)
    return len(text), len(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="check and measure, write nothing")
    args = parser.parse_args()
    before = after = 0
    for folder in args.folders:
        for path in sorted(folder.glob("*.json")):
            b, a = compact(path, args.dry_run)
            before, after = before + b, after + a
    print(f"{before / 1e6:.2f} MB -> {after / 1e6:.2f} MB" + (" (dry run)" if args.dry_run else ""))


if __name__ == "__main__":
    main()
