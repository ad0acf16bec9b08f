"""What the trainer optimises, and how it scores and samples the result: the DDPM ε-objective (the default)
or rectified flow (`objective = "flow"`). The trainer calls `loss`, `bpd`, `sample` and `label` and
nothing else of either process, so its loop stays one loop for both.

The config's `objective` is a spec string, as for samplers: "flow", or "flow:sample_steps=20,eval_images=128".
"""
from __future__ import annotations

import torch

from .bound import estimate_bpd, exact_bpd
from .diffusion import mse_per_sample
from .errors import UserError, require, unknown_choice
from .flow import SAMPLE_SOLVERS, TIMESTEP_SCALE, RectifiedFlow
from .registry import Registry
from .schedule import NoiseSchedule

OBJECTIVES = Registry("objective")


def _positive_int(name: str, value) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"option {name} must be an integer >= 1, got {value!r}")
    return value


@OBJECTIVES.register("ddpm")
class DDPMObjective:
    """ε-prediction on a discrete schedule: the "simple" MSE, the variational bound in bits/dim (a
    stratified estimate during training, the exact sum over all T at the end), and ancestral sampling."""

    continuous = False
    estimate_name = "stratified estimate"

    def __init__(self, schedule: NoiseSchedule, bins: int, variance: str = "fixed-large", eval_exact_below: int = 20,
                 eval_strata: int = 80):
        self.schedule, self.bins, self.variance = schedule, bins, variance
        self.eval_exact_below, self.eval_strata = min(eval_exact_below, schedule.T), eval_strata

    def loss(self, model, x0, t, noise) -> torch.Tensor:
        return mse_per_sample(model, self.schedule, x0, t, noise)

    def bpd(self, model, data: torch.Tensor, exact: bool, progress: bool = False) -> float:
        options = dict(bins=self.bins, variance=self.variance, seed=0)
        if exact:
            return exact_bpd(model, self.schedule, data, progress=progress, **options).total
        return estimate_bpd(model, self.schedule, data, exact_below=self.eval_exact_below, strata=self.eval_strata,
                            **options).total

    def sample(self, model, shape, device, generator: torch.Generator, progress: bool = False) -> torch.Tensor:
        from .sampling import ddpm_sample

        return ddpm_sample(model, self.schedule, shape, device=device, generator=generator, variance=self.variance,
                           progress=progress)

    def label(self, exact: bool) -> str:
        return "exact" if exact else "estimate"


@OBJECTIVES.register("flow")
class FlowObjective:
    """Rectified flow (METHOD.md section 8) with a continuous time sampler (`flow-...` methods).

    Training: the velocity MSE at t from the sampler. The data are uniformly dequantised in training
    (x0 + U(−Δ/2, Δ/2) with Δ the spacing of the data's `bins` levels; `dequantize=False` turns it off),
    since the likelihood scores the dequantised density, which a flow trained on the levels alone is free to
    concentrate on them (on the digits after 1000 steps the two read 3.181 and 3.177 bits/dim: no difference
    yet). Scoring: the probability-flow ODE's bits/dim with the same dequantisation
    (flow.ode_likelihood, Hutchinson's trace with `probes` ±1 vectors, RK4), on the first `eval_images`
    test images with `eval_steps` steps during training and on the whole test split with `final_steps` at
    the end. Sampling: `sample_steps` steps of `sample_solver` ("euler", or "heun": second order, two model
    calls a step) from noise."""

    continuous = True

    def __init__(self, schedule=None, bins: int = 256, sample_steps: int = 50, eval_images: int = 64,
                 eval_steps: int = 8, final_steps: int = 32, probes: int = 2, dequantize: bool = True,
                 timestep_scale: float = TIMESTEP_SCALE, sample_solver: str = "euler"):
        self.bins = bins
        self.sample_steps = _positive_int("sample_steps", sample_steps)
        self.eval_images = _positive_int("eval_images", eval_images)
        self.eval_steps = _positive_int("eval_steps", eval_steps)
        self.final_steps = _positive_int("final_steps", final_steps)
        self.probes = _positive_int("probes", probes)
        require(isinstance(dequantize, bool), f"option dequantize must be True or False, got {dequantize!r}")
        self.dequantize = dequantize
        self.flow = RectifiedFlow(timestep_scale)
        if sample_solver not in SAMPLE_SOLVERS:
            raise unknown_choice("sample_solver", sample_solver, SAMPLE_SOLVERS)
        self.sample_solver = sample_solver
        self.estimate_name = f"ODE likelihood, Hutchinson, first {eval_images} test images"

    def loss(self, model, x0, t, noise) -> torch.Tensor:
        if self.dequantize:  # the global RNG: the trainer seeds it from (seed, step, rank) at every step
            x0 = x0 + (torch.rand_like(x0) - 0.5) * (2.0 / (self.bins - 1))
        return self.flow.loss(model, x0, t, noise)

    def bpd(self, model, data: torch.Tensor, exact: bool, progress: bool = False) -> float:
        data = data if exact else data[:self.eval_images]
        steps = self.final_steps if exact else self.eval_steps
        return self.flow.likelihood(model, data, bins=self.bins, steps=steps, trace="hutchinson",
                                    probes=self.probes, seed=0).bpd

    def sample(self, model, shape, device, generator: torch.Generator, progress: bool = False) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator).to(device)
        return self.flow.sample(model, noise, self.sample_steps, progress=progress,
                                solver=self.sample_solver).clamp(-1, 1)

    def label(self, exact: bool) -> str:
        return "ode-hutchinson" if exact else "ode-hutchinson-subset"


def objective_name(spec: str) -> str:
    """The objective's name in a spec string: "flow" for "flow:sample_steps=20"."""
    return spec.partition(":")[0].strip()


def make_objective(cfg, schedule: NoiseSchedule, bins: int, sampler=None):
    """The trainer's objective from `cfg.objective`, checked against the sampler's kind of time when one is
    given (a checkpoint scored or sampled later has no sampler to check)."""
    if objective_name(cfg.objective) == "ddpm":
        require(cfg.objective.strip() == "ddpm", f"objective 'ddpm' takes no options, got {cfg.objective!r}")
        objective = DDPMObjective(schedule, bins, cfg.variance, cfg.eval_exact_below, cfg.eval_strata)
    else:
        objective = OBJECTIVES.make(cfg.objective, schedule, bins=bins)
    if sampler is not None and sampler.continuous != objective.continuous:
        if objective.continuous:
            raise UserError(f"objective {cfg.objective!r} needs a sampler of continuous t in (0, 1); got "
                            f"{sampler!r}; use a flow method, e.g. --method flow-logit-normal")
        raise UserError(f"sampler {sampler!r} draws continuous t for rectified flow; train it with --objective flow")
    return objective
