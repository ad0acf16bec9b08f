"""Rectified flow (METHOD.md section 8): the straight path from data to noise, its velocity loss, the
per-t term of its ELBO, Euler sampling, and the likelihood of its probability-flow ODE in bits/dim.

    x_t = (1 − t)·x0 + t·ε,   t ∈ (0, 1),   ε ~ N(0, I);   target v = ε − x0 = dx_t/dt.

`model` everywhere is any callable `model(x_t, timesteps) -> v̂` (a diffusers model, whose output holds
it in `.sample`, works as it is) with timesteps = t·timestep_scale. diffusers' flow-matching schedulers
condition the network on σ·num_train_timesteps = t·1000, so 1000 is the default; a network trained on
t itself takes timestep_scale=1.

Time runs from data (t = 0) to noise (t = 1), as in diffusers and SD3: samplers integrate from 1 to 0,
the likelihood from 0 to 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .diffusion import mean_flat
from .errors import UserError, require, unknown_choice

TIMESTEP_SCALE = 1000.0
SOLVERS = ("heun", "rk4")
TRACES = ("auto", "exact", "hutchinson")
EXACT_TRACE_MAX_DIMS = 64  # "auto" takes the exact trace up to this many dimensions per sample (8×8 digits)


def _check_times(t: torch.Tensor, x0: torch.Tensor) -> None:
    # An integer t from a discrete sampler would silently mix x0 with up to 999·ε: refuse it here.
    require(isinstance(t, torch.Tensor) and t.is_floating_point(),
            "rectified flow needs float times t in (0, 1) (a continuous sampler's draws), not integer timesteps")
    require(t.shape == (x0.shape[0],), f"need one time per sample: t has shape {tuple(t.shape)}, "
                                       f"the batch has {x0.shape[0]} samples")


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t shaped to broadcast against a batch `like`, in its dtype."""
    return t.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def flow_xt(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·ε."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = dx_t/dt = ε − x0 (the same for every t: the path is straight)."""
    return noise - x0


def predict_velocity(model, xt: torch.Tensor, t: torch.Tensor, timestep_scale: float = TIMESTEP_SCALE) -> torch.Tensor:
    """v̂(x_t, t) = model(x_t, t·timestep_scale), from a plain callable or a diffusers model."""
    out = model(xt, t * timestep_scale)
    return out if isinstance(out, torch.Tensor) else out.sample


def flow_mse_per_sample(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                        timestep_scale: float = TIMESTEP_SCALE) -> torch.Tensor:
    """The flow-matching loss ‖v − v̂(x_t, t)‖², averaged over dimensions, one value per sample
    (the counterpart of diffusion.mse_per_sample)."""
    _check_times(t, x0)
    if noise is None:
        noise = torch.randn_like(x0)
    v_hat = predict_velocity(model, flow_xt(x0, t, noise), t, timestep_scale)
    return mean_flat((v_hat - velocity_target(x0, noise)) ** 2)


def elbo_weight(t: torch.Tensor) -> torch.Tensor:
    """(1 − t)/t: the weight that turns the velocity MSE into the ELBO's integrand (METHOD.md §8).

    With λ = log SNR = 2·log((1 − t)/t), Kingma & Gao's −ELBO = ½·E_{t~U(0,1)}[(−dλ/dt)·‖ε − ε̂‖²] + const;
    −dλ/dt = 2/(t(1 − t)) and ε − ε̂ = (1 − t)(v − v̂) give ½·2/(t(1 − t))·(1 − t)² = (1 − t)/t."""
    return (1 - t) / t


def flow_elbo_terms(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                    timestep_scale: float = TIMESTEP_SCALE) -> torch.Tensor:
    """The ELBO's integrand at t per sample, in bits/dim: ((1 − t)/t)·‖v − v̂‖² summed over dimensions,
    divided by D·ln 2. Its mean over t ~ U(0, 1) is −ELBO up to a constant that does not depend on
    the model; it is the flow's analogue of the discrete bound's terms L_t (diffusion.vlb_terms).

    Pass `noise` to fix ε (common random numbers). t must lie in (0, 1]: the weight is infinite at 0."""
    _check_times(t, x0)
    require(bool((t > 0).all() and (t <= 1).all()), "the ELBO's terms need every t in (0, 1]")
    mse = flow_mse_per_sample(model, x0, t, noise, timestep_scale)
    return elbo_weight(t.to(mse.dtype)) * mse / math.log(2.0)


SAMPLE_SOLVERS = ("euler", "heun")


@torch.no_grad()
def euler_sample(model, noise: torch.Tensor, steps: int = 50, timestep_scale: float = TIMESTEP_SCALE,
                 progress: bool = False, solver: str = "euler") -> torch.Tensor:
    """Integrate dx/dt = v̂(x, t) from x_1 = `noise` at t = 1 down to t = 0 in `steps` equal steps and
    return x_0. "euler": what diffusers' FlowMatchEulerDiscreteScheduler does with shift 1 (one model call a
    step, error ∝ 1/steps); "heun": Heun's second-order method (two calls a step, error ∝ 1/steps²)."""
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
            f"steps must be an integer >= 1, got {steps!r}")
    if solver not in SAMPLE_SOLVERS:
        raise unknown_choice("sampling solver", solver, SAMPLE_SOLVERS)
    from tqdm.auto import tqdm

    def velocity(x, t: float):
        return predict_velocity(model, x, torch.full((len(x),), t, device=x.device, dtype=x.dtype), timestep_scale)

    x = noise
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for i in tqdm(range(steps), desc=f"sampling ({solver})", disable=not progress, leave=False):
        h = times[i + 1] - times[i]
        k1 = velocity(x, times[i])
        if solver == "euler":
            x = x + h * k1
        else:
            x = x + h / 2 * (k1 + velocity(x + h * k1, times[i + 1]))
    return x


# --- the likelihood of the probability-flow ODE ------------------------------------------------------

@dataclass
class FlowLikelihood:
    bpd: float                       # mean over the data, bits/dim
    stderr: float                    # standard error of `bpd` from the trace estimator (0 for the exact trace)
    per_sample: torch.Tensor         # bits/dim of each sample (float64, CPU)
    per_sample_stderr: torch.Tensor  # the trace estimator's standard error for each sample (zeros when exact)
    trace: str                       # "exact" or "hutchinson"
    evaluations: int                 # model evaluations along each trajectory (each on probes × batch inputs)


def _divergence_quadratics(model, x: torch.Tensor, t: float, probes: torch.Tensor, timestep_scale: float):
    """v̂(x, t) and z_pᵀ (∂v̂/∂x) z_p for every probe p (shape (P, B)).

    The batch is repeated once per probe so that all P vector-Jacobian products come from one forward and
    one backward pass. With the D unit vectors as probes the quadratics are the Jacobian's diagonal and their
    sum is the exact divergence; with random ±1 probes each is an unbiased (Hutchinson) estimate of it."""
    P, B = probes.shape[0], x.shape[0]
    with torch.enable_grad():
        xr = x.detach().unsqueeze(0).expand(P, *x.shape).reshape(P * B, *x.shape[1:]).requires_grad_(True)
        times = torch.full((P * B,), t, device=x.device, dtype=x.dtype)
        v = predict_velocity(model, xr, times, timestep_scale)
        z = probes.reshape(v.shape)
        (vjp,) = torch.autograd.grad(v, xr, grad_outputs=z)
    quad = (vjp * z).flatten(1).sum(1).reshape(P, B).double()
    return v.detach()[:B], quad


def _integrate(model, x: torch.Tensor, probes: torch.Tensor, steps: int, solver: str, timestep_scale: float):
    """Carry x from t = 0 to t = 1 along v̂ and integrate each probe's quadratic along the way, with fixed
    steps (the probes stay fixed along the path, so each probe's integral is unbiased for ∫ div v̂ dt)."""
    def f(x, t):
        return _divergence_quadratics(model, x, t, probes, timestep_scale)

    h = 1.0 / steps
    integral = torch.zeros(probes.shape[:2], dtype=torch.float64, device=x.device)
    for i in range(steps):
        t = i * h
        if solver == "heun":
            k1, q1 = f(x, t)
            k2, q2 = f(x + h * k1, t + h)
            x = x + h / 2 * (k1 + k2)
            integral += h / 2 * (q1 + q2)
        else:  # classical RK4
            k1, q1 = f(x, t)
            k2, q2 = f(x + h / 2 * k1, t + h / 2)
            k3, q3 = f(x + h / 2 * k2, t + h / 2)
            k4, q4 = f(x + h * k3, t + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            integral += h / 6 * (q1 + 2 * q2 + 2 * q3 + q4)
    return x, integral


def _standard_normal_logpdf(x: torch.Tensor) -> torch.Tensor:
    d = x[0].numel()
    return -0.5 * x.flatten(1).double().pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def _check_likelihood_options(steps, solver, trace, probes, bins, batch_size) -> None:
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
            f"steps must be an integer >= 1, got {steps!r}")
    if solver not in SOLVERS:
        raise unknown_choice("ODE solver", str(solver), SOLVERS)
    if trace not in TRACES:
        raise unknown_choice("trace estimator", str(trace), TRACES)
    require(isinstance(probes, int) and not isinstance(probes, bool) and probes >= 1,
            f"probes must be an integer >= 1, got {probes!r}")
    require(bins is None or (isinstance(bins, int) and not isinstance(bins, bool) and bins >= 2),
            f"bins must be an integer >= 2 (the data's levels), or None for continuous data; got {bins!r}")
    require(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1,
            f"batch_size must be an integer >= 1, got {batch_size!r}")


def ode_likelihood(model, x0: torch.Tensor, *, bins: int | None = None, steps: int = 32, solver: str = "rk4",
                   trace: str = "auto", probes: int = 4, timestep_scale: float = TIMESTEP_SCALE,
                   batch_size: int = 64, seed: int = 0) -> FlowLikelihood:
    """Negative log-likelihood of `x0` under the model's probability-flow ODE, in bits/dim.

    Change of variables along dx/dt = v̂(x, t) from t = 0 to 1 (d log p_t(x_t)/dt = −div v̂):
        −log p_0(x0) = −log N(x_1; 0, I) − ∫_0^1 div v̂(x_t, t) dt,
    integrated with `steps` fixed steps of `solver` ("rk4": 4 evaluations a step, "heun": 2).

    The divergence: `trace="exact"` takes the Jacobian's diagonal by autograd, one unit vector per
    dimension; "hutchinson" averages zᵀJz over `probes` random ±1 vectors z, fixed along each path, and
    reports the standard error of that average (per sample, and of the mean over the data); "auto" is
    exact up to 64 dimensions per sample (the 8×8 digits) and Hutchinson above.

    Discrete data (`bins` levels evenly spaced in [−1, 1], e.g. 256 for 8-bit images, 17 for the digits)
    are dequantised: y = x0 + u·Δ with u ~ U(−½, ½)^D and Δ = 2/(bins − 1), and the result is
    −log p(y)/(D ln 2) + log2(1/Δ), an upper bound (in expectation over u) on the discrete data's
    −log2 P(x0)/D, comparable to the discrete bound's bits/dim. `bins=None` scores x0 as continuous data.
    The dequantisation noise and the probes come from a CPU generator seeded with `seed`.

    Put the model in eval mode first: the batch is repeated once per probe (D times for the exact trace,
    so `batch_size` samples make batch_size·D model inputs), and dropout would make the copies differ."""
    _check_likelihood_options(steps, solver, trace, probes, bins, batch_size)
    require(len(x0) > 0, "cannot evaluate the likelihood of an empty data set")
    require(x0.is_floating_point(), f"x0 must be a float tensor, got {x0.dtype}")
    dims = x0[0].numel()
    exact = trace == "exact" or (trace == "auto" and dims <= EXACT_TRACE_MAX_DIMS)
    gen = torch.Generator().manual_seed(seed)
    x = x0
    offset = 0.0
    if bins is not None:
        delta = 2.0 / (bins - 1)
        u = torch.rand(x0.shape, generator=gen, dtype=torch.float64) - 0.5
        x = x0 + (u * delta).to(device=x0.device, dtype=x0.dtype)
        offset = math.log2(1 / delta)

    per_sample, per_sample_se = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        b = len(xb)
        if exact:
            probes_b = torch.eye(dims, dtype=xb.dtype).unsqueeze(1).expand(dims, b, dims)
        else:
            probes_b = torch.randint(0, 2, (probes, b, dims), generator=gen).to(xb.dtype) * 2 - 1
        probes_b = probes_b.reshape(probes_b.shape[0], *xb.shape).to(xb.device)
        x1, integral = _integrate(model, xb, probes_b, steps, solver, timestep_scale)
        prior = _standard_normal_logpdf(x1)
        if exact:
            nll = -prior - integral.sum(0)
            se = torch.zeros_like(nll)
        else:
            estimates = -prior - integral  # one NLL estimate per probe, (P, B)
            nll = estimates.mean(0)
            se = estimates.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(nll, math.nan)
        per_sample.append(nll.cpu() / (dims * math.log(2.0)) + offset)
        per_sample_se.append(se.cpu() / (dims * math.log(2.0)))
    per_sample, per_sample_se = torch.cat(per_sample), torch.cat(per_sample_se)
    n = len(per_sample)
    return FlowLikelihood(bpd=float(per_sample.mean()), stderr=float(per_sample_se.pow(2).sum().sqrt() / n),
                          per_sample=per_sample, per_sample_stderr=per_sample_se,
                          trace="exact" if exact else "hutchinson",
                          evaluations=steps * (4 if solver == "rk4" else 2))


class RectifiedFlow:
    """The rectified-flow process as one object: how to noise, what the target is, the training loss, the
    ELBO's per-t term, sampling and likelihood, all with one `timestep_scale` (the model's conditioning is
    t·timestep_scale). A trainer or a learned time sampler takes the process as a parameter.

        flow = RectifiedFlow()
        t, w = sampler.sample(len(x0), x0.device)          # a continuous sampler: t in (0, 1)
        loss = (w * weighting.weights(t) * flow.loss(model, x0, t)).mean()
    """

    continuous = True

    def __init__(self, timestep_scale: float = TIMESTEP_SCALE):
        ok = isinstance(timestep_scale, (int, float)) and not isinstance(timestep_scale, bool)
        require(ok and math.isfinite(timestep_scale) and timestep_scale > 0,
                f"timestep_scale must be a finite positive number, got {timestep_scale!r}")
        self.timestep_scale = float(timestep_scale)

    def xt(self, x0, t, noise):
        return flow_xt(x0, t, noise)

    def target(self, x0, noise):
        return velocity_target(x0, noise)

    def loss(self, model, x0, t, noise=None):
        """‖v − v̂‖² per sample, mean over dimensions."""
        return flow_mse_per_sample(model, x0, t, noise, self.timestep_scale)

    def elbo_terms(self, model, x0, t, noise=None):
        """((1 − t)/t)·‖v − v̂‖² per sample in bits/dim: the bound-like term a learned sampler can score."""
        return flow_elbo_terms(model, x0, t, noise, self.timestep_scale)

    def sample(self, model, noise, steps: int = 50, progress: bool = False, solver: str = "euler"):
        return euler_sample(model, noise, steps, self.timestep_scale, progress, solver)

    def likelihood(self, model, x0, **options) -> FlowLikelihood:
        return ode_likelihood(model, x0, timestep_scale=self.timestep_scale, **options)

    def __repr__(self) -> str:
        return f"RectifiedFlow(timestep_scale={self.timestep_scale:g})"


def check_continuous(t: torch.Tensor, what: str) -> None:
    """UserError unless t is a float tensor with every value in (0, 1)."""
    if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
        raise UserError(f"{what} needs a float tensor of times in (0, 1), got "
                        f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    require(t.numel() == 0 or bool((t > 0).all() and (t < 1).all()), f"{what} got times outside (0, 1)")
