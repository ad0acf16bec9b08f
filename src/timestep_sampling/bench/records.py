"""Finished benchmark runs kept as small JSON files, one per grid cell, so that a grid too long for one
sitting fills up over many sittings and machines.

    RECORDS/<method>__<schedule>__s<seed>.json   the run's evaluations, final sampler, cost and provenance

A learned sampler's density track is most of a record (a row of T numbers per evaluation), so a record
keeps each row as one line of text (`pack_density`); records written before hold lists of numbers, and
both read alike.

A run writes its record when it is scored; `bench --records RECORDS` skips every cell already recorded
under the same grid settings and builds its report from all the records there, including those written
by other invocations (another seed range, another machine, an earlier session). A record made under
other settings (steps, model, evaluation...) is left alone and not mixed in.
"""
from __future__ import annotations

import datetime
import functools
import itertools
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from ..errors import UserError, require
from .settings import FD_SAMPLERS, FLOW_TIME

# The settings that make two runs comparable; the rest (device, output folder, progress) do not matter.
GRID_KEYS = ("data", "model", "batch_size", "T", "steps", "eval_every", "warmup", "ema_decay", "final_exact",
             "eval_exact_below", "eval_strata", "fd_samples", "ddim_steps", "sample_seed", "extra", "objective",
             "eval_images")
# What a key added later meant for a record written before it: every run then was DDPM, and scored its bits/dim
# on the whole test split (eval_images None).
LEGACY_GRID = {"objective": "ddpm", "eval_images": None}


def grid_key(settings) -> dict:
    return {k: getattr(settings, k) for k in GRID_KEYS}


def record_grid(record: dict) -> dict:
    """The grid settings a record was made under, keys added since read as they meant then (LEGACY_GRID)."""
    return {**LEGACY_GRID, **record.get("grid", {})}


def _same_grid(record: dict, key: dict) -> bool:
    return record_grid(record) == key


@functools.cache
def code_version() -> dict:
    """The commit this process's code came from, read once: a run that takes hours is the code it started
    with, whatever is committed while it trains."""
    root = Path(__file__).resolve().parent

    def git(*args) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def provenance() -> dict:
    """Where and how a run was made: commit (`code_version`), threads, machine, versions, date."""
    return {**code_version(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor() or None, "python": platform.python_version(),
            "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_name(method: str, schedule: str, seed: int) -> str:
    """The name of a grid cell: its run folder and its record file."""
    return f"{re.sub(r'[^A-Za-z0-9.+_-]', '_', method)}__{schedule}__s{seed}"


def record_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def write_record(folder: Path, name: str, settings, record: dict) -> Path:
    """Write one cell's record atomically (a half-written record would be read as finished), with this
    machine's provenance unless the record carries its own."""
    folder = Path(folder)
    path = record_path(folder, name)
    check_not_replacing(folder, name, record.get("fingerprint"))
    body = {"grid": grid_key(settings), **record}
    body.setdefault("provenance", provenance())  # a record rewritten to add scores keeps where it was made
    return rewrite_record(path, body)


def check_not_replacing(folder: Path, name: str, fingerprint: str | None) -> None:
    """Refuse to write over a cell's record that another meaning of the method's name made: a preset whose
    defaults changed (the learned sampler's update, 2026-12-07) would otherwise replace the old records, which
    the reports and the README are built from, with runs of something else under the same name."""
    path = record_path(folder, name)
    old = load_record(path) if path.is_file() else None
    made_by = None if old is None else old.get("fingerprint")
    require(made_by is None or fingerprint is None or made_by == fingerprint,
            f"{str(path)!r} holds the record of {made_by}, but {name.split('__')[0]!r} now trains {fingerprint}: "
            f"run the old configuration by its spec (docs/methods.md), or record into another --records folder")


def rewrite_record(path: Path, record: dict) -> Path:
    """Write a whole record (its grid included) to `path` atomically, in the compact form."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(pack_record(record), indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write the run record {str(path)!r} ({e.strerror or e})") from None
    return path


def read_record(folder: Path, name: str, settings, fingerprint: str | None = None) -> dict | None:
    """The cell's record if there is one made under these grid settings and, when both say, by a method
    with the same `fingerprint` (what the method's name resolves to: a preset whose defaults changed since
    is another method). Records written before fingerprints existed are taken as they are."""
    path = record_path(folder, name)
    if not path.is_file():
        return None
    record = load_record(path)
    if record is None or not _same_grid(record, _jsonable(grid_key(settings))):
        return None
    if fingerprint is not None and record.get("fingerprint", fingerprint) != fingerprint:
        return None
    return record


def all_records(folder: Path, settings, say=None) -> list[dict]:
    """Every record in the folder made under these grid settings, in file-name order; `say` (print) is told
    the files that could not be read as records."""
    key = _jsonable(grid_key(settings))
    paths = sorted(Path(folder).glob("*.json"))
    records = [load_record(p) for p in paths]
    unreadable = [p.name for p, r in zip(paths, records) if r is None]
    if unreadable and say is not None:
        say(f"skipped {len(unreadable)} file(s) in {folder} that are not readable run records: "
            f"{', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''}")
    return [r for r in records if r is not None and _same_grid(r, key)]


def load_record(path: Path) -> dict | None:
    """A record file as the bench reads it (its density track unpacked, its scores under today's names:
    `legacy_scores`); None if it cannot be read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # unreadable: treated as absent, so the cell is run again
    if not _well_formed(record):
        return None
    record["evals"] = [legacy_scores(e) for e in record["evals"]]
    return unpack_record(record)


def _well_formed(record) -> bool:
    """The fields every reader of a record indexes: a cell's names and seed, and evaluations with a step and
    numeric scores (a hand-edited or truncated-then-repaired file must not reach the report as a traceback)."""
    if not (isinstance(record, dict) and isinstance(record.get("method"), str)
            and isinstance(record.get("schedule"), str) and isinstance(record.get("seed"), int)
            and isinstance(record.get("evals"), list) and record["evals"]):
        return False
    cell = (record["method"], record["schedule"], record["seed"])
    for e in record["evals"]:
        if not (isinstance(e, dict) and isinstance(e.get("step"), int) and isinstance(e.get("bpd_method"), str)
                and (e.get("method"), e.get("schedule"), e.get("seed")) == cell):
            return False
        scores = [v for k, v in e.items() if k.startswith(("test_", "train_", "fd", "fid", "kid"))]
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in scores):
            return False
    return True


def legacy_scores(evaluation: dict) -> dict:
    """An evaluation with its `fd` and `fid` (written before the bench scored several samplers: DDIM's, or
    Euler's for a flow, filed under the schedule "flow") under their names now, fd_ddim / fd_euler and
    fid_ddim / fid_euler. Such a record has no ancestral FD: a report shows it as missing."""
    if not any(k in evaluation for k in ("fd", "fid")):
        return evaluation
    sampler = FD_SAMPLERS["flow" if evaluation.get("schedule") == FLOW_TIME else "ddpm"][0]
    out = {}
    for key, value in evaluation.items():
        name = f"{key}_{sampler}" if key in ("fd", "fid") else key
        if name not in evaluation or name == key:
            out[name] = value
    return out


# ----------------------------------------------------------------------------- the density track, compact

def pack_density(rows) -> list[str]:
    """Each row of a density track (p(t)·T per t, 3 significant digits as `sampler_summary` rounds it) as
    one line: its numbers to 4 significant digits (a 3-digit number comes back exactly), a run of n equal
    numbers written once as "v*n" (a band policy's density is flat within each band)."""
    lines = []
    for row in rows:
        tokens = []
        for value, run in itertools.groupby(f"{float(v):.4g}" for v in row):
            n = len(list(run))
            tokens.append(value if n == 1 else f"{value}*{n}")
        lines.append(" ".join(tokens))
    return lines


def unpack_density(rows) -> list[list[float]]:
    """The inverse of `pack_density`; rows that are already lists of numbers (older records) pass as they are."""
    out = []
    for row in rows:
        if not isinstance(row, str):
            out.append([float(v) for v in row])
            continue
        values = []
        for token in row.split():
            value, _, n = token.partition("*")
            values += [float(value)] * (int(n) if n else 1)
        out.append(values)
    return out


def pack_record(record: dict) -> dict:
    sampler = record.get("sampler")
    if not sampler or "density" not in sampler:
        return record
    return {**record, "sampler": {**sampler, "density": pack_density(sampler["density"])}}


def unpack_record(record: dict) -> dict:
    sampler = record.get("sampler")
    if not sampler or "density" not in sampler:
        return record
    return {**record, "sampler": {**sampler, "density": unpack_density(sampler["density"])}}


# ----------------------------------------------------------------------------- scores from a shorter run

# The scores that must agree wherever a run and its supposed beginning both evaluated: bits/dim estimated the
# same way at every checkpoint, and DDIM's FD (computed at every checkpoint from the same starting noise).
PREFIX_CHECKS = ("test_bpd_estimate", "fd_ddim", "fd_euler")


def scores_from_prefix(record: dict, prefix: dict, metrics=("fd_ddpm",)) -> tuple[dict, list[str]]:
    """`record` with the `metrics` it lacks at the last step of `prefix`, a shorter run of the same cell
    under the same grid but for its length (the trainer's learning rate and EMA do not depend on the run's
    length, so its first steps are the longer run's), taken from that run; and the metrics added.

    Whether `prefix` is this run's beginning is measured, not assumed: at every step both evaluated, its
    estimated bits/dim and its DDIM FD must equal the record's (to 1e-9), the last step included, where both
    hold the weights after the same training. Anything else is a UserError, so a prefix that trained
    differently (another commit, thread count or machine) never lends its scores to another run."""
    cell = lambda r: (r.get("method"), r.get("schedule"), r.get("seed"), r.get("fingerprint"))
    name = run_name(*cell(record)[:3])
    require(cell(record) == cell(prefix), f"{name}: the shorter run is another cell or method ({cell(prefix)})")
    grid, short = record_grid(record), record_grid(prefix)
    others = sorted(k for k in {*grid, *short} - {"steps"} if grid.get(k) != short.get(k))
    require(not others, f"{name}: the shorter run was made under other settings ({', '.join(others)})")
    require(short.get("steps", 0) < grid.get("steps", 0), f"{name}: the prefix run is not shorter "
                                                          f"({short.get('steps')} steps against {grid.get('steps')})")
    ours, theirs = ({e["step"]: e for e in r["evals"]} for r in (record, prefix))
    last = max(theirs)
    require(last in ours, f"{name}: the long run has no evaluation at step {last}, the shorter run's last")
    for step in sorted(set(ours) & set(theirs)):
        for key in PREFIX_CHECKS:
            a, b = ours[step].get(key), theirs[step].get(key)
            if a is None or b is None:
                continue
            require(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
                    f"{name}: the shorter run is not this run's beginning: {key} at step {step} is {b!r} there "
                    f"and {a!r} here")
    require(theirs[last].get("test_bpd_estimate") is not None and ours[last].get("test_bpd_estimate") is not None,
            f"{name}: no estimated bits/dim at step {last} in both runs, so nothing shows they reached the same weights")
    new = {m: theirs[last][m] for m in metrics if ours[last].get(m) is None and theirs[last].get(m) is not None}
    if not new:
        return record, []
    evals = [{**e, **new} if e["step"] == last else e for e in record["evals"]]
    note = {"metrics": sorted(new), "step": last, "from_prefix_run": prefix.get("provenance", {})}
    return {**record, "evals": evals, "scores_added": record.get("scores_added", []) + [note]}, sorted(new)


def _jsonable(value):
    return json.loads(json.dumps(value))
