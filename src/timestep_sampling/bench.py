"""The benchmark: a grid of methods × noise schedules × seeds on one data set, one model and one budget,
each cell a run of the reference trainer, then the tables and plots that compare them.

    DIR/runs/<method>__<schedule>__s<seed>/   one trainer run each (config.json, metrics.jsonl, checkpoints/,
                                              train.log, bench.json: the scores this module adds)
    DIR/results.json, DIR/results.csv         one record per run and checkpoint
    DIR/summary.csv                           mean and spread over seeds per method, schedule and step
    DIR/time_to_quality.csv, DIR/paired.csv   the derived comparisons
    DIR/report.md, DIR/*.png                  tables and plots
    DIR/classifier/                           the digit classifier behind the FD, trained once and cached

Rerunning the same command skips finished runs (metrics.jsonl holds the final record), resumes unfinished
ones from their last checkpoint, and recomputes only scores it does not have.

What is measured, and how (report.md says it again):
- Test bits/dim: the trainer's stratified estimate (common timesteps and noise for every model) at each
  checkpoint; at the end the exact bound over all T when `final_exact`. Time-to-quality on bits/dim
  compares estimate with estimate (the bench adds the estimate at the final checkpoint when the trainer
  logged the exact bound there), so the target and the curves are measured alike.
- FD: the Fréchet distance between the digit classifier's features of `fd_samples` DDIM samples of the
  EMA model (fixed starting noise: the same for every method, seed and checkpoint) and of the test split.
- Wall-clock: the trainer's `train_seconds`, the time spent in training steps only (no evaluation).
"""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
import time
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import train as train_module
from .checkpoint import latest_checkpoint, list_checkpoints
from .config import make_config
from .errors import UserError, require, unknown_choice
from .bench_records import all_records, read_record, write_record
from .methods import make_method, method_specs
from .schedule import SCHEDULES, NoiseSchedule

DEFAULT_METHODS = ("uniform", "p2", "min-snr", "logit-normal", "speed", "speed-2024", "adaptive",
                   "adaptive-min-snr", "adaptive-frozen", "beta-0.95")
DEFAULT_SCHEDULES = ("linear", "cosine", "quad")
BASELINE = "uniform"
# --quick, sized by measurement (see README "Benchmark"): 3 methods x 1 schedule x 2 seeds in about 6 min on
# 2 cores; the learned sampler beside its frozen control, so a newcomer sees what learning adds.
QUICK = dict(methods=("uniform", "adaptive", "adaptive-frozen"), schedules=("linear",), seeds=2, steps=400, eval_every=200,
             final_exact=False, eval_strata=20, fd_samples=256, ddim_steps=20, warmup=50, ema_decay=0.99)
FULL = dict(methods=DEFAULT_METHODS, schedules=DEFAULT_SCHEDULES, seeds=3, steps=3000, eval_every=500,
            final_exact=True, eval_strata=80, fd_samples=1000, ddim_steps=50, warmup=200, ema_decay=0.999)
METRIC_LABELS = {"test_bpd": "test bits/dim", "test_bpd_estimate": "test bits/dim (stratified estimate)",
                 "fd": "FD (digit-classifier features)", "fid": "FID (TorchScript features)"}
SAMPLE_CHUNK = 512  # images per DDIM call; fixed, so the starting noise of image i never depends on the count


@dataclass
class BenchSettings:
    out: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    seeds: int = 3
    steps: int = 3000
    eval_every: int = 500
    data: str = "digits"
    model: str = "tiny"
    batch_size: int = 128
    T: int = 1000
    warmup: int = 200
    ema_decay: float = 0.999
    device: str = "auto"
    final_exact: bool = True
    eval_exact_below: int = 20  # the stratified estimate: every t below this exactly,
    eval_strata: int = 80       # then one t from each of this many log-spaced strata
    fd_samples: int = 1000
    ddim_steps: int = 50
    sample_seed: int = 0
    inception: str | None = None
    keep_checkpoints: bool = False
    quick: bool = False
    progress: bool = True
    records: str | None = None  # a folder of per-run records (bench_records.py): skip what is there, report all
    extra: dict = field(default_factory=dict)  # other TrainConfig overrides, e.g. {"lr": 2e-4}

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def grid(self) -> list[tuple[str, str, int]]:
        return [(m, s, seed) for s in self.schedules for m in self.methods for seed in self.seed_list]


def _split_names(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    return tuple(dict.fromkeys(names))  # drop repeats, keep order


def make_settings(out: str, *, quick: bool = False, methods=None, schedules=None, seeds: int | None = None,
                  steps: int | None = None, eval_every: int | None = None, **options) -> BenchSettings:
    """Settings from the preset (full or --quick), then the caller's choices; every name is checked."""
    base = dict(QUICK if quick else FULL)
    chosen = dict(methods=_split_names(methods), schedules=_split_names(schedules), seeds=seeds, steps=steps,
                  eval_every=eval_every, **options)
    base.update({k: v for k, v in chosen.items() if v is not None})
    if steps is not None and eval_every is None:  # keep the preset's number of checkpoints
        checkpoints = FULL["steps"] // FULL["eval_every"] if not quick else QUICK["steps"] // QUICK["eval_every"]
        base["eval_every"] = max(1, steps // checkpoints)
    settings = BenchSettings(out=str(out), quick=quick, **base)
    validate(settings)
    return settings


def validate(settings: BenchSettings) -> None:
    require(len(settings.methods) > 0, "--methods is empty; valid choices: " + ", ".join(DEFAULT_METHODS))
    require(len(settings.schedules) > 0, "--schedules is empty; valid choices: " + ", ".join(SCHEDULES))
    for name in settings.schedules:
        if name not in SCHEDULES:
            raise unknown_choice("noise schedule", name, SCHEDULES)
    probe = NoiseSchedule("linear", T=max(settings.T, 2))
    for name in settings.methods:
        make_method(name.removesuffix(FINAL_SUFFIX), probe)  # a bad name or option: a UserError listing the valid ones
    # Records, tables and plots name each run by its method, so a sampler or weighting may not override it.
    overrides = sorted({"sampler", "weighting", "method"} & set(settings.extra))
    require(not overrides, f"bench settings cannot override {', '.join(overrides)}; name the pair as a method "
                           f"instead, e.g. 'speed+min-snr:gamma=5'")
    for name in ("seeds", "steps", "eval_every", "fd_samples", "ddim_steps", "batch_size", "T", "eval_strata"):
        require(getattr(settings, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    require(settings.fd_samples >= 2, f"--fd-samples must be >= 2, got {settings.fd_samples}")
    require(settings.eval_every <= settings.steps,
            f"--eval-every ({settings.eval_every}) must not exceed --steps ({settings.steps})")
    if settings.inception is not None:
        require(Path(settings.inception).is_file(),
                f"--inception {settings.inception!r} is not a file; expected a TorchScript feature network "
                f"such as inception-2015-12-05.pt (nothing is downloaded)")


# A method name the bench resolves itself: the learned sampler's final Beta, fixed from step 0 (does
# adapting over time matter, or only the shape it ends at?). It needs that seed's "adaptive" run first.
FINAL_SUFFIX = "-final"


def run_name(method: str, schedule: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9.+_-]', '_', method)}__{schedule}__s{seed}"


def run_config(settings: BenchSettings, method: str, schedule: str, seed: int):
    checkpoints = math.ceil(settings.steps / settings.eval_every)
    trained = frozen_final_method(settings, method, schedule, seed) if method.endswith(FINAL_SUFFIX) else method
    overrides = dict(data=settings.data, out=str(Path(settings.out) / "runs" / run_name(method, schedule, seed)),
                     method=trained, schedule=schedule, seed=seed, steps=settings.steps, T=settings.T,
                     eval_every=settings.eval_every, checkpoint_every=settings.eval_every,
                     keep_checkpoints=checkpoints + 1, final_exact=settings.final_exact, num_samples=0,
                     eval_exact_below=settings.eval_exact_below, eval_strata=settings.eval_strata,
                     model=settings.model, batch_size=settings.batch_size, device=settings.device,
                     warmup=settings.warmup, ema_decay=settings.ema_decay,
                     log_every=min(50, settings.eval_every))
    overrides.update(settings.extra)
    return make_config(**overrides)


def method_fingerprint(method: str, schedule: str, T: int) -> str | None:
    """What a method name trains, as its sampler's repr and its weighting's spec (None for a -final cell,
    which is fixed by its learned run's record)."""
    if method.endswith(FINAL_SUFFIX):
        return None
    sampler, _ = make_method(method, NoiseSchedule(schedule, T=T))
    return f"{sampler!r} + {method_specs(method)[1]}"


def frozen_final_method(settings: BenchSettings, method: str, schedule: str, seed: int) -> str:
    """'<learned>-final' → a fixed Beta at the final (α, β) of that seed's <learned> run, from its record
    or its run folder. Only a global (unconditioned) Beta policy has one final distribution."""
    source = method[:-len(FINAL_SUFFIX)]
    name = run_name(source, schedule, seed)
    kept = read_record(settings.records, name, settings) if settings.records else None
    summary = kept["sampler"] if kept else sampler_summary(Path(settings.out) / "runs" / name)
    if not summary or summary.get("alpha") is None:
        raise UserError(f"{method} needs the final Beta of a finished {source!r} run ({name}) with a global "
                        f"policy; run {source} first (put it before {method} in --methods)")
    return f"beta:a={summary['alpha']:.6g},b={summary['beta']:.6g}+none"


def sampler_summary(folder: Path) -> dict | None:
    """A learning sampler's track from a run folder: its density at each evaluation (p(t)·T, 3 significant
    digits), the total variation between its first and last density, and, for a global Beta policy, the
    final (α, β). None for a sampler whose density never changed."""
    densities = _read_jsonl(folder / train_module.DENSITY_LOG)
    track = np.asarray([r["density"] for r in densities], dtype=np.float64)
    if len(track) < 2 or np.abs(track - track[0]).max() <= 1e-6 * track.max():
        return None
    first, last = track[0], track[-1]
    updates = [r["sampler"] for r in _read_jsonl(folder / "metrics.jsonl") if "sampler" in r]
    final = updates[-1] if updates else {}
    global_beta = final.get("alpha_std") == 0.0 and final.get("beta_std") == 0.0
    T = len(first)
    return {"steps": [r["step"] for r in densities],
            "density": [[float(f"{v * T:.3g}") for v in r["density"]] for r in densities],
            "tv_from_start": float(0.5 * np.abs(last - first).sum()),
            "mass_t_below_20": [float(sum(r["density"][:20])) for r in densities],
            "alpha": final.get("alpha_mean") if global_beta else None,
            "beta": final.get("beta_mean") if global_beta else None}


# ----------------------------------------------------------------------------- one run

def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


IGNORED_KEYS = ("out", "device")  # a run folder may move, and a run may resume on another device


# What a setting added later meant for a run folder made before it: every run then was DDPM, and a later
# field without an entry here (the EMA's warm-up, say) makes an older folder another run's.
LEGACY_SETTINGS = {"objective": "ddpm"}


def run_state(cfg) -> str:
    """"finished", "partial" (resume it), or "new". A folder made with other settings is a UserError."""
    folder = Path(cfg.out)
    old = _read_json(folder / "config.json", None)
    if old is None:
        return "new"
    new = cfg.to_dict()
    old = {**LEGACY_SETTINGS, **old}
    differ = [k for k in new if k not in IGNORED_KEYS and old.get(k) != new[k]]
    if differ:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in differ)
        raise UserError(f"run folder {str(folder)!r} was made with other settings ({changes}); "
                        f"use another --out or delete that folder")
    if any(r.get("final") and r["step"] == cfg.steps for r in _read_jsonl(folder / "metrics.jsonl")):
        return "finished"
    return "partial" if latest_checkpoint(folder / "checkpoints") is not None else "new"


def train_run(cfg) -> str:
    """Train one grid cell unless it is finished; returns "skipped", "trained" or "resumed"."""
    state = run_state(cfg)
    if state == "finished":
        return "skipped"
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    if state == "new":
        (folder / "bench.json").unlink(missing_ok=True)  # scores of an earlier attempt are not this run's
    with open(folder / "train.log", "a") as log, redirect_stdout(log):  # the trainer's lines go to the log
        train_module.train(cfg, resume=state == "partial", progress=False)
    return "resumed" if state == "partial" else "trained"


class Scorer:
    """A Fréchet distance against fixed reference images, in one feature space."""

    def __init__(self, metric: str, features, reference: torch.Tensor, key: dict):
        from .frechet import gaussian_stats

        self.metric, self.features, self.key = metric, features, key
        self.reference_stats = gaussian_stats(features(reference))

    def __call__(self, images: torch.Tensor) -> float:
        from .frechet import frechet_distance, gaussian_stats

        return frechet_distance(*gaussian_stats(self.features(images)), *self.reference_stats)


def generate(checkpoint: Path, settings: BenchSettings, device) -> torch.Tensor:
    """`fd_samples` DDIM samples of a checkpoint's EMA model, from the fixed starting noise."""
    from .evaluate import load_model
    from .sampling import ddim_sample

    model, schedule, _, meta = load_model(checkpoint, device)
    gen = torch.Generator().manual_seed(settings.sample_seed)
    out, left = [], settings.fd_samples
    while left > 0:
        n = min(SAMPLE_CHUNK, left)
        out.append(ddim_sample(model, schedule, (n,) + tuple(meta["data_shape"]), steps=settings.ddim_steps,
                               device=device, generator=gen).cpu())
        left -= n
    return torch.cat(out)


def estimate_checkpoint(checkpoint: Path, cfg, device) -> float:
    """The stratified estimate of test bits/dim of a checkpoint's EMA model, with exactly the trainer's
    settings (same timesteps and noise), for comparing it with the estimates logged during training."""
    from .bound import estimate_bpd
    from .data import load_data
    from .evaluate import load_model

    model, schedule, _, _ = load_model(checkpoint, device)
    data = load_data(cfg.data)
    return estimate_bpd(model, schedule, data.test.to(device), bins=data.bins, variance=cfg.variance, seed=0,
                        exact_below=min(cfg.eval_exact_below, cfg.T), strata=cfg.eval_strata).total


def score_run(cfg, settings: BenchSettings, scorers: list[Scorer], device) -> dict:
    """Add to the run's bench.json every score it lacks: each scorer's distance at every checkpoint after
    step 0, and the stratified estimate at the final step if the trainer logged the exact bound there.
    Then delete the intermediate checkpoints unless asked to keep them (the last one always stays)."""
    from .sampling import save_grid

    folder = Path(cfg.out)
    path = folder / "bench.json"
    cache = _read_json(path, {})
    checkpoints = {int(p.name.split("_")[1]): p for p in list_checkpoints(folder / "checkpoints")}
    evals = {r["step"]: r for r in _read_jsonl(folder / "metrics.jsonl") if "test_bpd" in r}
    for scorer in scorers:
        entry = cache.get(scorer.metric)
        if not entry or entry.get("key") != scorer.key:
            cache[scorer.metric] = {"key": scorer.key, "values": {}, "seconds": {}}
    for step in sorted(s for s in evals if s > 0):
        todo = [s for s in scorers if str(step) not in cache[s.metric]["values"]]
        if not todo or step not in checkpoints:
            continue  # done, or its checkpoint was pruned before this metric was asked for
        start = time.perf_counter()
        images = generate(checkpoint=checkpoints[step], settings=settings, device=device)
        sample_seconds = time.perf_counter() - start
        save_grid(images[:64], folder / "samples" / f"ddim_step_{step:08d}.png")
        for scorer in todo:
            start = time.perf_counter()
            cache[scorer.metric]["values"][str(step)] = scorer(images)
            cache[scorer.metric]["seconds"][str(step)] = sample_seconds + time.perf_counter() - start
        _write_json(path, cache)
    final = evals.get(cfg.steps)
    if final is not None and final.get("bpd_method") == "exact" and "final_estimate" not in cache:
        if cfg.steps in checkpoints:
            start = time.perf_counter()
            value = estimate_checkpoint(checkpoints[cfg.steps], cfg, device)
            cache["final_estimate"] = {"step": cfg.steps, "value": value, "seconds": time.perf_counter() - start}
            _write_json(path, cache)
    if not settings.keep_checkpoints:
        for step, ckpt in checkpoints.items():
            if step != max(checkpoints):
                shutil.rmtree(ckpt, ignore_errors=True)
    return cache


def run_records(cfg, method: str, schedule: str, seed: int) -> list[dict]:
    """One record per evaluation of the run: the contract fields of results.json."""
    folder = Path(cfg.out)
    cache = _read_json(folder / "bench.json", {})
    evals = {r["step"]: r for r in _read_jsonl(folder / "metrics.jsonl") if "test_bpd" in r}
    records = []
    for step in sorted(evals):
        r = evals[step]
        estimate = r["test_bpd"] if r["bpd_method"] == "estimate" else cache.get("final_estimate", {}).get("value")
        record = {"method": method, "schedule": schedule, "seed": seed, "step": step,
                  "train_seconds": r["train_seconds"], "test_bpd": r["test_bpd"], "bpd_method": r["bpd_method"],
                  "test_bpd_estimate": estimate}
        record["fd"] = cache.get("fd", {}).get("values", {}).get(str(step))  # None where there is no FD
        if "fid" in cache:
            record["fid"] = cache["fid"]["values"].get(str(step))
        records.append(record)
    return records


# ----------------------------------------------------------------------------- statistics

def _mean_std(values) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def metrics_in(records: list[dict]) -> list[str]:
    """The score fields that hold at least one value, in a fixed order."""
    return [m for m in ("test_bpd", "test_bpd_estimate", "fd", "fid") if any(r.get(m) is not None for r in records)]


def summarize(records: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds, per (method, schedule, step)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["schedule"], r["step"]), []).append(r)
    rows = []
    for (method, schedule, step), rs in groups.items():
        row = {"method": method, "schedule": schedule, "step": step, "seeds": len(rs),
               "bpd_method": rs[0]["bpd_method"]}
        for metric in ("train_seconds",) + tuple(metrics_in(records)):
            mean, std, _ = _mean_std([r.get(metric) for r in rs])
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        rows.append(row)
    return rows


def time_to_target(steps, seconds, values, target: float):
    """(step, seconds) of the first checkpoint whose value is at or below `target` (lower is better);
    None if the curve never gets there. Missing values (None) never count as reached."""
    for step, sec, value in zip(steps, seconds, values):
        if value is not None and value <= target + 1e-12 * abs(target):
            return step, sec
    return None


def mean_curve(records: list[dict], method: str, schedule: str, metric: str):
    """(steps, mean train_seconds, mean metric) over seeds; a step missing the metric for any seed is None."""
    by_step: dict[int, list[dict]] = {}
    for r in records:
        if r["method"] == method and r["schedule"] == schedule:
            by_step.setdefault(r["step"], []).append(r)
    steps = sorted(by_step)
    seconds = [float(np.mean([r["train_seconds"] for r in by_step[s]])) for s in steps]
    values = []
    for s in steps:
        vals = [r.get(metric) for r in by_step[s]]
        values.append(None if any(v is None for v in vals) else float(np.mean(vals)))
    return steps, seconds, values


def time_to_quality(records: list[dict], metric: str, baseline: str = BASELINE) -> list[dict]:
    """Per schedule: the target is the baseline's final score (mean over seeds); for every method, the
    first checkpoint at which its mean curve reaches it, in steps and in training seconds, and the
    speed-up over the baseline's own time to that target (baseline steps / method steps). A method that
    never reaches the target gets reached=False and no speed-up."""
    rows = []
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        methods = list(dict.fromkeys(r["method"] for r in records if r["schedule"] == schedule))
        if baseline not in methods:
            continue
        b_steps, b_seconds, b_values = mean_curve(records, baseline, schedule, metric)
        if not b_values or b_values[-1] is None:
            continue
        target = b_values[-1]
        b_hit = time_to_target(b_steps, b_seconds, b_values, target)
        for method in methods:
            steps, seconds, values = mean_curve(records, method, schedule, metric)
            hit = time_to_target(steps, seconds, values, target)
            row = {"schedule": schedule, "method": method, "metric": metric, "target": target,
                   "final": values[-1] if values else None, "reached": hit is not None,
                   "steps": None, "seconds": None, "speedup_steps": None, "speedup_seconds": None}
            if hit is not None:
                row["steps"], row["seconds"] = hit
                row["speedup_steps"] = b_hit[0] / hit[0] if hit[0] > 0 else None
                row["speedup_seconds"] = b_hit[1] / hit[1] if hit[1] > 0 else None
            rows.append(row)
    return rows


def verdict(diffs: list[float], spread: float) -> str:
    """Words for paired differences method − baseline (lower is better) against the seed spread (the
    larger standard deviation over seeds of the two methods alone).

    "consistent": every seed's difference has the same sign and the mean exceeds twice its standard
    error. Consistent and larger than the spread: "better/worse beyond seed spread"; consistent but
    smaller: "better/worse on every seed (paired), within seed spread"; otherwise "no consistent difference"."""
    if len(diffs) < 2:
        return "one seed: no spread to compare with"
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    same_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    if not (same_sign and abs(mean) > 2 * sd / math.sqrt(len(diffs))):
        return "no consistent difference"
    word = "better" if mean < 0 else "worse"
    return f"{word} beyond seed spread" if abs(mean) > spread else f"{word} on every seed (paired), within seed spread"


def paired_comparison(records: list[dict], metric: str, baseline: str = BASELINE) -> list[dict]:
    """At each run's final checkpoint, per schedule and method: the per-seed difference method − baseline
    (same seed: same initial weights and batches), its mean, the seeds on which the method is better
    (lower), a paired t-test, and a `verdict`."""
    from scipy import stats

    final = {}
    for r in records:
        key = (r["method"], r["schedule"], r["seed"])
        if key not in final or r["step"] > final[key]["step"]:
            final[key] = r
    rows = []
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        methods = list(dict.fromkeys(r["method"] for r in records if r["schedule"] == schedule))
        if baseline not in methods:
            continue
        base = {seed: r[metric] for (m, s, seed), r in final.items()
                if m == baseline and s == schedule and r.get(metric) is not None}
        for method in methods:
            if method == baseline:
                continue
            mine = {seed: r[metric] for (m, s, seed), r in final.items()
                    if m == method and s == schedule and r.get(metric) is not None}
            seeds = sorted(set(mine) & set(base))
            diffs = [mine[s] - base[s] for s in seeds]
            row = {"schedule": schedule, "method": method, "baseline": baseline, "metric": metric, "seeds": len(seeds),
                   "diffs": diffs, "mean_diff": None, "sd_diff": None, "better_seeds": sum(d < 0 for d in diffs),
                   "p_value": None, "spread": None, "verdict": "no paired seeds"}
            if diffs:
                row["mean_diff"] = float(np.mean(diffs))
                row["verdict"] = "one seed: no spread to compare with"
            if len(diffs) >= 2:
                sd = float(np.std(diffs, ddof=1))
                spread = max(float(np.std([mine[s] for s in seeds], ddof=1)),
                             float(np.std([base[s] for s in seeds], ddof=1)))
                row.update(sd_diff=sd, spread=spread)
                if sd > 0:
                    row["p_value"] = float(stats.ttest_rel([mine[s] for s in seeds], [base[s] for s in seeds]).pvalue)
                row["verdict"] = verdict(diffs, spread)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- plots

def plot_curves(records: list[dict], metric: str, out_path: Path) -> Path:
    """Rows: schedules; left: metric against training steps; right: against training seconds. A line is
    the mean over seeds, its band the range (min to max) over seeds."""
    from matplotlib.figure import Figure

    schedules = list(dict.fromkeys(r["schedule"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig = Figure(figsize=(12, 3.6 * len(schedules) + 0.8), dpi=100, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(schedules), 2, squeeze=False))
    for row, schedule in enumerate(schedules):
        for i, method in enumerate(methods):
            by_step: dict[int, list[dict]] = {}
            for r in records:
                if r["method"] == method and r["schedule"] == schedule and r.get(metric) is not None:
                    by_step.setdefault(r["step"], []).append(r)
            if not by_step:
                continue
            steps = sorted(by_step)
            vals = [[r[metric] for r in by_step[s]] for s in steps]
            mean = np.array([np.mean(v) for v in vals])
            lo, hi = np.array([min(v) for v in vals]), np.array([max(v) for v in vals])
            secs = np.array([np.mean([r["train_seconds"] for r in by_step[s]]) for s in steps])
            style = {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--", "marker": "o", "ms": 3, "lw": 1.5}
            for col, x in enumerate((np.array(steps), secs)):
                axes[row, col].plot(x, mean, label=method if row == 0 and col == 0 else None, **style)
                axes[row, col].fill_between(x, lo, hi, color=style["color"], alpha=0.15, lw=0)
        axes[row, 0].set_xlabel("training step")
        axes[row, 1].set_xlabel("training seconds (steps only, no evaluation)")
        for ax in axes[row]:
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(f"{schedule} schedule")
            ax.grid(alpha=0.3)
            if metric in ("fd", "fid"):
                ax.set_yscale("log")
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)}: mean over seeds, band = min..max over seeds")
    fig.legend(loc="outside lower center", ncols=min(5, max(1, len(methods))), fontsize="small")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path


def density_tracks(settings: BenchSettings) -> dict[tuple[str, str], tuple[int, dict]]:
    """(method, schedule) → (seed, sampler_summary) of the lowest seed whose sampler's density changed (a
    fixed or frozen sampler has no summary), from the records when there are any, else the run folders."""
    found = []
    if settings.records:
        found = [(r["method"], r["schedule"], r["seed"], r["sampler"])
                 for r in all_records(settings.records, settings) if r.get("sampler")]
    else:
        for method, schedule, seed in settings.grid():
            summary = sampler_summary(Path(settings.out) / "runs" / run_name(method, schedule, seed))
            if summary:
                found.append((method, schedule, seed, summary))
    tracks = {}
    for method, schedule, seed, summary in sorted(found, key=lambda f: f[2]):
        tracks.setdefault((method, schedule), (seed, summary))
    return tracks


def plot_densities(settings: BenchSettings, out: Path, tracks: dict | None = None) -> list[Path]:
    """DIR/density_<method>__<schedule>.png for every method whose sampler density changed during training
    (the learned samplers), from the lowest seed that has a track."""
    try:
        from .plotting import plot_density_over_training
    except ImportError:
        return []
    written = []
    for (method, schedule), (seed, summary) in sorted((density_tracks(settings) if tracks is None else tracks).items()):
        dens = np.asarray(summary["density"], dtype=np.float64)
        name = f"density_{run_name(method, schedule, seed).rsplit('__s', 1)[0]}.png"
        written.append(plot_density_over_training(
            summary["steps"], dens / dens.sum(1, keepdims=True), out / name,
            title=f"{method}, {schedule} schedule, seed {seed}: timestep density over training "
                  f"(total variation from the start {summary['tv_from_start']:.2f})"))
    return written


# ----------------------------------------------------------------------------- report

def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _digits(metric: str) -> int:
    return 3 if metric.startswith("test_bpd") else 1


def table1(summary: list[dict], metric: str, settings: BenchSettings) -> str:
    """Rows: methods; columns: schedule × checkpoint; cells: mean ± std over seeds; best mean in bold."""
    steps = sorted({r["step"] for r in summary if r[f"{metric}_mean"] is not None and r["step"] > 0})
    if not steps:
        return "(no values)\n"
    cols = [(s, st) for s in settings.schedules for st in steps]
    cell = {(r["method"], r["schedule"], r["step"]): r for r in summary}
    head = []
    for s, st in cols:
        exact = metric == "test_bpd" and st == settings.steps and settings.final_exact
        head.append(f"{s} {st}{' (exact)' if exact else ''}")
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    best = {}
    for s, st in cols:
        means = [cell[(m, s, st)][f"{metric}_mean"] for m in settings.methods
                 if (m, s, st) in cell and cell[(m, s, st)][f"{metric}_mean"] is not None]
        best[(s, st)] = min(means) if means else None
    d = _digits(metric)
    for m in settings.methods:
        cells = []
        for s, st in cols:
            r = cell.get((m, s, st))
            if r is None or r[f"{metric}_mean"] is None:
                cells.append("–")
                continue
            text = f"{r[f'{metric}_mean']:.{d}f} ± {r[f'{metric}_std']:.{d}f}"
            cells.append(f"**{text}**" if r[f"{metric}_mean"] == best[(s, st)] and len(settings.methods) > 1 else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ttq_table(rows: list[dict], metric: str) -> str:
    rows = [r for r in rows if r["metric"] == metric]
    if not rows:
        return f"(needs `{BASELINE}` in --methods)\n"
    d = _digits(metric)
    lines = ["| schedule | method | target | final | steps to target | speed-up (steps) | seconds to target | "
             "speed-up (seconds) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["reached"]:
            sp = _fmt(r["speedup_steps"], 2) + "×" if r["speedup_steps"] else "–"
            ss = _fmt(r["speedup_seconds"], 2) + "×" if r["speedup_seconds"] else "–"
            lines.append(f"| {r['schedule']} | {r['method']} | {r['target']:.{d}f} | {_fmt(r['final'], d)} | "
                         f"{r['steps']} | {sp} | {r['seconds']:.1f} | {ss} |")
        else:
            lines.append(f"| {r['schedule']} | {r['method']} | {r['target']:.{d}f} | {_fmt(r['final'], d)} | "
                         f"not reached | – | not reached | – |")
    return "\n".join(lines) + "\n"


def paired_table(rows: list[dict], metric: str, baseline: str = BASELINE) -> str:
    rows = [r for r in rows if r["metric"] == metric]
    if not rows:
        return f"(needs `{baseline}` in --methods)\n"
    d = _digits(metric)
    lines = ["| schedule | method | vs | mean Δ | per-seed Δ | seeds better | sd of Δ | seed spread | "
             "paired t p | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{x:+.{d}f}" for x in r["diffs"]) or "–"
        mean = "–" if r["mean_diff"] is None else f"{r['mean_diff']:+.{d}f}"
        lines.append(f"| {r['schedule']} | {r['method']} | {r['baseline']} | {mean} | {per_seed} | "
                     f"{r['better_seeds']}/{r['seeds']} | {_fmt(r['sd_diff'], d)} | {_fmt(r['spread'], d)} | "
                     f"{_fmt(r['p_value'], 3)} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


# The learned sampler is judged against what could explain its gain without learning: its own policy frozen
# at the start, a fixed Beta, its final Beta fixed from step 0, the credit without a policy, the paper's reward.
LEARNED = "adaptive"
CONTROLS = ("adaptive-frozen", "beta-0.95", "adaptive-final", "credit-proportional", "adaptive-paper")


def learned_vs_controls(records: list[dict], metric: str) -> list[dict]:
    """Paired rows of the learned sampler against each control present (Δ = learned − control)."""
    return [row for control in CONTROLS for row in paired_comparison(records, metric, baseline=control)
            if row["method"] == LEARNED]


def density_lines(tracks: dict) -> list[str]:
    """One line per learned density: how far it moved from its start, and its mass on t < 20."""
    return [f"  {method} ({schedule}, seed {seed}): density moved by total variation {t['tv_from_start']:.2f} "
            f"from its start; mass on t < 20 {t['mass_t_below_20'][0]:.3f} -> {t['mass_t_below_20'][-1]:.3f}"
            for (method, schedule), (seed, t) in sorted(tracks.items())]


def headline(summary: list[dict], paired: list[dict], controls: list[dict] = (), tracks: dict | None = None) -> str:
    """The final checkpoint of every method, per schedule, as plain text for the terminal: mean ± std
    over seeds of each metric, and the paired verdict against the baseline; then the learned sampler
    against its controls, and how far each learned density moved."""
    verdicts = {(r["schedule"], r["method"], r["metric"]): r["verdict"] for r in paired}
    lines = []
    for schedule in dict.fromkeys(r["schedule"] for r in summary):
        rows = [r for r in summary if r["schedule"] == schedule]
        last = max(r["step"] for r in rows)
        lines.append(f"{schedule}, step {last} (mean ± std over seeds; lower is better):")
        for r in (r for r in rows if r["step"] == last):
            cells = []
            for metric, label in (("test_bpd", "bits/dim"), ("fd", "FD"), ("fid", "FID")):
                if r.get(f"{metric}_mean") is not None:
                    d = _digits(metric)
                    v = verdicts.get((schedule, r["method"], metric))
                    cells.append(f"{label} {r[f'{metric}_mean']:.{d}f} ± {r[f'{metric}_std']:.{d}f}"
                                 + (f" ({v})" if v else ""))
            lines.append(f"  {r['method']:<18} " + "; ".join(cells))
    methods = {r["method"] for r in summary}
    if any(m.startswith("adaptive") for m in methods) and "adaptive-frozen" not in methods:
        lines.append("  (no adaptive-frozen control in this run: a gain of the adaptive sampler may come from its "
                     "starting distribution rather than from learning; add --methods ...,adaptive-frozen)")
    for r in controls:
        label = "bits/dim" if r["metric"] == "test_bpd" else r["metric"].upper()
        d = _digits(r["metric"])
        per_seed = ", ".join(f"{x:+.{d}f}" for x in r["diffs"])
        lines.append(f"  {r['method']} vs {r['baseline']} ({r['schedule']}): {label} Δ per seed {per_seed} "
                     f"({r['verdict']})")
    lines += density_lines(tracks or {})
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})


def write_report(settings: BenchSettings, records, summary, ttq, paired, costs, classifier, plots, out: Path,
                 controls: list[dict] = (), tracks: dict | None = None) -> Path:
    metrics = metrics_in(records)
    quality = [m for m in ("fd", "fid") if m in metrics]
    s = settings
    def n(count, word):
        return f"{count} {word}{'' if count == 1 else 's'}"

    lines = [f"# Benchmark: {n(len(s.methods), 'method')} × {n(len(s.schedules), 'schedule')} × {n(s.seeds, 'seed')}"
             f"{' (--quick)' if s.quick else ''}", ""]
    lines += [f"Data `{s.data}`, model `{s.model}`, batch {s.batch_size}, T = {s.T}, {s.steps} steps per run "
              f"(learning-rate warm-up {s.warmup} steps, EMA decay {s.ema_decay}; bits/dim and samples use the EMA), "
              f"checkpoints every {s.eval_every} steps; seeds {', '.join(map(str, s.seed_list))} (the same seed gives "
              f"every method the same initial weights and the same batches). Methods: {', '.join(s.methods)}. "
              f"Schedules: {', '.join(s.schedules)}. Device: {costs.get('device')}.", ""]
    lines += ["## How it is measured", "",
              "- **Test bits/dim**: the trainer's stratified estimate of the variational bound on the test split "
              f"(every t < {s.eval_exact_below} exactly, one t from each of {s.eval_strata} log-spaced strata above; "
              "the same timesteps and noise for every model) at every checkpoint"
              + ("; at the last step the exact bound summed over all T terms, marked (exact)." if s.final_exact else
                 ", the last step included (no exact bound in this run)."),
              "- **Time-to-quality**: the target is the uniform method's final score (mean over seeds) on each "
              "schedule; for every method the first checkpoint at which its mean curve reaches it, in steps and in "
              "training seconds (`train_seconds`: the time inside training steps, no evaluation), and the speed-up "
              "= uniform's steps (seconds) to that target / the method's. Resolution: one checkpoint interval. "
              "On bits/dim it compares stratified estimates throughout, the final step included, so target and "
              "curve are measured alike. No speed-up is given for a method that never reached the target. The "
              "runs are made one after another, so on a shared machine the seconds carry its changing load as "
              "well as each method's own cost: where a method reaches the target at the same step as uniform, "
              "its seconds speed-up is load, not method; the cost table below shows the steps/s behind it.",
              "- **Honesty**: per seed, the difference method − uniform at the final checkpoint (same seed: same "
              "initial weights and data order). A difference is *consistent* when every seed's difference has the "
              "same sign and the mean exceeds twice its standard error; the verdict says *beyond seed spread* when "
              "it is consistent and also larger than the standard deviation over seeds of either method alone, "
              "*on every seed (paired), within seed spread* when it is consistent but smaller, and *no consistent "
              "difference* otherwise. With 2–3 seeds this is a coarse screen, not a significance test."]
    if "fd" in metrics:
        lines += [f"- **FD**: Fréchet distance between features of {s.fd_samples} generated images (DDIM, "
                  f"{s.ddim_steps} steps, η = 0, EMA weights; starting noise from seed {s.sample_seed}, the same "
                  f"for every method, seed and checkpoint; images rounded to the data's grey levels) and of the "
                  f"{classifier.get('reference_images')} images of the **test split**. Features: the 64-unit "
                  f"penultimate layer of a small CNN digit classifier trained once on the digits' training split "
                  f"(seed {classifier.get('seed')}, cached in `{classifier.get('cache')}`); its test accuracy: "
                  f"**{100 * classifier.get('test_accuracy', float('nan')):.1f}%** on "
                  f"{classifier.get('test_images')} images. Floor from sample size: the FD between "
                  f"{classifier.get('floor_images')} real training images and the test split is "
                  f"{_fmt(classifier.get('floor_fd'), 1)}; a perfect model scores about that."]
    if not quality:
        lines += [f"- **No sample-quality score**: the digit classifier only scores the digits, and no "
                  f"`--inception` network was given for `{s.data}`."]
    if "fid" in metrics:
        lines += [f"- **FID**: the same distance in the features of the TorchScript network `{s.inception}` "
                  f"(images as 0..255 floats, grey repeated to 3 channels, at their own size)."]
    lines += [""]
    lines += ["## Test bits/dim (mean ± std over seeds; lower is better; best per column in bold)", "",
              table1(summary, "test_bpd", s)]
    for metric in quality:
        lines += [f"## {METRIC_LABELS[metric]} (mean ± std over seeds; lower is better)", "",
                  table1(summary, metric, s)]
    lines += ["## Time to reach uniform's final score", ""]
    for metric in ["test_bpd_estimate"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "", ttq_table(ttq, metric)]
    lines += ["## Paired comparison with uniform at the final checkpoint", ""]
    for metric in ["test_bpd"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "", paired_table(paired, metric)]
    lines += ["## The learned sampler against its controls (paired, final checkpoint)", "",
              "Δ = adaptive − control, same seed. A gain that a control shares is not learning.", ""]
    for metric in ["test_bpd"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "",
                  paired_table([r for r in controls if r["metric"] == metric], metric, ", ".join(CONTROLS))]
    lines += ["### Learned densities", ""] + [ln.strip() for ln in density_lines(tracks or {})] + [""]
    lines += ["## Cost (measured in this run)", ""]
    lines += ["| method | runs trained now | training steps/s | wall-clock s per run trained in one go (training + "
              "evaluations) |",
              "|---|---|---|---|"]
    for m in s.methods:
        c = costs["methods"].get(m, {})
        lines.append(f"| {m} | {c.get('trained', 0)} | {_fmt(c.get('steps_per_sec'), 1)} | "
                     f"{_fmt(c.get('run_seconds'), 1)} |")
    lines += [""]
    if quality:
        lines += [f"- Sampling and scoring one checkpoint ({s.fd_samples} DDIM images × {s.ddim_steps} steps, "
                  f"features, Fréchet distance): {_fmt(costs.get('score_seconds_per_checkpoint'), 1)} s on average."]
    if classifier:
        lines += [f"- Digit classifier: {'loaded from cache in' if classifier.get('cached') else 'trained in'} "
                  f"{_fmt(classifier.get('seconds'), 1)} s."]
    lines += [f"- This invocation: {costs['total_seconds']:.0f} s wall-clock; {costs['trained']} runs trained, "
              f"{costs['resumed']} resumed, {costs['skipped']} already finished.", ""]
    lines += ["## Plots", ""] + [f"- `{p.name}`" for p in plots] + [""]
    lines += ["Raw data: `results.json` / `results.csv` (one record per run and checkpoint), `summary.csv`, "
              "`time_to_quality.csv`, `paired.csv`; per run: `runs/<method>__<schedule>__s<seed>/`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- the whole benchmark

def build_scorers(settings: BenchSettings, device, out: Path) -> tuple[list[Scorer], dict]:
    """The FD scorer (digit classifier, for the digits) and the FID scorer (--inception), with the
    classifier's facts for the report."""
    from .data import load_data
    from .frechet import (DigitFeatures, TorchScriptFeatures, frechet_distance_features,
                          load_or_train_digit_classifier)

    data = load_data(settings.data)
    scorers, info = [], {}
    sampling = {"samples": settings.fd_samples, "ddim_steps": settings.ddim_steps, "sample_seed": settings.sample_seed,
                "reference": "test", "data": settings.data}
    if settings.data == "digits":
        start = time.perf_counter()
        cache = out / "classifier"
        model, info = load_or_train_digit_classifier(cache)
        info = {**info, "seconds": time.perf_counter() - start, "cache": str(cache),
                "reference_images": len(data.test)}
        features = DigitFeatures(model, bins=data.bins, device=device)
        scorers.append(Scorer("fd", features, data.test,
                              {**sampling, "features": f"digit-classifier-v{info['version']}-s{info['seed']}"}))
        g = torch.Generator().manual_seed(0)
        floor_n = min(settings.fd_samples, len(data.train))
        subset = data.train[torch.randperm(len(data.train), generator=g)[:floor_n]]
        info["floor_images"], info["floor_fd"] = floor_n, frechet_distance_features(features(subset),
                                                                                    features(data.test))
    if settings.inception:
        net = TorchScriptFeatures(settings.inception, bins=data.bins, device=device)
        st = Path(settings.inception).stat()
        scorers.append(Scorer("fid", net, data.test, {**sampling, "features": str(Path(settings.inception).resolve()),
                                                      "size": st.st_size, "mtime": int(st.st_mtime)}))
    return scorers, info


def run_bench(settings: BenchSettings) -> dict:
    """Train, score and report the whole grid; returns the paths written and the headline numbers."""
    wall = time.perf_counter()
    out = Path(settings.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to output folder {str(out)!r} ({e.strerror or e})") from None
    device = train_module.resolve_device(settings.device)
    # A frozen-final cell needs its learned run's end: it goes last, and its config is made when it is reached.
    grid = sorted(settings.grid(), key=lambda cell: cell[0].endswith(FINAL_SUFFIX))
    for cell in grid:
        recorded = settings.records and read_record(settings.records, run_name(*cell), settings,
                                                    method_fingerprint(cell[0], cell[1], settings.T))
        if not cell[0].endswith(FINAL_SUFFIX) and not recorded:
            run_state(run_config(settings, *cell))  # fail on a mismatched folder before any work
    scorers, classifier = build_scorers(settings, device, out)
    counts = {"trained": 0, "resumed": 0, "skipped": 0, "recorded": 0}
    method_costs: dict[str, dict] = {m: {"trained": 0, "rate": [], "run_seconds": []} for m in settings.methods}
    score_seconds = []
    records = []
    bar = tqdm(grid, desc="bench", unit="run", disable=not settings.progress, dynamic_ncols=True)
    for method, schedule, seed in bar:
        name = run_name(method, schedule, seed)
        bar.set_postfix_str(name)
        fingerprint = method_fingerprint(method, schedule, settings.T)
        kept = read_record(settings.records, name, settings, fingerprint) if settings.records else None
        if kept is not None:
            counts["recorded"] += 1
            records += kept["evals"]
            bar.write(f"{name}: recorded in {settings.records} (commit {str(kept['provenance']['commit'])[:10]})")
            continue
        cfg = run_config(settings, method, schedule, seed)
        start = time.perf_counter()
        outcome = train_run(cfg)
        counts[outcome] += 1
        elapsed = time.perf_counter() - start
        metrics = _read_jsonl(Path(cfg.out) / "metrics.jsonl")
        final = [r for r in metrics if r.get("final")]
        if outcome == "trained":  # kept in bench.json, so a later report still knows what a whole run cost
            method_costs[method]["trained"] += 1
            _write_json(Path(cfg.out) / "bench.json",
                        {**_read_json(Path(cfg.out) / "bench.json", {}), "run_seconds": elapsed})
        if final:
            method_costs[method]["rate"].append(final[-1]["step"] / max(final[-1]["train_seconds"], 1e-9))
        cache = score_run(cfg, settings, scorers, device)
        if "run_seconds" in cache:
            method_costs[method]["run_seconds"].append(cache["run_seconds"])
        for scorer in scorers:
            score_seconds += list(cache.get(scorer.metric, {}).get("seconds", {}).values())
        run_records_ = run_records(cfg, method, schedule, seed)
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
                  + (f", FD {_fmt(last.get('fd'), 1)}" if "fd" in last else ""))
    bar.close()
    if settings.records:  # the report covers every recorded run of this grid, not only this invocation's
        records = [e for r in all_records(settings.records, settings) for e in r["evals"]]

    summary = summarize(records)
    ttq, paired, controls = [], [], []
    for metric in metrics_in(records):
        if metric != "test_bpd":
            ttq += time_to_quality(records, metric)
        if metric != "test_bpd_estimate":
            paired += paired_comparison(records, metric)
            controls += learned_vs_controls(records, metric)
    tracks = density_tracks(settings)
    plots = [plot_curves(records, m, out / f"curves_{m}.png")
             for m in metrics_in(records) if m != "test_bpd"]
    plots += plot_densities(settings, out, tracks)
    costs = {"device": str(device), "total_seconds": time.perf_counter() - wall, **counts,
             "score_seconds_per_checkpoint": float(np.mean(score_seconds)) if score_seconds else None,
             "methods": {m: {"trained": c["trained"],
                             "steps_per_sec": float(np.mean(c["rate"])) if c["rate"] else None,
                             "run_seconds": float(np.mean(c["run_seconds"])) if c["run_seconds"] else None}
                         for m, c in method_costs.items()}}
    settings_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
    _write_json(out / "results.json", {"settings": settings_dict, "classifier": classifier, "costs": costs,
                                       "records": records})
    write_csv(out / "results.csv", records)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "time_to_quality.csv", ttq)
    write_csv(out / "paired.csv", paired)
    report = write_report(settings, records, summary, ttq, paired, costs, classifier, plots, out, controls, tracks)
    return {"report": report, "plots": plots, "records": len(records), **counts,
            "total_seconds": costs["total_seconds"], "headline": headline(summary, paired, controls, tracks)}
