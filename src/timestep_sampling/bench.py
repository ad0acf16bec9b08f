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

import json
import math
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
from .bench_records import all_records, read_record, run_name, write_record
from .bench_report import _fmt, headline, plot_curves, plot_densities, write_csv, write_report
from .bench_stats import BASELINE, FLOW_BASELINE, learned_vs_controls, metrics_in, paired_comparison, summarize, time_to_quality
from .methods import is_flow_method, make_method, method_specs
from .objectives import OBJECTIVES, make_objective, objective_name
from .schedule import SCHEDULES, NoiseSchedule

DEFAULT_METHODS = ("uniform", "p2", "min-snr", "logit-normal", "speed", "speed-2024", "adaptive",
                   "adaptive-min-snr", "adaptive-frozen", "beta-0.95")
DEFAULT_SCHEDULES = ("linear", "cosine", "quad")
# --objective flow: rectified flow has no noise schedule; its runs are filed under this one name instead.
FLOW_TIME = "flow"
FLOW_METHODS = ("flow-uniform", "flow-logit-normal", "flow-mode", "flow-cosmap", "flow-beta-0.95", "flow-adaptive",
                "flow-adaptive-frozen", "flow-adaptive-final")
FLOW_QUICK_METHODS = ("flow-uniform", "flow-adaptive", "flow-adaptive-frozen")
# --quick, sized by measurement (see README "Benchmark"): 3 methods x 1 schedule x 2 seeds in about 6 min on
# 2 cores; the learned sampler beside its frozen control, so a newcomer sees what learning adds.
QUICK = dict(methods=("uniform", "adaptive", "adaptive-frozen"), schedules=("linear",), seeds=2, steps=400, eval_every=200,
             final_exact=False, eval_strata=20, fd_samples=256, ddim_steps=20, warmup=50, ema_decay=0.99)
FULL = dict(methods=DEFAULT_METHODS, schedules=DEFAULT_SCHEDULES, seeds=3, steps=3000, eval_every=500,
            final_exact=True, eval_strata=80, fd_samples=1000, ddim_steps=50, warmup=200, ema_decay=0.999)
SAMPLE_CHUNK = 512  # images per DDIM call; fixed, so the starting noise of image i never depends on the count


@dataclass
class BenchSettings:
    out: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    seeds: int = 3
    only_seeds: tuple[int, ...] | None = None  # run just these seeds (to split one method's seeds across processes)
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
    report_only: bool = False   # with records: train nothing, report what is recorded
    objective: str = "ddpm"     # or "flow": rectified flow with flow-... methods, filed under the schedule "flow"
    extra: dict = field(default_factory=dict)  # other TrainConfig overrides, e.g. {"lr": 2e-4}

    @property
    def flow(self) -> bool:
        """Whether the grid trains rectified flow (`objective` may carry options: "flow:final_steps=8")."""
        return objective_name(self.objective) == "flow"

    @property
    def seed_list(self) -> list[int]:
        return list(self.only_seeds) if self.only_seeds is not None else list(range(self.seeds))

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
    if objective_name(str(options.get("objective") or "")) == "flow":
        require(schedules is None, "rectified flow has no noise schedule: drop --schedules with --objective flow")
        base.update(methods=FLOW_QUICK_METHODS if quick else FLOW_METHODS, schedules=(FLOW_TIME,))
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
    if objective_name(settings.objective) not in OBJECTIVES.names():
        raise unknown_choice("objective", settings.objective, OBJECTIVES.names())
    flow = settings.flow
    for name in settings.schedules:
        if not (flow and name == FLOW_TIME) and name not in SCHEDULES:
            raise unknown_choice("noise schedule", name, SCHEDULES)
    probe = NoiseSchedule("linear", T=max(settings.T, 2))
    for name in settings.methods:
        make_method(name.removesuffix(FINAL_SUFFIX), probe)  # a bad name or option: a UserError listing the valid ones
        if is_flow_method(name.removesuffix(FINAL_SUFFIX)) != flow:
            raise UserError(f"method {name!r} is for " + ("DDPM; --objective flow takes flow-... methods, e.g. "
                                                          + ", ".join(FLOW_METHODS[:4]) if flow else
                                                          "rectified flow: add --objective flow"))
    # Records, tables and plots name each run by its method, so a sampler or weighting may not override it.
    overrides = sorted({"sampler", "weighting", "method"} & set(settings.extra))
    require(not overrides, f"bench settings cannot override {', '.join(overrides)}; name the pair as a method "
                           f"instead, e.g. 'speed+min-snr:gamma=5'")
    if settings.only_seeds is not None:
        require(len(settings.only_seeds) > 0 and all(isinstance(s, int) and s >= 0 for s in settings.only_seeds),
                f"--only-seeds takes seeds >= 0, e.g. 2 or 0,2; got {settings.only_seeds!r}")
    for name in ("seeds", "steps", "eval_every", "fd_samples", "ddim_steps", "batch_size", "T", "eval_strata"):
        require(getattr(settings, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    require(settings.fd_samples >= 2, f"--fd-samples must be >= 2, got {settings.fd_samples}")
    require(settings.eval_every <= settings.steps,
            f"--eval-every ({settings.eval_every}) must not exceed --steps ({settings.steps})")
    require(not settings.report_only or settings.records,
            "--report-only reports what a --records folder holds: add --records FOLDER")
    if settings.inception is not None:
        require(Path(settings.inception).is_file(),
                f"--inception {settings.inception!r} is not a file; expected a TorchScript feature network "
                f"such as inception-2015-12-05.pt (nothing is downloaded)")


# A method name the bench resolves itself: the learned sampler's final Beta, fixed from step 0 (does
# adapting over time matter, or only the shape it ends at?). It needs that seed's "adaptive" run first.
FINAL_SUFFIX = "-final"


def run_config(settings: BenchSettings, method: str, schedule: str, seed: int):
    checkpoints = math.ceil(settings.steps / settings.eval_every)
    trained = frozen_final_method(settings, method, schedule, seed) if method.endswith(FINAL_SUFFIX) else method
    overrides = dict(data=settings.data, out=str(Path(settings.out) / "runs" / run_name(method, schedule, seed)),
                     method=trained, schedule=_noise_schedule(schedule), objective=settings.objective, seed=seed, steps=settings.steps, T=settings.T,
                     eval_every=settings.eval_every, checkpoint_every=settings.eval_every,
                     keep_checkpoints=checkpoints + 1, final_exact=settings.final_exact, num_samples=0,
                     eval_exact_below=settings.eval_exact_below, eval_strata=settings.eval_strata,
                     model=settings.model, batch_size=settings.batch_size, device=settings.device,
                     warmup=settings.warmup, ema_decay=settings.ema_decay,
                     log_every=min(50, settings.eval_every))
    overrides.update(settings.extra)
    return make_config(**overrides)


def _noise_schedule(schedule: str) -> str:
    """The trainer's schedule for a grid column: a flow run ignores it, so it keeps the default."""
    return "linear" if schedule == FLOW_TIME else schedule


def method_fingerprint(method: str, schedule: str, T: int) -> str | None:
    """What a method name trains, as its sampler's repr and its weighting's spec (None for a -final cell,
    which is fixed by its learned run's record)."""
    if method.endswith(FINAL_SUFFIX):
        return None
    sampler, _ = make_method(method, NoiseSchedule(_noise_schedule(schedule), T=T))
    return f"{sampler!r} + {method_specs(method)[1]}"


def frozen_final_method(settings: BenchSettings, method: str, schedule: str, seed: int) -> str:
    """'<learned>-final' → a fixed Beta at the final (α, β) of that seed's <learned> run, from its record
    or its run folder. Only a global (unconditioned) Beta policy has one final distribution."""
    source = method[:-len(FINAL_SUFFIX)]
    name = run_name(source, schedule, seed)
    kept = read_record(settings.records, name, settings) if settings.records else None
    summary = kept["sampler"] if kept else sampler_summary(Path(settings.out) / "runs" / name)
    if summary and make_method(source, NoiseSchedule("linear", T=settings.T))[0].name == "adaptive-bands":
        return _frozen_bands(source, summary, settings)
    if not summary or summary.get("alpha") is None:
        raise UserError(f"{method} needs the final Beta of a finished {source!r} run ({name}) with a global "
                        f"policy; run {source} first (put it before {method} in --methods)")
    if is_flow_method(source):
        return f"flow-beta:a={summary['alpha']:.6g},b={summary['beta']:.6g}+flow-none"
    return f"beta:a={summary['alpha']:.6g},b={summary['beta']:.6g}+none"


def _frozen_bands(source: str, summary: dict, settings: BenchSettings) -> str:
    """The band policy at its final density, frozen (lr = 0): its logits recovered from the logged density."""
    from .samplers.band_policy import logits_from_density

    sampler = make_method(source, NoiseSchedule("linear", T=settings.T))[0]
    theta = logits_from_density(summary["density"][-1], sampler.edges, sampler.uniform_mix)
    spec, weighting = method_specs(source)
    return f"{spec}{',' if ':' in spec else ':'}lr=0,theta={';'.join(f'{x:.4f}' for x in theta.tolist())}+{weighting}"


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
    # Where the bound's mass is: t < 20 of a discrete T, or t < 0.1 of continuous time (in equal bins of t).
    continuous = bool(densities[0].get("continuous"))
    low, low_key = (T // 10, "mass_t_below_0.1") if continuous else (20, "mass_t_below_20")
    return {"steps": [r["step"] for r in densities],
            "density": [[float(f"{v * T:.3g}") for v in r["density"]] for r in densities],
            "tv_from_start": float(0.5 * np.abs(last - first).sum()),
            low_key: [float(sum(r["density"][:low])) for r in densities],
            **({"continuous": True} if continuous else {}),
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


def run_state(cfg, fingerprint: str | None = None) -> str:
    """"finished", "partial" (resume it), or "new". A folder made with other settings, or trained when its
    method's name meant something else (its fingerprint), is a UserError."""
    folder = Path(cfg.out)
    old = _read_json(folder / "config.json", None)
    if old is None:
        return "new"
    trained = _read_json(folder / "bench.json", {}).get("fingerprint")
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
    if any(r.get("final") and r["step"] == cfg.steps for r in _read_jsonl(folder / "metrics.jsonl")):
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
        _write_json(folder / "bench.json", {} if fingerprint is None else {"fingerprint": fingerprint})
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
    """`fd_samples` samples of a checkpoint's EMA model from the fixed starting noise: DDIM for DDPM, Euler
    steps of the run's own flow for rectified flow, `ddim_steps` steps either way."""
    from .evaluate import load_model
    from .sampling import ddim_sample

    model, schedule, cfg, meta = load_model(checkpoint, device)
    objective = make_objective(cfg, schedule, meta["bins"])
    gen = torch.Generator().manual_seed(settings.sample_seed)
    shape = tuple(meta["data_shape"])
    out, left = [], settings.fd_samples
    while left > 0:
        n = min(SAMPLE_CHUNK, left)
        if objective.continuous:
            noise = torch.randn((n,) + shape, generator=gen).to(device)
            images = objective.flow.sample(model, noise, settings.ddim_steps).clamp(-1, 1)
        else:
            images = ddim_sample(model, schedule, (n,) + shape, steps=settings.ddim_steps, device=device, generator=gen)
        out.append(images.cpu())
        left -= n
    return torch.cat(out)


def estimate_checkpoint(checkpoint: Path, cfg, device) -> float:
    """The test bits/dim estimate of a checkpoint's EMA model with exactly the trainer's settings (same
    timesteps, noise and probes), for comparing it with the estimates logged during training."""
    from .data import load_data
    from .evaluate import load_model

    model, schedule, _, _ = load_model(checkpoint, device)
    data = load_data(cfg.data)
    return make_objective(cfg, schedule, data.bins).bpd(model, data.test.to(device), exact=False)


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
    if final is not None and bpd_kind(final) == "exact" and "final_estimate" not in cache:
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


# The trainer's names for its two bits/dim measurements, per objective: the cheap one logged during training
# and the thorough one at the end.
ESTIMATE_LABELS, EXACT_LABELS = ("estimate", "ode-hutchinson-subset"), ("exact", "ode-hutchinson")


def bpd_kind(metrics: dict) -> str:
    """"estimate" or "exact" for a trainer's evaluation line, whatever the objective."""
    label = metrics.get("bpd_method")
    return "estimate" if label in ESTIMATE_LABELS else "exact" if label in EXACT_LABELS else str(label)


def run_records(cfg, method: str, schedule: str, seed: int) -> list[dict]:
    """One record per evaluation of the run: the contract fields of results.json."""
    folder = Path(cfg.out)
    cache = _read_json(folder / "bench.json", {})
    evals = {r["step"]: r for r in _read_jsonl(folder / "metrics.jsonl") if "test_bpd" in r}
    records = []
    for step in sorted(evals):
        r = evals[step]
        kind = bpd_kind(r)
        estimate = r["test_bpd"] if kind == "estimate" else cache.get("final_estimate", {}).get("value")
        record = {"method": method, "schedule": schedule, "seed": seed, "step": step,
                  "train_seconds": r["train_seconds"], "test_bpd": r["test_bpd"], "bpd_method": kind,
                  "test_bpd_estimate": estimate}
        record["fd"] = cache.get("fd", {}).get("values", {}).get(str(step))  # None where there is no FD
        if "fid" in cache:
            record["fid"] = cache["fid"]["values"].get(str(step))
        records.append(record)
    return records


def current_records(settings: BenchSettings, say=None) -> list[dict]:
    """The records of this grid whose method still trains what its name trains now (its fingerprint), and
    each `-final` cell whose learned run is among them: a preset whose defaults changed since a record was
    made names another method, and its old record must not stand in the report under the new meaning."""
    kept, stale = [], []
    records = all_records(settings.records, settings)
    for r in records:
        if r["method"].endswith(FINAL_SUFFIX):
            continue
        try:
            now = method_fingerprint(r["method"], r["schedule"], settings.T)
        except UserError:  # a method name that no longer exists
            now = None
        (kept if r.get("fingerprint") in (None, now) else stale).append(r)
    fresh = {(r["method"], r["schedule"], r["seed"]) for r in kept}
    for r in records:
        if r["method"].endswith(FINAL_SUFFIX):
            source = (r["method"][:-len(FINAL_SUFFIX)], r["schedule"], r["seed"])
            (kept if source in fresh else stale).append(r)
    if stale and say is not None:
        say(f"left out of the report: {len(stale)} record(s) made when their method meant something else "
            f"({', '.join(sorted({r['method'] for r in stale}))})")
    return kept


def density_tracks(settings: BenchSettings) -> dict[tuple[str, str], tuple[int, dict]]:
    """(method, schedule) → (seed, sampler_summary) of the lowest seed whose sampler's density changed (a
    fixed or frozen sampler has no summary), from the records when there are any, else the run folders."""
    found = []
    if settings.records:
        found = [(r["method"], r["schedule"], r["seed"], r["sampler"])
                 for r in current_records(settings) if r.get("sampler")]
    else:
        for method, schedule, seed in settings.grid():
            summary = sampler_summary(Path(settings.out) / "runs" / run_name(method, schedule, seed))
            if summary:
                found.append((method, schedule, seed, summary))
    tracks = {}
    for method, schedule, seed, summary in sorted(found, key=lambda f: f[2]):
        tracks.setdefault((method, schedule), (seed, summary))
    return tracks


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
    for cell in [] if settings.report_only else grid:  # a report-only run trains nothing, so nothing can fail
        recorded = settings.records and read_record(settings.records, run_name(*cell), settings,
                                                    method_fingerprint(cell[0], cell[1], settings.T))
        if not cell[0].endswith(FINAL_SUFFIX) and not recorded:
            run_state(run_config(settings, *cell), method_fingerprint(cell[0], cell[1], settings.T))  # fail early
    scorers, classifier = build_scorers(settings, device, out)
    counts = {"trained": 0, "resumed": 0, "skipped": 0, "recorded": 0, "missing": 0}
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
        if settings.report_only:
            counts["missing"] += 1
            bar.write(f"{name}: not recorded under these settings, left out (--report-only)")
            continue
        cfg = run_config(settings, method, schedule, seed)
        start = time.perf_counter()
        outcome = train_run(cfg, fingerprint)
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
        records = [e for r in current_records(settings, say=bar.write) for e in r["evals"]]

    summary = summarize(records)
    baseline = FLOW_BASELINE if settings.flow else BASELINE
    ttq, paired, controls = [], [], []
    for metric in metrics_in(records):
        if metric != "test_bpd":
            ttq += time_to_quality(records, metric, baseline)
        if metric != "test_bpd_estimate":
            paired += paired_comparison(records, metric, baseline)
            controls += learned_vs_controls(records, metric)
    tracks = density_tracks(settings)
    plots = [plot_curves(records, m, out / f"curves_{m}.png")
             for m in metrics_in(records) if m != "test_bpd"]
    plots += plot_densities(out, tracks)
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
