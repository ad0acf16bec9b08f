"""Finished benchmark runs kept as small JSON files, one per grid cell, so that a grid too long for one
sitting fills up over many sittings and machines.

    RECORDS/<method>__<schedule>__s<seed>.json   the run's evaluations, final sampler, cost and provenance

A run writes its record when it is scored; `bench --records RECORDS` skips every cell already recorded
under the same grid settings and builds its report from all the records there, including those written
by other invocations (another seed range, another machine, an earlier session). A record made under
other settings (steps, model, evaluation...) is left alone and not mixed in.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from .errors import UserError

# The settings that make two runs comparable; the rest (device, output folder, progress) do not matter.
GRID_KEYS = ("data", "model", "batch_size", "T", "steps", "eval_every", "warmup", "ema_decay", "final_exact",
             "eval_exact_below", "eval_strata", "fd_samples", "ddim_steps", "sample_seed", "extra", "objective")
# What a key added later meant for a record written before it: every run then was DDPM.
LEGACY_GRID = {"objective": "ddpm"}


def grid_key(settings) -> dict:
    return {k: getattr(settings, k) for k in GRID_KEYS}


def _same_grid(record: dict, key: dict) -> bool:
    return {**LEGACY_GRID, **record.get("grid", {})} == key


def provenance() -> dict:
    """Where and how a run was made: commit, threads, machine, versions, date."""
    root = Path(__file__).resolve().parent

    def git(*args) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor() or None, "python": platform.python_version(),
            "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_name(method: str, schedule: str, seed: int) -> str:
    """The name of a grid cell: its run folder and its record file."""
    return f"{re.sub(r'[^A-Za-z0-9.+_-]', '_', method)}__{schedule}__s{seed}"


def record_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def write_record(folder: Path, name: str, settings, record: dict) -> Path:
    """Write one cell's record atomically (a half-written record would be read as finished)."""
    folder = Path(folder)
    path = record_path(folder, name)
    body = {"grid": grid_key(settings), **record, "provenance": provenance()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(body, indent=1) + "\n")
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
    record = _load(path)
    if record is None or not _same_grid(record, _jsonable(grid_key(settings))):
        return None
    if fingerprint is not None and record.get("fingerprint", fingerprint) != fingerprint:
        return None
    return record


def all_records(folder: Path, settings) -> list[dict]:
    """Every record in the folder made under these grid settings, in file-name order."""
    key = _jsonable(grid_key(settings))
    records = (_load(p) for p in sorted(Path(folder).glob("*.json")))
    return [r for r in records if r is not None and _same_grid(r, key)]


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: treated as absent, so the cell is run again


def _jsonable(value):
    return json.loads(json.dumps(value))
