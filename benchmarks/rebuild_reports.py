"""Rebuild the committed benchmark reports (docs/bench/<grid>/report/) from the records alone, with the bench of
this commit: `bench --records docs/bench/<grid> --report-only` under each grid's own settings, into a
scratch folder, then its report, tables and plots copied over the old ones. Nothing is trained.

The methods and schedules are those the records hold (a report covers every record of its grid); results.json
is left out, since it repeats the records that sit beside the report. Where docs/bench/step_cost.json exists
(benchmarks/step_cost.py), time-to-quality adds the speed-up in compute.

    python benchmarks/rebuild_reports.py                       # every grid below
    python benchmarks/rebuild_reports.py ancestral3k long10k   # some
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from timestep_sampling import bench
from timestep_sampling.bench.settings import DEFAULT_METHODS, FINAL_SUFFIX, FLOW_METHODS

from grids import DOCS_BENCH, GRIDS  # benchmarks/grids.py: each grid's settings

COPIED = ("report.md", "*.csv", "*.png")
STEP_COST = DOCS_BENCH / "step_cost.json"  # benchmarks/step_cost.py: the speed-up in compute, where it exists


def recorded_cells(folder: Path) -> tuple[list[str], list[str], int]:
    """(methods, schedules, seeds) of the records in a folder: methods in the default grids' order, then the
    rest by name, each `-final` control last (it is built from its learned run)."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    names = {r["method"] for r in records}
    order = [m for m in (*DEFAULT_METHODS, *FLOW_METHODS) if m in names]
    order += sorted(names - set(order))
    methods = sorted(order, key=lambda m: m.endswith(FINAL_SUFFIX))
    schedules = list(dict.fromkeys(r["schedule"] for r in sorted(records, key=lambda r: r["schedule"] != "linear")))
    return methods, schedules, 1 + max(r["seed"] for r in records)


def rebuild(grid: str) -> Path:
    folder = DOCS_BENCH / grid
    methods, schedules, seeds = recorded_cells(folder)
    options = dict(GRIDS[grid])
    flow = options.get("objective") == "flow"
    step_cost = STEP_COST if STEP_COST.is_file() else None
    with tempfile.TemporaryDirectory() as scratch:
        settings = bench.make_settings(scratch, methods=methods, schedules=None if flow else schedules, seeds=seeds,
                                       records=str(folder), report_only=True, progress=False,
                                       step_cost=step_cost and str(step_cost), **options)
        bench.run_bench(settings)
        target = folder / "report"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for pattern in COPIED:
            for path in sorted(Path(scratch).glob(pattern)):
                shutil.copy2(path, target / path.name)
        report = target / "report.md"  # the scratch folder's name is noise in a committed report
        report.write_text(report.read_text().replace(str(scratch), "<out>"))
    return target / "report.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grids", nargs="*", metavar="GRID", help="grids to rebuild (default: every one with records)")
    recorded = [grid for grid in GRIDS if any((DOCS_BENCH / grid).glob("*.json"))]
    grids = parser.parse_args().grids or recorded
    unknown = sorted(set(grids) - set(GRIDS))
    if unknown:
        parser.error(f"unknown grid {', '.join(unknown)}; valid: {', '.join(GRIDS)}")
    empty = sorted(set(grids) - set(recorded))
    if empty:
        parser.error(f"no records yet in {', '.join(f'docs/bench/{g}' for g in empty)}: run_cells.py adds them")
    for grid in grids:
        print(f"{grid}: wrote {rebuild(grid).relative_to(DOCS_BENCH.parents[1])}")


if __name__ == "__main__":
    main()
