"""Samplers with a fixed, explicit pmf over t (METHOD.md section 4).

Each sampler draws with its published rule (a continuous variable, then rounding or nearest-t) and
also gives the exact pmf of that rule: the continuous density integrated over the interval that
rounds to each t. So `probabilities()` is what `sample()` really draws from, not a smoothed
approximation, and unbiased importance weights are exact.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special, stats

from ..devices import check_device
from ..errors import UserError, require
from .base import SAMPLERS, TimestepSampler, check_batch_size, with_uniform_floor


def check_real(name: str, value, *, positive: bool = False) -> float:
    """`value` as a finite float (and > 0 when `positive`), else UserError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    require(ok and (value > 0 or not positive),
            f"option {name} must be a finite {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def rounding_edges(T: int) -> np.ndarray:
    """Edges in u ∈ [0, 1] of the intervals that t = round(u·(T-1)) maps to each t: t takes
    [(t-½)/(T-1), (t+½)/(T-1)), clipped to [0, 1], so t = 0 and t = T-1 get half-width intervals."""
    inner = (np.arange(1, T) - 0.5) / (T - 1)
    return np.concatenate([[0.0], inner, [1.0]])


def interval_masses(cdf, sf, edges: np.ndarray, median: float) -> np.ndarray:
    """Probability of each interval [edges[i], edges[i+1]).

    Above the median the difference is taken of survival functions, not of CDFs close to 1, so that
    tail masses keep their relative precision instead of cancelling to 0."""
    lo, hi = edges[:-1], edges[1:]
    upper = lo >= median
    masses = np.where(upper, sf(lo) - sf(hi), cdf(hi) - cdf(lo))
    return np.clip(masses, 0.0, None)


def normal_interval_masses(z_edges: np.ndarray) -> np.ndarray:
    """Masses of the standard normal on the intervals between consecutive z_edges (±inf allowed)."""
    return interval_masses(special.ndtr, lambda z: special.ndtr(-z), z_edges, 0.0)


def to_pmf(masses: np.ndarray) -> torch.Tensor:
    p = torch.as_tensor(masses, dtype=torch.float64)
    return p / p.sum()


class ExplicitSampler(TimestepSampler):
    """A sampler whose pmf is computed once (`self._p`) and which draws with its own rule
    (`_draw`), on the CPU with the caller's generator."""

    def __init__(self, schedule, unbiased: bool = False):
        super().__init__(schedule, unbiased=unbiased)
        self._p = self._pmf()
        require(bool(torch.isfinite(self._p).all()) and abs(float(self._p.sum()) - 1) < 1e-9,
                f"sampler {self.name!r} gave no valid distribution over t with these options")

    def _pmf(self) -> torch.Tensor:
        raise NotImplementedError

    def _draw(self, n: int, generator) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self) -> torch.Tensor:
        return self._p.clone()

    def sample(self, batch_size, device=None, generator=None, x0=None):
        check_batch_size(batch_size)
        device = check_device(device)
        t = self._draw(batch_size, generator)
        return t.to(device), self.importance_weights(t).to(device)


@SAMPLERS.register("logit-normal")
class LogitNormalSampler(ExplicitSampler):
    """n ~ N(mean, std²), u = sigmoid(n), t = round(u·(T-1)): Stable Diffusion 3's logit-normal, which
    the seed paper calls its "log-normal" baseline (mean 0, std 1).

    pmf: p_t = Φ((logit(e_{t+1}) − mean)/std) − Φ((logit(e_t) − mean)/std) over the rounding edges e.
    """

    name = "logit-normal"

    def __init__(self, schedule, mean: float = 0.0, std: float = 1.0, unbiased: bool = False):
        self.mean = check_real("mean", mean)
        self.std = check_real("std", std, positive=True)
        super().__init__(schedule, unbiased=unbiased)

    def _pmf(self):
        with np.errstate(divide="ignore"):  # logit(0) = -inf and logit(1) = +inf are the right edges
            z = (special.logit(rounding_edges(self.T)) - self.mean) / self.std
        return to_pmf(normal_interval_masses(z))

    def _draw(self, n, generator):
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        u = torch.sigmoid(self.mean + self.std * z)
        return torch.round(u * (self.T - 1)).long()


@SAMPLERS.register("lognormal-edm")
class LognormalEDMSampler(ExplicitSampler):
    """EDM's training density on a discrete schedule: ln σ ~ N(P_mean, P_std²), then the t whose
    σ_t = √((1−ᾱ_t)/ᾱ_t) is nearest in ln σ.

    t takes ln σ between the midpoints of (ln σ_{t-1}, ln σ_t) and (ln σ_t, ln σ_{t+1}); t = 0 and
    t = T-1 take the two tails. σ_t grows with t (every β_t > 0), so these intervals are ordered.
    On the linear schedule (σ_0 ≈ 0.01) the lower tail gives t = 0 a point mass of about 0.2%.
    """

    name = "lognormal-edm"

    def __init__(self, schedule, P_mean: float = -1.2, P_std: float = 1.2, unbiased: bool = False):
        self.P_mean = check_real("P_mean", P_mean)
        self.P_std = check_real("P_std", P_std, positive=True)
        super().__init__(schedule, unbiased=unbiased)

    def _pmf(self):
        log_sigma = self.schedule.sigmas.log()
        self._boundaries = (log_sigma[:-1] + log_sigma[1:]) / 2  # the T-1 midpoints, increasing
        edges = np.concatenate([[-np.inf], self._boundaries.numpy(), [np.inf]])
        return to_pmf(normal_interval_masses((edges - self.P_mean) / self.P_std))

    def _draw(self, n, generator):
        log_sigma = self.P_mean + self.P_std * torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.searchsorted(self._boundaries, log_sigma)


@SAMPLERS.register("beta")
class BetaSampler(ExplicitSampler):
    """u ~ Beta(a, b), t = round(u·(T-1)): a fixed Beta over t (B-TTDM, OneTrainer), the control for a
    learned Beta. a = b = 1 is uniform except that t = 0 and t = T-1 get half the mass. `mix` = m draws u
    from U(0, 1) instead with probability m: the learned sampler's uniform floor (its `uniform_mix`), so that a
    learned importance sampler's final distribution, frozen, keeps the floor that bounds its weights by 1/m.

    pmf: p_t = (1 − m)·(F(e_{t+1}) − F(e_t)) + m·(e_{t+1} − e_t) with F the Beta CDF and e the rounding edges
    (clipped to [0, 1]). Draws use the inverse CDF of a uniform from the caller's generator, so a seed fixes
    the timesteps; the floor takes two more uniforms per draw, and only when m > 0.
    """

    name = "beta"

    def __init__(self, schedule, a: float = 1.0, b: float = 1.0, unbiased: bool = False, mix: float = 0.0):
        self.a = check_real("a", a, positive=True)
        self.b = check_real("b", b, positive=True)
        self.mix = check_real("mix", mix)
        require(0 <= self.mix < 1, f"option mix must be in [0, 1), got {mix!r}")
        super().__init__(schedule, unbiased=unbiased)

    def _pmf(self):
        dist, edges = stats.beta(self.a, self.b), rounding_edges(self.T)
        pmf = to_pmf(interval_masses(dist.cdf, dist.sf, edges, dist.median()))
        if self.mix:
            flat = to_pmf(np.diff(np.clip(edges, 0.0, 1.0)))
            pmf = (1 - self.mix) * pmf + self.mix * flat
        return pmf

    def _draw(self, n, generator):
        v = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        u = with_uniform_floor(torch.from_numpy(stats.beta.ppf(v, self.a, self.b)), self.mix, generator)
        return torch.round(u * (self.T - 1)).long()


def meaningful_steps(schedule, threshold: float = 1e-4) -> int:
    """SpeeD's m: one past the first t where the per-step increment of √(1−ᾱ_t) (central
    differences, numpy.gradient) falls below `threshold`; 642 on the linear schedule with T = 1000.

    Like the reference code (np.argmax of an all-False mask is 0), m = 1 when no t qualifies, which
    happens for short schedules (T = 100) whose increments all exceed 10⁻⁴."""
    g = np.gradient(np.sqrt(1 - schedule.alphas_cumprod.numpy()))
    return int(np.argmax(g < threshold)) + 1


def check_tau(tau, T: int) -> int:
    """SpeeD's τ: 700 at T = 1000 and round(0.7·T) on other T when None; else an integer in [0, T]."""
    if tau is None:
        return round(0.7 * T)
    require(isinstance(tau, int) and not isinstance(tau, bool) and 0 <= tau <= T,
            f"option tau must be an integer in [0, T={T}] (or None for 0.7·T), got {tau!r}")
    return tau


class SpeedSampler(ExplicitSampler):
    """Shared part of both SpeeD versions: the pmf p below, and dual sampling.

    Dual sampling (on by default, as in SpeeD's code): for a batch of n, draw ⌊n/2⌋+1 timesteps from
    p, append their duals (m − t if t < m, else t − m) and keep the first n. The returned batch is
    therefore NOT n draws from p: its first ⌊n/2⌋+1 entries are, the rest are their duals (see
    `batch_probabilities`). `probabilities()` returns the base pmf p.

    Unbiased mode needs dual=False: the duals never reach t > max(m, T−1−m) (t > 642 on the linear
    schedule), so no per-sample weights can make a dual-sampled batch unbiased.
    """

    def __init__(self, schedule, dual: bool = True, unbiased: bool = False):
        require(isinstance(dual, bool), f"option dual must be True or False, got {dual!r}")
        self.dual = dual
        super().__init__(schedule, unbiased=unbiased)
        self.m = meaningful_steps(schedule)
        if self.unbiased and self.dual:
            raise UserError(f"sampler {self.name!r}: unbiased=True needs dual=False, since dual sampling "
                            f"never draws t > {max(self.m, self.T - 1 - self.m)}; valid: dual=False")

    def probabilities(self) -> torch.Tensor:
        """The base pmf p: the first ⌊n/2⌋+1 entries of a batch are drawn from it (all n with
        dual=False). How much each t is trained under dual sampling: `batch_probabilities()`."""
        return super().probabilities()

    def dual_of(self, t: torch.Tensor) -> torch.Tensor:
        """m − t for t < m, t − m otherwise."""
        return torch.where(t < self.m, self.m - t, t - self.m)

    def _draw(self, n, generator):
        if not self.dual:
            return torch.multinomial(self._p, n, replacement=True, generator=generator)
        base = torch.multinomial(self._p, n // 2 + 1, replacement=True, generator=generator)
        return torch.cat([base, self.dual_of(base)])[:n]

    def batch_probabilities(self, batch_size: int | None = None) -> torch.Tensor:
        """The pmf of a uniformly chosen entry of a batch of `batch_size` (None: a large batch), i.e.
        the share of training each t gets: ((⌊n/2⌋+1)·p + (n−⌊n/2⌋−1)·q)/n with q the pmf of the duals
        (→ (p + q)/2 as n grows). Equals p when dual=False."""
        require(batch_size is None or (isinstance(batch_size, int) and batch_size >= 1),
                f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        p = self._p
        if not self.dual:
            return p.clone()
        q = torch.zeros_like(p).index_add_(0, self.dual_of(torch.arange(self.T)), p)
        share = 0.5 if batch_size is None else min(batch_size // 2 + 1, batch_size) / batch_size
        return share * p + (1 - share) * q


@SAMPLERS.register("speed")
class SpeedCurrentSampler(SpeedSampler):
    """SpeeD, current version (paper v3, NUS-HPC-AI-Lab/SpeeD): p_t ∝ k for t < τ, ∝ 1 for t ≥ τ,
    plus dual sampling. Defaults: k = 2 (FFHQ configs; 5 for MetFaces), τ = 700 at T = 1000
    (τ = round(0.7·T) when not given, so the rule keeps its shape on other T). Pair it with the
    `speed` weighting, or pick the `speed` method for both."""

    name = "speed"

    def __init__(self, schedule, tau: int | None = None, k: float = 2.0, dual: bool = True,
                 unbiased: bool = False):
        self.tau = tau
        self.k = check_real("k", k, positive=True)
        super().__init__(schedule, dual=dual, unbiased=unbiased)

    def _pmf(self):
        self.tau = check_tau(self.tau, self.T)
        return to_pmf(np.where(np.arange(self.T) < self.tau, self.k, 1.0))


@SAMPLERS.register("speed-2024")
class Speed2024Sampler(SpeedSampler):
    """SpeeD, the 2024 code the seed paper compared against: p_t ∝ tanh(10⁶·(g_t − 10⁻⁴)) + 1.5 with
    g_t the central-difference gradient of √(1−ᾱ_t); about 2.5 where g_t > 10⁻⁴ and 0.5 elsewhere
    (ratio 5). Plus dual sampling. Its weighting is `speed-2024` (P2 with k = γ = 1)."""

    name = "speed-2024"

    def _pmf(self):
        g = np.gradient(np.sqrt(1 - self.schedule.alphas_cumprod.numpy()))
        return to_pmf(np.tanh(1e6 * (g - 1e-4)) + 1.5)
