"""Samplers of a continuous time t ∈ (0, 1), for rectified flow (METHOD.md section 8).

They sit behind the discrete samplers' interface, `sample(batch_size, device, generator=None, x0=None)
-> (t, weights)`, with t a float32 tensor strictly inside (0, 1), and are registered beside them under
names that start with "flow-": `make_sampler("flow-logit-normal:mean=0,std=1")` needs no schedule.

Each knows its exact density `density(t)` and CDF `cdf(t)`, so `unbiased=True` can return importance
weights 1/p(t) that restore the uniform-in-t objective, and a plot or a test can compare draws with
the density. Each takes SD3's resolution shift (`shift=s`, or `resolution=R`, below), applied to its
draws with the density transformed by the shift's exact Jacobian.

Hook for a learned sampler: subclass ContinuousTimeSampler, draw in `sample()` (x0 is passed for a
data-conditioned policy), give `density(t, ...)`, and learn in `observe()` (a no-op here) from
`RectifiedFlow.elbo_terms`, the flow's counterpart of the discrete bound's terms L_t.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special, stats

from ..devices import check_device
from ..errors import UserError, require
from .base import SAMPLERS, TimestepSampler, check_batch_size, with_uniform_floor
from .fixed import check_real

# Draws are clamped into [EPS, 1 − EPS] and returned as float32: 1 − 2⁻²⁴ is the largest float32 below 1,
# so no draw becomes 0 or 1 (where the ELBO weight (1 − t)/t or SD3's t⁻² would be infinite).
EPS = 2.0 ** -24
MODE_SCALE_MAX = 2 / (math.pi - 2)  # beyond it (or below −1) the mode map is not monotone: no density


def shift_from(shift, resolution, base_resolution) -> float:
    """The shift s from `shift` or from `resolution` (pixels per side): s = resolution/base_resolution,
    the SD3 paper's √(m/n) for square images of m and n pixels (its base: 256²). Neither: 1 (no shift)."""
    if shift is not None and resolution is not None:
        raise UserError("give the time shift as shift=S or as resolution=R, not both")
    if resolution is not None:
        return check_real("resolution", resolution, positive=True) / check_real(
            "base_resolution", base_resolution, positive=True)
    return 1.0 if shift is None else check_real("shift", shift, positive=True)


def _as_float64(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
    return np.asarray(t, dtype=np.float64)


class ContinuousTimeSampler(TimestepSampler):
    """Base class: a fixed density over t ∈ (0, 1). Subclasses give `_draw` (float64 draws before the
    shift), `_density` and `_cdf` (numpy, float64, on t ∈ (0, 1), before the shift).

    SD3's shift maps a draw t to t' = s·t/(1 + (s − 1)·t) (s > 1 moves mass toward noise, t = 1). Its
    inverse is t = t'/(s − (s − 1)·t'), so cdf'(t') = cdf(t) and p'(t') = p(t)·s/(s − (s − 1)·t')².
    SD3 trains at 1024² with s = 3.0 (chosen by preference; `resolution=1024` gives its √(m/n) rule, 4).

    `schedule` is accepted and ignored (a flow has no discrete schedule), so that `make_method(name,
    schedule)` builds discrete and continuous methods alike."""

    name = "continuous"
    continuous = True

    def __init__(self, schedule=None, shift: float | None = None, resolution: float | None = None,
                 base_resolution: float = 256, unbiased: bool = False):
        require(isinstance(unbiased, bool), f"option unbiased must be True or False, got {unbiased!r}")
        self.schedule, self.T = schedule, None
        self.shift = shift_from(shift, resolution, base_resolution)
        self.unbiased = unbiased

    # --- what a subclass gives -----------------------------------------------------------------
    def _draw(self, n: int, generator) -> torch.Tensor:
        raise NotImplementedError

    def _density(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cdf(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- the shift ------------------------------------------------------------------------------
    def _unshift(self, t: np.ndarray) -> np.ndarray:
        s = self.shift
        return t if s == 1.0 else t / (s - (s - 1) * t)

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        s = self.shift
        return t if s == 1.0 else s * t / (1 + (s - 1) * t)

    # --- public ---------------------------------------------------------------------------------
    def density(self, t) -> torch.Tensor:
        """The exact density p(t) of the draws (after the shift), float64 on the CPU; 0 outside (0, 1)."""
        t = _as_float64(t)
        inside = (t > 0) & (t < 1)
        tc = np.where(inside, t, 0.5)
        u = self._unshift(tc)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            p = self._density(u) * self.shift / (self.shift - (self.shift - 1) * tc) ** 2
        return torch.from_numpy(np.where(inside, p, 0.0))

    def cdf(self, t) -> torch.Tensor:
        """P(draw ≤ t), float64 on the CPU."""
        t = _as_float64(t)
        tc = np.clip(t, 0.0, 1.0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            c = np.where(tc <= 0, 0.0, np.where(tc >= 1, 1.0, self._cdf(self._unshift(np.clip(tc, 1e-300, 1)))))
        return torch.from_numpy(np.clip(c, 0.0, 1.0))

    def probabilities(self) -> torch.Tensor:
        raise NotImplementedError(f"sampler {self.name!r} draws a continuous t: use density(t), not a pmf")

    def sample(self, batch_size, device=None, generator=None, x0=None):
        """`batch_size` times t ∈ (0, 1) (float32) and their weights: ones, or 1/p(t) when unbiased.
        Draws happen on the CPU in float64 (with `generator` when given) and are moved to `device`."""
        check_batch_size(batch_size)
        device = check_device(device)
        t = self._shift(self._draw(batch_size, generator)).clamp(EPS, 1 - EPS)
        return t.float().to(device), self.importance_weights(t).to(device)

    def importance_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Ones, or 1/p(t) in unbiased mode (the density of U(0, 1) over the sampler's)."""
        if not self.unbiased:
            return torch.ones(t.shape, dtype=torch.float32)
        return (1.0 / self.density(t)).float()

    def options(self) -> dict:
        """The sampler's own options, for its repr."""
        return {}

    def __repr__(self) -> str:
        items = {**self.options(), **({"shift": self.shift} if self.shift != 1.0 else {})}
        if self.unbiased:
            items["unbiased"] = True
        text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items())
        return f"{type(self).__name__}({text})"


def _uniform(n: int, generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


@SAMPLERS.register("flow-uniform")
class FlowUniformSampler(ContinuousTimeSampler):
    """t ~ U(0, 1): rectified flow's own choice (Liu et al. 2022); with shift s, p(t) = s/(s − (s − 1)t)²."""

    name = "flow-uniform"

    def _draw(self, n, generator):
        return _uniform(n, generator)

    def _density(self, t):
        return np.ones_like(t)

    def _cdf(self, t):
        return t


@SAMPLERS.register("flow-logit-normal")
class FlowLogitNormalSampler(ContinuousTimeSampler):
    """t = sigmoid(n), n ~ N(mean, std²): SD3's default (mean 0, std 1; diffusers' "logit_normal").
    p(t) = φ((logit t − mean)/std) / (std·t·(1 − t))."""

    name = "flow-logit-normal"

    def __init__(self, schedule=None, mean: float = 0.0, std: float = 1.0, shift: float | None = None,
                 resolution: float | None = None, base_resolution: float = 256, unbiased: bool = False):
        self.mean = check_real("mean", mean)
        self.std = check_real("std", std, positive=True)
        super().__init__(schedule, shift, resolution, base_resolution, unbiased)

    def options(self):
        return {"mean": self.mean, "std": self.std}

    def _draw(self, n, generator):
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))

    def _density(self, t):
        z = (special.logit(t) - self.mean) / self.std
        return np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * self.std * t * (1 - t))

    def _cdf(self, t):
        return special.ndtr((special.logit(t) - self.mean) / self.std)


@SAMPLERS.register("flow-mode")
class FlowModeSampler(ContinuousTimeSampler):
    """SD3's "mode" density with heavy tails: t = f(u) = 1 − u − scale·(cos²(πu/2) − 1 + u), u ~ U(0, 1);
    scale = 1.29 as in diffusers' default, 0 is uniform.

    f falls from 1 to 0 and is monotone only for scale ∈ [−1, 2/(π − 2)], so other values are refused.
    With f' = −1 − scale + (π·scale/2)·sin(πu): cdf(t) = 1 − f⁻¹(t) and p(t) = 1/|f'(f⁻¹(t))|, with f⁻¹
    by safeguarded Newton steps to float64 precision. At either end of the range p is infinite at one
    point (and still integrable)."""

    name = "flow-mode"

    def __init__(self, schedule=None, scale: float = 1.29, shift: float | None = None,
                 resolution: float | None = None, base_resolution: float = 256, unbiased: bool = False):
        scale = check_real("scale", scale)
        require(-1 <= scale <= MODE_SCALE_MAX,
                f"option scale must lie in [-1, 2/(pi-2) = {MODE_SCALE_MAX:.4f}] (where the mode map is "
                f"monotone), got {scale!r}")
        self.scale = scale
        super().__init__(schedule, shift, resolution, base_resolution, unbiased)

    def options(self):
        return {"scale": self.scale}

    def _f(self, u):
        lib = torch if isinstance(u, torch.Tensor) else np
        return 1 - u - self.scale * (lib.cos(math.pi * u / 2) ** 2 - 1 + u)

    def _f_prime(self, u):
        return -1 - self.scale + math.pi * self.scale / 2 * np.sin(math.pi * u)

    def _f_inverse(self, t: np.ndarray) -> np.ndarray:
        """u with f(u) = t: Newton steps kept inside a shrinking bracket, bisecting where Newton would leave it
        (near a point where f' = 0 Newton slows down; bisection bounds the work there)."""
        lo, hi = np.zeros_like(t), np.ones_like(t)
        u = 1 - t
        for _ in range(200):
            excess = self._f(u) - t
            lo, hi = np.where(excess > 0, u, lo), np.where(excess > 0, hi, u)  # f decreases: f(lo) ≥ t ≥ f(hi)
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = u - excess / self._f_prime(u)
            step = np.where((newton > lo) & (newton < hi), newton, (lo + hi) / 2)
            done = np.all((np.abs(step - u) <= 4e-16) | (hi - lo <= 4e-16))
            u = step
            if done:
                break
        return u

    def _draw(self, n, generator):
        return self._f(_uniform(n, generator))

    def _density(self, t):
        u = self._f_inverse(t)
        return 1 / np.abs(self._f_prime(u))

    def _cdf(self, t):
        return 1 - self._f_inverse(t)


@SAMPLERS.register("flow-cosmap")
class FlowCosmapSampler(ContinuousTimeSampler):
    """SD3's CosMap: t = 1 − 1/(tan(πu/2) + 1), u ~ U(0, 1), so that rectified flow's log-SNR matches the
    cosine schedule's. Then cdf(t) = (2/π)·atan(t/(1 − t)) and p(t) = 2/(π(1 − 2t + 2t²)): the same function
    as SD3's cosmap loss weighting (weighting `flow-cosmap`), which trains the same objective."""

    name = "flow-cosmap"

    def _draw(self, n, generator):
        return 1 - 1 / (torch.tan(math.pi * _uniform(n, generator) / 2) + 1)

    def _density(self, t):
        return 2 / (math.pi * (1 - 2 * t + 2 * t * t))

    def _cdf(self, t):
        return 2 / math.pi * np.arctan(t / (1 - t))


@SAMPLERS.register("flow-beta")
class FlowBetaSampler(ContinuousTimeSampler):
    """t ~ Beta(a, b), drawn by the inverse CDF of a uniform from the caller's generator; a = b = 1 is
    uniform. The continuous counterpart of the discrete `beta` sampler (a learned Beta's control), with its
    uniform floor `mix` (t ~ U(0, 1) with probability mix; two more uniforms per draw, only when mix > 0)."""

    name = "flow-beta"

    def __init__(self, schedule=None, a: float = 1.0, b: float = 1.0, shift: float | None = None,
                 resolution: float | None = None, base_resolution: float = 256, unbiased: bool = False,
                 mix: float = 0.0):
        self.a = check_real("a", a, positive=True)
        self.b = check_real("b", b, positive=True)
        self.mix = check_real("mix", mix)
        require(0 <= self.mix < 1, f"option mix must be in [0, 1), got {mix!r}")
        super().__init__(schedule, shift, resolution, base_resolution, unbiased)

    def options(self):
        return {"a": self.a, "b": self.b, **({"mix": self.mix} if self.mix else {})}

    def _draw(self, n, generator):
        t = torch.from_numpy(stats.beta.ppf(_uniform(n, generator).numpy(), self.a, self.b))
        return with_uniform_floor(t, self.mix, generator)

    def _density(self, t):
        return (1 - self.mix) * stats.beta.pdf(t, self.a, self.b) + self.mix

    def _cdf(self, t):
        return (1 - self.mix) * stats.beta.cdf(t, self.a, self.b) + self.mix * t
