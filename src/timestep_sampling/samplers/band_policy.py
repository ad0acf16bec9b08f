"""A learned sampler whose policy is a softmax over bands of t, trained by the same credit and policy
gradient as the adaptive sampler's Beta (adaptive.py, policy_gradient.py).

Why not a Beta. The first-order credit over t is not monotone: on a uniform-trained digits model (linear)
it is strongly positive below t ≈ 100, negative from 100 to 400 and slightly positive above 600
(docs/analysis/reward_signal_linear.json). A Beta has two numbers to answer that with; its gradient is
the credit's covariance with log u and log(1 − u), which early noise can tip either way, and the
credit then grows wherever the Beta has put the training (docs/analysis/credit_by_t.json): on one seed
of three it ended at large t, worse than uniform. Bands give each region of t its own logit, moved by
its own samples' credit, so one region's noise does not move another's mass.

    π_k    = softmax(θ_k + log w_k)           w_k the width of band k (log-spaced, one timestep wide at small t)
    p(t)   = (1 − m) · π_k(t) / w_k(t) + m / T   uniform inside a band; m the uniform floor
    loss   = −mean_b[ log p(t_b) A_b ] − c_ent · H(p)     A_b the credit standardised over the batch

θ = 0 is the uniform sampler, so the frozen copy (lr = 0) is uniform itself.

Two estimators of the policy gradient (option `estimator`):

- "critic" (the default): natural policy gradient with a per-band critic. For a softmax, the expected
  likelihood-ratio gradient on θ_k is π_k (V_k − V̄), V_k the mean advantage of band k's samples; the
  natural gradient drops the π_k. The critic V_k is a running, shrunk mean of the standardised credit:
  sums and counts of the samples in each band decay by `decay` per update and are pooled over nearby
  bands (a Gaussian of `smooth` bands, i.e. nearby log t: the credit is smooth in log t), and
  V_k = sum_k / (count_k + `prior_count`), so a band seen a few times counts as average. Every update
  also scores one probe per band (`probe`, a t drawn inside each band on an image of the batch; scored,
  not trained on: two more forward passes of one sample per band), so the critic sees every band, also
  those the policy rarely draws: on one digits seed the credit sat on t ∈ {0, 1, 2} alone, which uniform
  draws 0.3 % of the time. Then

      θ ← θ + lr · (V − Σ_j q_j V_j − c_ent · θ)      q the bands' sampling probabilities

  whose fixed point for a steady credit is θ = (V − V̄)/c_ent: c_ent is a temperature, lr a rate.
- "reinforce": the per-sample estimator −mean_b[log p(t_b) A_b] − c_ent H(p), stepped by Adam (H the
  entropy over all T timesteps, log T − H = KL(p ‖ U)). Measured on the digits it fails on rarely drawn
  bands: their gradient is tiny and noisy, and Adam's per-coordinate normalisation turns it into full-size
  steps, so the one-timestep bands at small t drift together in whichever direction the batch's noise
  points (seed 2, linear: mass at t < 20 0.020 → 0.009 although the credit there was the largest).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..bound import log_strata
from ..devices import check_device
from ..errors import require
from ..schedule import NoiseSchedule
from .base import SAMPLERS, TimestepSampler, check_batch_size, check_observed_batch, check_state
from .credit import BoundOptions, check_credit_delta, credit_repr, first_order_credit
from .loss_aware import check_fraction, check_int
from .policy_gradient import CreditPolicyGradient

_FALLBACK, _BATCH_NOISE, _PROBE = 0, 1, 2  # the sampler's own random streams
ESTIMATORS = ("critic", "reinforce")
DEFAULT_LR = {"critic": 0.1, "reinforce": 5e-2}
DEFAULT_ENTROPY = {"critic": 0.5, "reinforce": 0.1}


class BandLogits(nn.Module):
    """θ, one logit per band, starting at 0 (the uniform sampler)."""

    def __init__(self, bands: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(bands, dtype=torch.float64))


def _real(name: str, value, minimum: float = 0.0) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
    require(ok, f"option {name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def _logits(value, bands: int) -> torch.Tensor:
    """θ from a sequence or a ';'-separated string (a spec string cannot hold a list: its commas split options)."""
    try:
        items = value.split(";") if isinstance(value, str) else list(value)
        theta = torch.tensor([float(v) for v in items], dtype=torch.float64)
    except (TypeError, ValueError):
        theta = None
    require(theta is not None and theta.shape == (bands,) and bool(torch.isfinite(theta).all()),
            f"option theta must hold {bands} finite logits, one per band (';'-separated in a spec), got {value!r}")
    return theta


def logits_from_density(density, edges: torch.Tensor, uniform_mix: float) -> torch.Tensor:
    """The band logits θ of a density over t (p(t)·T, as the trainer logs it): the inverse of p(t) =
    (1 − m) π_k(t)/w_k(t) + m/T. Bands the floor alone explains get the smallest logit seen."""
    p = torch.as_tensor(density, dtype=torch.float64)
    p = p / p.sum()
    T, widths = len(p), (edges[1:] - edges[:-1]).double()
    band = torch.stack([p[a:b].sum() for a, b in zip(edges[:-1].tolist(), edges[1:].tolist())])
    policy = (band - uniform_mix * widths / T).clamp(min=0) / (1 - uniform_mix)
    theta = torch.full_like(policy, -math.inf)
    theta[policy > 0] = (policy[policy > 0] / widths[policy > 0]).log()
    finite = torch.isfinite(theta)
    theta[~finite] = theta[finite].min() if finite.any() else 0.0
    return theta - theta.max()


@SAMPLERS.register("adaptive-bands")
class BandPolicySampler(CreditPolicyGradient, BoundOptions, TimestepSampler):
    """Options: bands (50 log-spaced, fewer where one would be under a timestep wide), estimator ("critic" or
    "reinforce", module docstring), lr (critic 0.1; reinforce: Adam, 5e-2; 0 freezes it at uniform),
    update_every K (20), entropy_coef c_ent (critic 0.5, reinforce 0.1), uniform_mix m (0.3), the critic's
    decay (0.98 per update), smooth (1 band), prior_count (8 samples) and probe (True: one extra
    credit-only sample per band and update), holdout (0: the bound is probed on the batch; > 0: on
    held-out images the caller passes as observe(..., probe_x0=...); the reference trainer keeps that
    fraction of the training set out of training for it),
    grad_clip (None), credit_strata and credit_delta as the adaptive sampler's, bins and variance of
    the bound, seed, theta (the starting logits; default 0 = uniform). Use it as the adaptive sampler: `sample()`, then `with sampler.observe(model, x0,
    optimizer=opt): ...step...`."""

    name = "adaptive-bands"

    def __init__(self, schedule: NoiseSchedule, bands: int = 50, lr: float | None = None, update_every: int = 20,
                 entropy_coef: float | None = None, uniform_mix: float = 0.3, grad_clip: float | None = None,
                 estimator: str = "critic", decay: float = 0.98, smooth: float = 1.0, prior_count: float = 8.0,
                 probe: bool = True, holdout: float = 0.0,
                 credit_strata: int = 64, credit_delta: float = 0.0, bins: int = 256,
                 variance: str = "fixed-large", seed: int = 0, unbiased: bool = False, theta=None):
        super().__init__(schedule, unbiased)
        check_int("bands", bands, 1, self.T)
        self.edges = torch.tensor(log_strata(self.T, 0, bands))
        widths = (self.edges[1:] - self.edges[:-1]).double()
        self.width, self.log_width = widths, widths.log()
        self.band_of_t = torch.bucketize(torch.arange(self.T), self.edges[1:], right=True)
        require(estimator in ESTIMATORS, f"option estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        self.estimator = estimator
        self.lr = _real("lr", DEFAULT_LR[estimator] if lr is None else lr)
        self.update_every = check_int("update_every", update_every, 1)
        self.entropy_coef = _real("entropy_coef", DEFAULT_ENTROPY[estimator] if entropy_coef is None else entropy_coef)
        self.decay = check_fraction("decay", decay)
        self.smooth = _real("smooth", smooth)
        self.prior_count = _real("prior_count", prior_count)
        require(isinstance(probe, bool), f"option probe must be True or False, got {probe!r}")
        self.probe = probe and estimator == "critic"
        self.holdout = check_fraction("holdout", holdout)
        require(self.holdout < 1, "option holdout must be below 1: the model needs images to train on")
        self.uniform_mix = check_fraction("uniform_mix", uniform_mix)
        require(self.uniform_mix < 1, "option uniform_mix must be below 1: the policy needs some of the draws")
        self.grad_clip = None if grad_clip is None else _real("grad_clip", grad_clip)
        self.credit_strata = check_int("credit_strata", credit_strata, 1)
        self.credit_delta = check_credit_delta(credit_delta)
        self.configure_bound(bins, variance)
        self.seed = check_int("seed", seed, 0)
        self.policy = BandLogits(len(widths))
        if theta is not None:
            with torch.no_grad():
                self.policy.theta.copy_(_logits(theta, len(widths)))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
        n = len(widths)
        self.credit_sum = torch.zeros(n, dtype=torch.float64)    # the critic's decayed sums of standardised credit
        self.credit_count = torch.zeros(n, dtype=torch.float64)  # and of samples, per band
        distance = torch.arange(n, dtype=torch.float64)[:, None] - torch.arange(n, dtype=torch.float64)
        self.pool = torch.exp(-0.5 * (distance / self.smooth) ** 2) if self.smooth > 0 else torch.eye(n, dtype=torch.float64)
        self.step = self.updates = self.skipped_updates = self.draws = 0
        self.last_stats: dict | None = None
        self.last_rewards: torch.Tensor | None = None
        self._last_t: torch.Tensor | None = None
        self._pmf_cache = self._ab_cache = None

    # ------------------------------------------------------------------------------------------------
    # The distribution

    def _pmf(self) -> torch.Tensor:
        """p(t) over all T timesteps, differentiable in θ."""
        band = torch.softmax(self.policy.theta + self.log_width, 0)
        per_t = band.index_select(0, self.band_of_t) / self.width.index_select(0, self.band_of_t)
        return (1 - self.uniform_mix) * per_t + self.uniform_mix / self.T

    def probabilities(self) -> torch.Tensor:
        if self._pmf_cache is None or self._pmf_cache[0] != self.updates:
            with torch.no_grad():
                self._pmf_cache = (self.updates, self._pmf().detach().cpu())
        return self._pmf_cache[1]

    def _policy_terms(self, policy_input, t: torch.Tensor):
        p = self._pmf()
        log_p = p.log()
        entropy = -(p * log_p).sum()
        mass = p[:20].sum() if self.T > 20 else p.sum()
        return log_p.index_select(0, t.long().cpu()), entropy, {"mass_t_below_20": mass.detach(),
                                                                "mean_t": (p * torch.arange(self.T)).sum().detach()}

    # ------------------------------------------------------------------------------------------------
    # Sampling and learning

    def _stream(self, stream: int, rank: int, index: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, index, stream, rank]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))

    def sample(self, batch_size, device=None, generator=None, x0=None):
        """t by the inverse CDF of p from `generator`, or from the sampler's own stream for (seed, rank,
        call): a counter rather than a generator's state, so a checkpoint resumes every rank's stream."""
        check_batch_size(batch_size)
        device = check_device(device)
        if generator is None:
            generator = self._stream(_FALLBACK, distributed.rank(), self.draws)
            self.draws += 1
        v = torch.rand(batch_size, generator=generator, device=generator.device, dtype=torch.float64).cpu()
        cdf = self.probabilities().cumsum(0)
        t = torch.searchsorted(cdf, v * cdf[-1], right=True).clamp(max=self.T - 1)
        self._last_t = t
        return t.to(device), self.importance_weights(t).to(device)

    @contextlib.contextmanager
    def observe(self, model, x0: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
                probe_x0: torch.Tensor | None = None):
        """Around one optimiser step: every K-th step scores each sample's credit before the step and
        takes one policy-gradient step after it. If the body raises, nothing is updated or counted.
        probe_x0: images the model does not train on, to probe the bound on (needed when holdout > 0)."""
        require(not self.holdout or probe_x0 is not None,
                f"this sampler was built with holdout={self.holdout}: pass held-out images to observe(..., "
                "probe_x0=...) (images the model is not trained on), or build it with holdout=0")
        if not self.is_update_step:
            yield
            self.step += 1
            return
        t = self._last_t
        check_observed_batch(t, x0)
        self._last_t = None
        probe_t = self._probe_timesteps() if self.probe else t[:0]
        images = x0.detach()[torch.arange(len(x0) + len(probe_t)) % len(x0)]  # the batch, then the probes' images
        credit = first_order_credit(model, self.schedule, images, torch.cat([t, probe_t]).to(x0.device), optimizer,
                                    generator=self._stream(_BATCH_NOISE, distributed.rank(), self.updates),
                                    strata=self.credit_strata, delta=self.credit_delta, bins=self.bins,
                                    variance=self.variance, probe_x0=probe_x0).cpu()
        yield
        if self.estimator == "critic":
            self._critic_step(t, credit[:len(t)], probe_t, credit[len(t):])
        else:
            self._learn_from_credit(None, t, credit[:len(t)])
        self.step += 1

    def _probe_timesteps(self) -> torch.Tensor:
        """One t uniform inside every band, for this rank and update: the critic's view of every band, also
        of those the policy rarely draws (at small t the credit can sit on two or three timesteps)."""
        v = torch.rand(len(self.width), generator=self._stream(_PROBE, distributed.rank(), self.updates),
                       dtype=torch.float64)
        return self.edges[:-1] + (v * self.width).long().clamp(max=self.width.long() - 1)

    def values(self) -> torch.Tensor:
        """The critic: each band's shrunk, pooled running mean of the standardised credit."""
        return (self.pool @ self.credit_sum) / (self.pool @ self.credit_count + self.prior_count)

    def _critic_step(self, t: torch.Tensor, credit: torch.Tensor, probe_t: torch.Tensor,
                     probe_credit: torch.Tensor) -> None:
        """The natural policy gradient with the per-band critic (module docstring), the same on every rank:
        the credits of all ranks are gathered first. The probes' credits are standardised by the batch's
        mean and spread, as the batch's own are, and counted like them."""
        t = distributed.all_gather_cat(t.long().cpu()).cpu()
        credit = distributed.all_gather_cat(credit.double()).cpu()
        probe_t = distributed.all_gather_cat(probe_t.long().cpu()).cpu()
        probe_credit = distributed.all_gather_cat(probe_credit.double()).cpu()
        self.updates += 1
        spread = credit.std() if len(credit) > 1 else torch.tensor(0.0, dtype=torch.float64)
        if not (bool(torch.isfinite(credit).all()) and bool(torch.isfinite(probe_credit).all()) and spread > 0):
            self.skipped_updates += 1
            self.last_stats = {"updates": self.updates, "skipped": True, "skipped_updates": self.skipped_updates,
                               "step": self.step}
            return
        z = (torch.cat([credit, probe_credit]) - credit.mean()) / spread
        band = self.band_of_t[torch.cat([t, probe_t])]
        n = len(self.width)
        self.credit_sum = self.decay * self.credit_sum + torch.bincount(band, weights=z, minlength=n)
        self.credit_count = self.decay * self.credit_count + torch.bincount(band, minlength=n).double()
        value = self.values()
        with torch.no_grad():
            theta = self.policy.theta
            q = (1 - self.uniform_mix) * torch.softmax(theta + self.log_width, 0) + self.uniform_mix * self.width / self.T
            theta += self.lr * (value - (q * value).sum() - self.entropy_coef * theta)
        self._pmf_cache = None
        p = self.probabilities()
        self.last_rewards = credit
        self.last_stats = {"updates": self.updates, "skipped": False, "skipped_updates": self.skipped_updates,
                           "step": self.step, "reward_mean": float(credit.mean()), "reward_std": float(spread),
                           "mass_t_below_20": float(p[:20].sum()), "mean_t": float((p * torch.arange(self.T)).sum()),
                           "value_max": float(value.max()), "value_min": float(value.min())}

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict:
        return {"theta": self.policy.theta.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "credit_sum": self.credit_sum.clone(), "credit_count": self.credit_count.clone(),
                "edges": self.edges.clone(), "step": self.step, "updates": self.updates,
                "skipped_updates": self.skipped_updates, "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, self.state_dict(), self.name)
        require(torch.equal(state["edges"], self.edges),
                "the checkpoint's adaptive-bands sampler used other bands: use the same T and bands")
        with torch.no_grad():
            self.policy.theta.copy_(state["theta"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.credit_sum = state["credit_sum"].clone().double()
        self.credit_count = state["credit_count"].clone().double()
        self.step, self.updates = int(state["step"]), int(state["updates"])
        self.skipped_updates, self.draws = int(state["skipped_updates"]), int(state["draws"])
        self._last_t, self._pmf_cache = None, None

    def frozen_spec(self, final: dict, spec: str, weighting: str) -> str:
        """The method ("sampler+weighting") of this policy frozen from step 0 at a final state: `spec`, this
        sampler's own spec as written, with lr = 0 and the logits `logits_from_density` recovers from
        `final["density"]` (p(t)·T, as the trainer logs it), paired with the same `weighting`. The bench's
        `adaptive-bands-final` control."""
        theta = logits_from_density(final["density"], self.edges, self.uniform_mix)
        logits = ";".join(f"{x:.4f}" for x in theta.tolist())
        return f"{spec}{',' if ':' in spec else ':'}lr=0,theta={logits}+{weighting}"

    def __repr__(self) -> str:
        critic = (f"decay={self.decay}, smooth={self.smooth}, prior_count={self.prior_count}, probe={self.probe}, "
                  if self.estimator == "critic" else "")
        return (f"BandPolicySampler(T={self.T}, bands={len(self.log_width)}, estimator={self.estimator!r}, {critic}"
                f"lr={self.lr}, K={self.update_every}, "
                f"entropy_coef={self.entropy_coef}, uniform_mix={self.uniform_mix}, "
                f"credit_strata={self.credit_strata}"
                + credit_repr(self.credit_delta)
                + (f", holdout={self.holdout})" if self.holdout else ")"))
