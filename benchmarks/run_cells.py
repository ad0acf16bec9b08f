"""Add records to a committed grid (benchmarks/grids.py): train the cells (method, schedule, seed) that
docs/bench/<grid>/ lacks, one `timestep-sampling bench --only-seeds` process per cell, a few side by side with
one torch thread each, and start no cell after a deadline, so a session that must stop at a known time ends
with whole records rather than killed runs. Cells already recorded under the grid's settings are skipped, so
the same command picks up where an earlier session stopped.

    python benchmarks/run_cells.py ancestral10k --methods lognormal-edm,adaptive --lanes 2 --no-start-after 00:27
    python benchmarks/run_cells.py flow3k --methods flow-uniform,flow-adaptive --dry-run

Each cell writes its record into docs/bench/<grid>/ when it finishes (commit it), its run folder and log under
runs/cells/<grid>/. Then `python benchmarks/rebuild_reports.py <grid>` rebuilds the report.

Why by hand: the cells are independent processes that must each keep to one core, and the deadline is about
when a process starts, not how long it runs; a thread pool over subprocesses does this in a few lines.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from timestep_sampling import bench
from timestep_sampling.bench import records as bench_records
from timestep_sampling.errors import UserError

from grids import DOCS_BENCH, GRIDS, cli_flags  # benchmarks/grids.py: each grid's settings

RUNS = Path(__file__).resolve().parents[1] / "runs" / "cells"


def grid_settings(grid: str, methods: list[str], schedules: list[str] | None, seeds: list[int]):
    """The bench settings of these cells under the grid's own options (every method and schedule name checked)."""
    options = dict(GRIDS[grid])
    flow = options.get("objective") == "flow"
    return bench.make_settings(RUNS / grid, methods=methods, schedules=None if flow else schedules,
                               seeds=1 + max(seeds), only_seeds=tuple(seeds), records=str(DOCS_BENCH / grid),
                               progress=False, **options)


def missing_cells(settings, folder: Path) -> list[tuple[str, str, int]]:
    """The settings' cells, method by method, with no record in `folder` made under these grid settings (for a
    `-final` cell: none of the control its name makes now, bench.read_cell_record)."""
    cells = [(m, s, seed) for m in settings.methods for s in settings.schedules for seed in settings.seed_list]
    return [c for c in cells if bench.read_cell_record(folder, bench_records.run_name(*c), settings) is None]


def bench_command(grid: str, cell: tuple[str, str, int], records: Path, out: Path) -> list[str]:
    """The one-cell bench invocation: the grid's flags, this cell's method, schedule and seed."""
    method, schedule, seed = cell
    options = dict(GRIDS[grid])
    command = [sys.executable, "-m", "timestep_sampling", "bench", *cli_flags(options), "--records", str(records),
               "--methods", method, "--seeds", str(seed + 1), "--only-seeds", str(seed), "--no-progress",
               "--out", str(out)]
    if options.get("objective") != "flow":
        command += ["--schedules", schedule]
    return command


def parse_deadline(text: str | None, now: dt.datetime) -> dt.datetime | None:
    """"HH:MM" (its nearest occurrence, local time: within 12 hours either way, so 00:27 read at 23:00 is
    tomorrow's, and 06:14 read at 06:26 has passed, rather than being tomorrow's) or "+MINUTES" from now;
    None for no deadline. A deadline already passed starts no cell: a chain of runners that reaches its next
    runner late must not start a 30-minute cell at the end of a session."""
    if text is None:
        return None
    try:
        if text.startswith("+"):
            return now + dt.timedelta(minutes=float(text[1:]))
        clock = dt.datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise UserError(f"--no-start-after takes HH:MM or +MINUTES, e.g. 00:27 or +90; got {text!r}") from None
    deadline = dt.datetime.combine(now.date(), clock)
    half_day = dt.timedelta(hours=12)
    if deadline < now - half_day:
        return deadline + dt.timedelta(days=1)
    return deadline - dt.timedelta(days=1) if deadline > now + half_day else deadline


def run_lanes(jobs: list[tuple[str, list[str], Path]], lanes: int, deadline: dt.datetime | None,
              threads: int = 1, say=print) -> dict[str, int | None]:
    """Run (name, command, log) jobs, `lanes` at a time, each with `threads` torch threads; a job not started
    by the deadline is skipped (None). Returns each job's exit status."""
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    status: dict[str, int | None] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def lane(number: int) -> None:
        while True:
            try:
                name, command, log = todo.get_nowait()
            except queue.Empty:
                return
            if deadline is not None and dt.datetime.now() > deadline:
                say(f"{dt.datetime.now():%H:%M} skip {name}: past {deadline:%H:%M}")
                status[name] = None
                continue
            log.parent.mkdir(parents=True, exist_ok=True)
            say(f"{dt.datetime.now():%H:%M} lane {number}: start {name} (log {log})")
            began = time.monotonic()
            with open(log, "w") as out:
                status[name] = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            say(f"{dt.datetime.now():%H:%M} lane {number}: {name} exit {status[name]} "
                f"after {(time.monotonic() - began) / 60:.1f} min")

    workers = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=sorted(GRIDS))
    parser.add_argument("--methods", required=True, help="comma-separated, e.g. lognormal-edm,adaptive")
    parser.add_argument("--schedules", default="linear", help="comma-separated (ignored by a flow grid)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--lanes", type=int, default=2, help="cells side by side (default 2: one per core here)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    parser.add_argument("--no-start-after", metavar="TIME", help="start no cell after HH:MM or +MINUTES")
    parser.add_argument("--dry-run", action="store_true", help="print the missing cells' commands, run nothing")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not seeds or min(seeds) < 0 or args.lanes < 1 or args.threads < 1:
            raise ValueError
    except ValueError:
        parser.error("--seeds takes seeds >= 0 (e.g. 0,1,2); --lanes and --threads integers >= 1")
    try:
        deadline = parse_deadline(args.no_start_after, dt.datetime.now())
        settings = grid_settings(args.grid, args.methods.split(","), args.schedules.split(","), seeds)
    except UserError as error:
        parser.error(str(error))
    folder = DOCS_BENCH / args.grid
    cells = missing_cells(settings, folder)
    print(f"{args.grid}: {len(cells)} cell(s) to run" + (f", none started after {deadline:%H:%M}" if deadline else ""))
    jobs = []
    for cell in cells:
        name = bench_records.run_name(*cell)
        jobs.append((name, bench_command(args.grid, cell, folder, RUNS / args.grid / name),
                     RUNS / args.grid / f"{name}.log"))
        if args.dry_run:
            print(" ".join(jobs[-1][1]))
    if args.dry_run or not jobs:
        return 0
    status = run_lanes(jobs, args.lanes, deadline, args.threads)
    failed = sorted(name for name, code in status.items() if code)
    print(f"recorded {sum(code == 0 for code in status.values())}, skipped "
          f"{sum(code is None for code in status.values())}, failed {len(failed)} {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
