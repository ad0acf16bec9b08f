"""Running the grid: each cell's trainer configuration, training it (or resuming it, or skipping it when it is
finished or recorded), scoring it, writing its record, and at the end the tables, plots and report of every
run of the grid."""
from __future__ import annotations

import importlib
import json
import math
import time
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import train as train_module
from ..checkpoint import latest_checkpoint
from ..config import make_config
from ..errors import UserError, require
from .jsonfiles import read_json, read_jsonl, write_json
from .records import code_version, provenance, run_name, write_record
from .report import _digits, _fmt, headline, metric_label, plot_curves, plot_densities, write_csv, write_report
from .scoring import bpd_kind, build_scorers, score_run
from .settings import FINAL_SUFFIX, BenchSettings, method_fingerprint, noise_schedule
from .stats import (half_budget_comparison, learned_vs_controls, metrics_in, paired_comparison, references, summarize,
                    time_to_quality)
from .tracks import current_records, density_tracks, frozen_final_method, read_cell_record, sampler_summary


def run_config(settings: BenchSettings, method: str, schedule: str, seed: int):
    checkpoints = math.ceil(settings.steps / settings.eval_every)
    trained = frozen_final_method(settings, method, schedule, seed) if method.endswith(FINAL_SUFFIX) else method
    overrides = dict(data=settings.data, out=str(Path(settings.out) / "runs" / run_name(method, schedule, seed)),
                     method=trained, schedule=noise_schedule(schedule), objective=settings.objective, seed=seed,
                     steps=settings.steps, T=settings.T,
                     eval_every=settings.eval_every, checkpoint_every=settings.eval_every,
                     keep_checkpoints=checkpoints + 1, final_exact=settings.final_exact, num_samples=0,
                     eval_exact_below=settings.eval_exact_below, eval_strata=settings.eval_strata,
                     eval_images=settings.eval_images, model=settings.model, batch_size=settings.batch_size, device=settings.device,
                     warmup=settings.warmup, ema_decay=settings.ema_decay,
                     log_every=min(50, settings.eval_every))
    overrides.update(settings.extra)
    return make_config(**overrides)


IGNORED_KEYS = ("out", "device")  # a run folder may move, and a run may resume on another device


# What a setting added later meant for a run folder made before it: every run then was DDPM, and a later
# field without an entry here (the EMA's warm-up, say) makes an older folder another run's.
LEGACY_SETTINGS = {"objective": "ddpm"}


def run_state(cfg, fingerprint: str | None = None) -> str:
    """"finished", "partial" (resume it), or "new". A folder made with other settings, or trained when its
    method's name meant something else (its fingerprint), is a UserError."""
    folder = Path(cfg.out)
    old = read_json(folder / "config.json", None)
    if old is None:
        return "new"
    trained = read_json(folder / "bench.json", {}).get("fingerprint")
    if fingerprint is not None and trained is not None and trained != fingerprint:
        raise UserError(f"run folder {str(folder)!r} was trained when {cfg.method!r} meant {trained}; it now means "
                        f"{fingerprint}: use another --out or delete that folder")
    new = cfg.to_dict()
    old = {**LEGACY_SETTINGS, **old}
    differ = [k for k in new if k not in IGNORED_KEYS and old.get(k) != new[k]]
    if differ:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in differ)
        raise UserError(f"run folder {str(folder)!r} was made with other settings ({changes}); "
                        f"use another --out or delete that folder")
    if any(r.get("final") and r["step"] == cfg.steps for r in read_jsonl(folder / "metrics.jsonl")):
        return "finished"
    return "partial" if latest_checkpoint(folder / "checkpoints") is not None else "new"


def train_run(cfg, fingerprint: str | None = None) -> str:
    """Train one grid cell unless it is finished; returns "skipped", "trained" or "resumed"."""
    state = run_state(cfg, fingerprint)
    if state == "finished":
        return "skipped"
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    if state == "new":  # scores of an earlier attempt are not this run's; what the method means now is
        write_json(folder / "bench.json", {} if fingerprint is None else {"fingerprint": fingerprint})
    with open(folder / "train.log", "a") as log, redirect_stdout(log):  # the trainer's lines go to the log
        train_module.train(cfg, resume=state == "partial", progress=False)
    return "resumed" if state == "partial" else "trained"


def run_records(cfg, method: str, schedule: str, seed: int, metrics: list[str] = ()) -> list[dict]:
    """One record per evaluation of the run: the contract fields of results.json, each FD and KID in `metrics`
    (fd_ddim, fd_ddpm, kid_ddim...: None where it was not computed; a KID's standard deviation over its subsets
    beside it as kid_ddim_std...), and at the last step the estimate on as many training images
    (`train_bpd_estimate`) where it was computed."""
    folder = Path(cfg.out)
    cache = read_json(folder / "bench.json", {})
    evals = {r["step"]: r for r in read_jsonl(folder / "metrics.jsonl") if "test_bpd" in r}
    records = []
    for step in sorted(evals):
        r = evals[step]
        kind = bpd_kind(r)
        estimate = r["test_bpd"] if kind == "estimate" else cache.get("final_estimate", {}).get("value")
        record = {"method": method, "schedule": schedule, "seed": seed, "step": step,
                  "train_seconds": r["train_seconds"], "test_bpd": r["test_bpd"], "bpd_method": kind,
                  "test_bpd_estimate": estimate}
        for metric in metrics:
            record[metric] = cache.get(metric, {}).get("values", {}).get(str(step))
            if "std" in cache.get(metric, {}):
                record[f"{metric}_std"] = cache[metric]["std"].get(str(step))
        if cache.get("final_train_estimate", {}).get("step") == step:  # the last checkpoint's, on training images
            record["train_bpd_estimate"] = cache["final_train_estimate"]["value"]
        records.append(record)
    return records


def missing_scores(settings: BenchSettings, evals: list[dict], metrics: list[str]) -> dict[str, list[int]]:
    """metric → the steps at which a run's evaluations lack a score these settings compute there (a record
    made before the ancestral FD existed lacks fd_ddpm)."""
    missing = {}
    for metric in metrics:
        sampler = metric.split("_", 1)[1]
        steps = [e["step"] for e in evals if settings.fd_due(sampler, e["step"]) and e.get(metric) is None]
        if steps:
            missing[metric] = steps
    return missing


def fill_record(settings: BenchSettings, kept: dict, scorers, device, metrics: list[str]) -> list[str]:
    """Add to a recorded cell the scores it lacks (`missing_scores`) from the checkpoints of its run folder
    under --out, when that folder holds the very run recorded (its bits/dim at every evaluation equal the
    record's) and keeps them; the record keeps its provenance and notes what was added when. Returns the
    metrics added to (none when the run folder is another run, or its checkpoints are gone)."""
    cell = (kept["method"], kept["schedule"], kept["seed"])
    cfg = run_config(settings, *cell)
    try:
        if run_state(cfg, method_fingerprint(*cell[:2], settings.T)) != "finished":
            return []
    except UserError:
        return []
    if {e["step"]: e["test_bpd"] for e in run_records(cfg, *cell)} != {e["step"]: e["test_bpd"] for e in kept["evals"]}:
        return []
    score_run(cfg, settings, scorers, device)
    ours = {e["step"]: e for e in run_records(cfg, *cell, metrics)}
    added, evals = set(), []
    for e in kept["evals"]:
        new = {m: ours[e["step"]][m] for m in metrics if e.get(m) is None and ours[e["step"]].get(m) is not None}
        added |= set(new)
        new.update({f"{m}_std": ours[e["step"]][f"{m}_std"] for m in list(new) if f"{m}_std" in ours[e["step"]]})
        evals.append({**e, **new})
    if added:
        record = {k: v for k, v in kept.items() if k != "grid"}
        record["evals"] = evals
        record["scores_added"] = record.get("scores_added", []) + [{"metrics": sorted(added), **provenance()}]
        write_record(settings.records, run_name(*cell), settings, record)
    return sorted(added)


def read_step_cost(path: str, flow: bool) -> dict[str, float]:
    """Method → seconds per training step / the baseline's, from a benchmarks/step_cost.py file. A file that
    is missing, unreadable or not of that shape is a UserError: a report must not name a source it did not use."""
    refused = UserError(f"--step-cost {path!r} is not a step-cost file (benchmarks/step_cost.py writes one)")
    try:
        part = json.loads(Path(path).read_text())["objectives"].get("flow" if flow else "ddpm") or {}
        ratios = {m: float(row["ratio"]) for m, row in part.get("methods", {}).items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise refused from None
    if not all(math.isfinite(r) and r > 0 for r in ratios.values()):
        raise refused
    return ratios


# The package modules the bench otherwise imports lazily (scoring, plotting). A cell runs for many minutes;
# importing them at its start means the run uses one commit's code throughout, even when the checkout is
# updated under it (a module of a newer commit imported mid-run once broke two cells with an ImportError).
_LAZY_MODULES = ("data", "evaluate", "frechet", "plotting", "sampling")


def run_bench(settings: BenchSettings) -> dict:
    """Train, score and report the whole grid; returns the paths written and the headline numbers."""
    wall = time.perf_counter()
    for name in _LAZY_MODULES:
        importlib.import_module(f"..{name}", __package__)
    code_version()  # the commit the records will name: this code's, read before anything is trained
    out = Path(settings.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to output folder {str(out)!r} ({e.strerror or e})") from None
    device = train_module.resolve_device(settings.device)
    step_cost = read_step_cost(settings.step_cost, settings.flow) if settings.step_cost else None  # fail early
    require(not settings.report_only or Path(settings.records).is_dir(),
            f"--records {settings.records!r} is not a folder: --report-only reports the records a folder holds")
    # A frozen-final cell needs its learned run's end: it goes last, and its config is made when it is reached.
    grid = sorted(settings.grid(), key=lambda cell: cell[0].endswith(FINAL_SUFFIX))
    for cell in [] if settings.report_only else grid:  # a report-only run trains nothing, so nothing can fail
        recorded = settings.records and read_cell_record(settings.records, run_name(*cell), settings,
                                                         method_fingerprint(cell[0], cell[1], settings.T))
        if not cell[0].endswith(FINAL_SUFFIX) and not recorded:
            run_state(run_config(settings, *cell), method_fingerprint(cell[0], cell[1], settings.T))  # fail early
    scorers, classifier = build_scorers(settings, device, out)
    scores = [scorer.metric(sampler) for scorer in scorers for sampler in settings.samplers]  # fd_ddim, fd_ddpm...
    # Their KIDs (kid_ddim...) are recorded beside them; a record made before the KID lacks them, which leaves it
    # complete (`missing_scores` asks for the FDs alone): it shows the KID as missing.
    recorded = scores + [scorer.kid_metric(sampler) for scorer in scorers for sampler in settings.samplers]
    counts = {"trained": 0, "resumed": 0, "skipped": 0, "recorded": 0, "missing": 0, "filled": 0, "incomplete": 0}
    method_costs: dict[str, dict] = {m: {"trained": 0, "rate": [], "run_seconds": []} for m in settings.methods}
    score_seconds: dict[str, list[float]] = {m: [] for m in scores}
    records = []
    bar = tqdm(grid, desc="bench", unit="run", disable=not settings.progress, dynamic_ncols=True)
    for method, schedule, seed in bar:
        name = run_name(method, schedule, seed)
        bar.set_postfix_str(name)
        fingerprint = method_fingerprint(method, schedule, settings.T)
        kept = read_cell_record(settings.records, name, settings, fingerprint) if settings.records else None
        if kept is not None:
            counts["recorded"] += 1
            note = ""
            if missing_scores(settings, kept["evals"], scores) and not settings.report_only:
                added = fill_record(settings, kept, scorers, device, recorded)
                if added:
                    counts["filled"] += 1
                    kept = read_cell_record(settings.records, name, settings, fingerprint)
                    note = f"; {', '.join(added)} added from its checkpoints under {settings.out}"
            lacking = missing_scores(settings, kept["evals"], scores)
            if lacking:
                counts["incomplete"] += 1
                note += "; lacks " + ", ".join(f"{m} at step{'s' if len(st) > 1 else ''} {', '.join(map(str, st))}"
                                               for m, st in lacking.items())
            records += kept["evals"]
            bar.write(f"{name}: recorded in {settings.records} (commit {str(kept['provenance']['commit'])[:10]})"
                      + note)
            continue
        if settings.report_only:
            counts["missing"] += 1
            bar.write(f"{name}: not recorded under these settings, left out (--report-only)")
            continue
        cfg = run_config(settings, method, schedule, seed)
        start = time.perf_counter()
        outcome = train_run(cfg, fingerprint)
        counts[outcome] += 1
        elapsed = time.perf_counter() - start
        metrics = read_jsonl(Path(cfg.out) / "metrics.jsonl")
        final = [r for r in metrics if r.get("final")]
        if outcome == "trained":  # kept in bench.json, so a later report still knows what a whole run cost
            method_costs[method]["trained"] += 1
            write_json(Path(cfg.out) / "bench.json",
                        {**read_json(Path(cfg.out) / "bench.json", {}), "run_seconds": elapsed})
        if final:
            method_costs[method]["rate"].append(final[-1]["step"] / max(final[-1]["train_seconds"], 1e-9))
        cache = score_run(cfg, settings, scorers, device)
        if "run_seconds" in cache:
            method_costs[method]["run_seconds"].append(cache["run_seconds"])
        for metric in scores:
            score_seconds[metric] += list(cache.get(metric, {}).get("seconds", {}).values())
        run_records_ = run_records(cfg, method, schedule, seed, recorded)
        records += run_records_
        if settings.records and final:
            write_record(settings.records, name, settings, {
                "method": method, "schedule": schedule, "seed": seed, "trained_as": cfg.method,
                "fingerprint": fingerprint,
                "evals": run_records_, "sampler": sampler_summary(Path(cfg.out)),
                "cost": {"train_seconds": final[-1]["train_seconds"],
                         "steps_per_sec": final[-1]["step"] / max(final[-1]["train_seconds"], 1e-9),
                         "run_seconds": cache.get("run_seconds")}})
        last = run_records_[-1] if run_records_ else {}
        bar.write(f"{run_name(method, schedule, seed)}: {outcome}; final test bits/dim {_fmt(last.get('test_bpd'), 3)}"
                  + "".join(f", {metric_label(m)} {_fmt(last[m], _digits(m))}" for m in recorded
                            if last.get(m) is not None))
    bar.close()
    recorded_rates: dict[str, list[float]] = {}
    if settings.records:  # the report covers every recorded run of this grid, not only this invocation's
        kept = current_records(settings, say=bar.write)
        records = [e for r in kept for e in r["evals"]]
        for r in kept:
            if (r.get("cost") or {}).get("steps_per_sec"):
                recorded_rates.setdefault(r["method"], []).append(r["cost"]["steps_per_sec"])

    summary = summarize(records)
    baseline, strongest = references(settings.flow)
    ttq, paired, controls, half, heuristic = [], [], [], [], []
    for metric in metrics_in(records):
        if metric != "test_bpd":
            ttq += time_to_quality(records, metric, baseline, step_cost)
            half += half_budget_comparison(records, metric, baseline)
        if metric != "test_bpd_estimate":
            paired += paired_comparison(records, metric, baseline)
            controls += learned_vs_controls(records, metric)
            heuristic += paired_comparison(records, metric, strongest)
    tracks = density_tracks(settings)
    plots = [plot_curves(records, m, out / f"curves_{m}.png")
             for m in metrics_in(records) if m != "test_bpd"]
    plots += plot_densities(out, tracks)
    costs = {"device": str(device), "total_seconds": time.perf_counter() - wall, **counts,
             "score_seconds_per_checkpoint": {m: float(np.mean(v)) for m, v in score_seconds.items() if v},
             "methods": {m: {"trained": c["trained"],
                             "steps_per_sec": float(np.mean(c["rate"])) if c["rate"] else None,
                             "run_seconds": float(np.mean(c["run_seconds"])) if c["run_seconds"] else None,
                             "recorded_steps_per_sec": recorded_rates.get(m, []),
                             "step_cost": (step_cost or {}).get(m)}
                         for m, c in method_costs.items()},
             "step_cost_file": settings.step_cost}
    settings_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
    write_json(out / "results.json", {"settings": settings_dict, "classifier": classifier, "costs": costs,
                                       "records": records})
    write_csv(out / "results.csv", records)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "time_to_quality.csv", ttq)
    write_csv(out / "paired.csv", paired + heuristic)
    write_csv(out / "half_steps.csv", half)
    report = write_report(settings, records, summary, ttq, paired, costs, classifier, plots, out, controls, tracks,
                          half, heuristic)
    return {"report": report, "plots": plots, "records": len(records), **counts,
            "total_seconds": costs["total_seconds"], "headline": headline(summary, paired, controls, tracks)}
