"""Scoring a saved checkpoint: test bits/dim and image grids, rebuilt from the checkpoint alone.

A DDPM checkpoint is scored by its variational bound (exact, or the stratified estimate) and sampled by
DDPM or DDIM; a rectified-flow checkpoint (`objective = "flow"`) is scored by the likelihood of its
probability-flow ODE, with the options the trainer used (flow.ode_likelihood; objectives.FlowObjective),
and sampled by Euler or Heun steps.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bound import BoundResult, estimate_bpd, exact_bpd
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import make_config
from .data import load_data
from .devices import check_device
from .errors import UserError, require, unknown_choice
from .flow import SAMPLE_SOLVERS, SOLVERS, TRACES, FlowLikelihood
from .models import make_unet
from .objectives import make_objective
from .sampling import check_image_path, ddim_sample, ddpm_sample, save_grid
from .schedule import NoiseSchedule

DDPM_SAMPLERS = ("ddim", "ddpm")
FLOW_SAMPLERS = SAMPLE_SOLVERS  # euler, heun
FLOW_TRACE = "hutchinson"       # the trainer's: FlowObjective.bpd
FLOW_SOLVER = "rk4"             # the trainer's: ode_likelihood's default


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder, a run's checkpoints/ folder, or a run folder (take the latest)."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if (root / "meta.json").exists():
            return root
        found = latest_checkpoint(root)
        if found:
            return found
    raise UserError(f"no checkpoint at {str(path)!r}; expected a run folder or a checkpoints/step_XXXXXXXX folder")


def load_model(path: str | Path, device="cpu", use_ema: bool = True):
    """(model, schedule, config, meta) from a checkpoint; the EMA weights by default."""
    device = check_device(device) or "cpu"  # before loading: a missing device is not a corrupt checkpoint
    path = resolve_checkpoint(path)
    weights, _, meta = load_checkpoint(path, map_location=device)
    cfg = make_config(**meta["config"])
    c, h, _ = meta["data_shape"]
    model = make_unet(h, c, preset=cfg.model, dropout=cfg.dropout)
    if use_ema:
        ema = {k.removeprefix("module."): v for k, v in weights["ema"].items() if k.startswith("module.")}
        model.load_state_dict(ema)
    else:
        model.load_state_dict(weights["model"])
    schedule = NoiseSchedule(cfg.schedule, T=cfg.T, beta_start=cfg.beta_start, beta_end=cfg.beta_end)
    return model.to(device).eval(), schedule, cfg, meta


@dataclass
class Evaluation:
    """One checkpoint's test bits/dim and how they were computed; `record()` is its JSON form."""
    checkpoint: Path
    step: int
    objective: str                  # the run's objective spec, e.g. "ddpm" or "flow:sample_steps=20"
    method: str
    data: str
    bpd: float
    bpd_method: str                 # as in metrics.jsonl: exact, estimate, ode-hutchinson(-subset), ode-exact(-subset)
    images: int                     # test images scored
    test_images: int                # in the test split
    seed: int
    details: dict = field(default_factory=dict)    # prior (DDPM); stderr, trace, probes, ode_steps, ode_solver (flow)
    result: BoundResult | FlowLikelihood | None = field(default=None, repr=False)

    @property
    def flow(self) -> bool:
        return self.bpd_method.startswith("ode-")

    def line(self) -> str:
        """The one line `timestep-sampling evaluate` prints."""
        d = self.details
        if not self.flow:
            kind = "exact" if d["exact"] else "stratified estimate"
            subset = f"; {self.images} of {self.test_images} test images" if self.images < self.test_images else ""
            return f"test bits/dim: {self.bpd:.4f} ({kind}; prior term {d['prior']:.2e}{subset})"
        spread = f" ± {d['stderr']:.4f}" if d["trace"] == "hutchinson" else ""
        trace = f"Hutchinson trace, {d['probes']} probes" if d["trace"] == "hutchinson" else "exact trace"
        solver = {"rk4": "RK4", "heun": "Heun"}.get(d["ode_solver"], d["ode_solver"])
        return (f"test bits/dim: {self.bpd:.4f}{spread} (ODE likelihood; {trace}; {solver}, "
                f"{d['ode_steps']} steps; {self.images} of {self.test_images} test images)")

    def record(self) -> dict:
        """JSON-ready: a non-finite number (the standard error of a single probe) is null."""
        record = {"checkpoint": str(self.checkpoint), "step": self.step, "objective": self.objective,
                "method": self.method, "data": self.data, "test_bpd": self.bpd, "bpd_method": self.bpd_method,
                "images": self.images, "test_images": self.test_images, "seed": self.seed, **self.details}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _positive(name: str, value) -> None:
    require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
            f"{name} must be an integer >= 1, got {value!r}")


def evaluate(path, *, exact: bool = True, data: str | None = None, device="cpu", progress: bool = True,
             images: int | None = None, seed: int = 0, trace: str | None = None, probes: int | None = None,
             ode_steps: int | None = None, ode_solver: str | None = None) -> Evaluation:
    """Test bits/dim of a checkpoint's EMA model on its own data's test split (or on `data`).

    DDPM: the variational bound, exact over all T terms or (exact=False) the stratified estimate.
    Rectified flow: the probability-flow ODE's likelihood as the trainer computes it, so that the defaults
    reproduce the numbers in the run's metrics.jsonl (on one process): Hutchinson's trace with the run's
    `probes` (2), RK4, on the whole test split with `final_steps` (32) steps, or with exact=False on the
    first `eval_images` (64) test images with `eval_steps` (8) steps; a run trained with the config's `eval_images`
    is scored on its first that many test images, as the trainer scored it. `images` (the first N test images),
    `trace` (hutchinson, exact, auto), `probes`, `ode_steps` and `ode_solver` (rk4, heun) override them.
    `seed` fixes the bound's noise, or the flow's dequantisation noise and probes."""
    for name, value in (("--images", images), ("--probes", probes), ("--ode-steps", ode_steps)):
        _positive(name, value)
    if trace is not None and trace not in TRACES:
        raise unknown_choice("trace", trace, TRACES)
    if ode_solver is not None and ode_solver not in SOLVERS:
        raise unknown_choice("ODE solver", ode_solver, SOLVERS)
    checkpoint = resolve_checkpoint(path)
    model, schedule, cfg, meta = load_model(checkpoint, device)
    dataset = load_data(data or cfg.data)
    if list(dataset.shape) != list(meta["data_shape"]):
        raise UserError(f"the checkpoint expects images of shape {meta['data_shape']}, the data has {list(dataset.shape)}")
    objective = make_objective(cfg, schedule, dataset.bins)
    test = dataset.test if images is not None or cfg.eval_images is None else dataset.test[:cfg.eval_images]
    common = dict(checkpoint=checkpoint, step=int(meta.get("step", -1)), objective=cfg.objective, method=cfg.method,
                  data=data or cfg.data, test_images=len(test), seed=seed)
    if not objective.continuous:
        flow_only = [name for name, value in (("--trace", trace), ("--probes", probes), ("--ode-steps", ode_steps),
                                              ("--ode-solver", ode_solver)) if value is not None]
        if flow_only:
            raise UserError(f"{', '.join(flow_only)} set the ODE likelihood of a rectified-flow checkpoint; this "
                            f"checkpoint is DDPM (objective {cfg.objective!r}), scored by its variational bound")
        test = test[:images] if images else test
        options = dict(bins=dataset.bins, variance=cfg.variance, seed=seed)
        bound = (exact_bpd if exact else estimate_bpd)(model, schedule, test.to(device), progress=progress, **options)
        return Evaluation(**common, bpd=bound.total, bpd_method="exact" if exact else "estimate", images=len(test),
                          details={"exact": bound.exact, "prior": bound.prior}, result=bound)

    n = images or (len(test) if exact else objective.eval_images)
    test = test[:n]
    steps = ode_steps or (objective.final_steps if exact else objective.eval_steps)
    probes = probes or objective.probes
    solver = ode_solver or FLOW_SOLVER
    likelihood = objective.flow.likelihood(model, test.to(device), bins=objective.bins, steps=steps, solver=solver,
                                           trace=trace or FLOW_TRACE, probes=probes, seed=seed)
    subset = "-subset" if len(test) < common["test_images"] else ""
    details = {"stderr": likelihood.stderr, "trace": likelihood.trace, "ode_steps": steps, "ode_solver": solver,
               "probes": probes if likelihood.trace == "hutchinson" else None}
    return Evaluation(**common, bpd=likelihood.bpd, bpd_method=f"ode-{likelihood.trace}{subset}", images=len(test),
                      details=details, result=likelihood)


def evaluate_checkpoint(path, *, exact: bool = True, data: str | None = None, device="cpu",
                        progress: bool = True, **options) -> BoundResult | FlowLikelihood:
    """Test bits/dim of a checkpoint on its own data's test split (or on `data`): the bound's BoundResult
    for a DDPM checkpoint, the ODE's FlowLikelihood for a rectified flow (options: see `evaluate`)."""
    return evaluate(path, exact=exact, data=data, device=device, progress=progress, **options).result


def write_record(evaluation: Evaluation, path: str | Path) -> Path:
    """The evaluation's record as a JSON file."""
    path = Path(path)
    try:
        path.write_text(json.dumps(evaluation.record(), indent=2) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {str(path)!r} ({e.strerror or e})") from None
    return path


def sample_checkpoint(path, out: str | Path, *, num: int = 64, method: str | None = None, steps: int | None = None,
                      seed: int = 0, device="cpu", progress: bool = True) -> Path:
    """Write a PNG grid of `num` images drawn from a checkpoint's EMA model.

    DDPM: `method` "ddpm" (ancestral, all T steps; the default) or "ddim" (`steps` steps, default 50).
    Rectified flow: "euler" or "heun" from noise at t = 1 to t = 0 in `steps` steps (defaults: the run's
    sample_solver and sample_steps, euler and 50 unless its objective spec set them)."""
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    _positive("--steps", steps)
    model, schedule, cfg, meta = load_model(path, device)
    objective = make_objective(cfg, schedule, meta.get("bins", 256))
    flow = objective.continuous
    valid, other, kind = ((FLOW_SAMPLERS, DDPM_SAMPLERS, "a rectified flow") if flow else
                          (DDPM_SAMPLERS, FLOW_SAMPLERS, "DDPM"))
    method = method or (objective.sample_solver if flow else "ddpm")
    if method in other:
        raise UserError(f"sampling method {method!r} is for {'DDPM' if flow else 'rectified-flow'} checkpoints; "
                        f"this checkpoint is {kind}: valid choices: {', '.join(valid)}")
    if method not in valid:
        raise unknown_choice("sampling method", method, valid)
    require(flow or method != "ddim" or steps is None or steps <= schedule.T,
            f"--steps {steps} is more DDIM steps than the run's T = {schedule.T} timesteps")
    check_image_path(out)
    shape = (num,) + tuple(meta["data_shape"])
    gen = torch.Generator().manual_seed(seed)
    if flow:
        noise = torch.randn(shape, generator=gen).to(device)
        images = objective.flow.sample(model, noise, steps or objective.sample_steps, progress=progress,
                                       solver=method).clamp(-1, 1)
    elif method == "ddpm":
        images = ddpm_sample(model, schedule, shape, device=device, generator=gen, variance=cfg.variance,
                             progress=progress)
    else:
        images = ddim_sample(model, schedule, shape, steps=steps or 50, device=device, generator=gen,
                             progress=progress)
    return save_grid(images, out)
