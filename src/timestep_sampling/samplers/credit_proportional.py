"""A non-RL control for the learned sampler: sample timesteps in proportion to their measured credit.

The learned sampler turns the first-order credit (credit.py) into a policy-gradient step on a Beta. This
sampler uses the same credit without a policy: every K steps it scores the batch, standardises the
credits of that update, and keeps a running mean of them per band of timesteps (log-spaced bands, one
timestep wide at small t). Timesteps are drawn from

    p_t = (1 − m) · exp(z_band(t) / τ) / Σ_t' exp(z_band(t') / τ) + m / T,

z the band means standardised across bands, τ the temperature, m the uniform share that keeps every band
measured. The softmax is over timesteps, not bands, so equal credits give the uniform sampler whatever
the band layout. If the learned sampler does no better than this, its policy gradient adds nothing over
the credit itself. Under torch.distributed the credits are gathered from every rank, so every rank keeps
the same state.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from .. import distributed
from ..bound import log_strata
from ..errors import require
from ..schedule import NoiseSchedule
from .base import SAMPLERS, TimestepSampler, check_observed_batch, check_state
from .credit import BoundOptions, check_credit_delta, credit_repr, first_order_credit
from .loss_aware import check_fraction, check_int


@SAMPLERS.register("credit-proportional")
class CreditProportionalSampler(BoundOptions, TimestepSampler):
    """Options: bands (50 log-spaced, fewer where they would be under one timestep wide), temperature τ (1),
    uniform_mix m (0.3), decay of the per-band running mean per update (0.9), update_every K (40),
    credit_strata and credit_delta as in the adaptive sampler, bins and variance of the bound, seed."""

    name = "credit-proportional"

    def __init__(self, schedule: NoiseSchedule, bands: int = 50, temperature: float = 1.0, uniform_mix: float = 0.3,
                 decay: float = 0.9, update_every: int = 40, credit_strata: int = 64, credit_delta: float = 0.0,
                 bins: int = 256, variance: str = "fixed-large", seed: int = 0, unbiased: bool = False):
        super().__init__(schedule, unbiased)
        check_int("bands", bands, 1, self.T)
        self.edges = torch.tensor(log_strata(self.T, 0, bands))
        require(isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature),
                f"option temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.uniform_mix = check_fraction("uniform_mix", uniform_mix)
        self.decay = check_fraction("decay", decay)
        self.update_every = check_int("update_every", update_every, 1)
        self.credit_strata = check_int("credit_strata", credit_strata, 1)
        self.credit_delta = check_credit_delta(credit_delta)
        self.configure_bound(bins, variance)
        self.seed = check_int("seed", seed, 0)
        n = len(self.edges) - 1
        self.band_of_t = torch.bucketize(torch.arange(self.T), self.edges[1:], right=True)
        self.band_credit = torch.zeros(n, dtype=torch.float64)   # running mean of the standardised credit
        self.band_seen = torch.zeros(n, dtype=torch.long)         # updates that measured each band
        self.step, self.updates = 0, 0
        self.last_stats: dict | None = None
        self._last_t: torch.Tensor | None = None

    def probabilities(self) -> torch.Tensor:
        seen = self.band_seen > 0
        if not seen.any():
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        credit = self.band_credit.clone()
        credit[~seen] = credit[seen].mean()  # a band not yet measured counts as average
        spread = credit.std() if len(credit) > 1 else torch.tensor(0.0, dtype=torch.float64)
        z = (credit - credit.mean()) / spread if spread > 0 else torch.zeros_like(credit)
        logits = (z / self.temperature)[self.band_of_t]
        return (1 - self.uniform_mix) * torch.softmax(logits, 0) + self.uniform_mix / self.T

    def sample(self, batch_size, device=None, generator=None, x0=None):
        t, weights = super().sample(batch_size, device, generator)
        self._last_t = t
        return t, weights

    @property
    def is_update_step(self) -> bool:
        return self.step % self.update_every == 0

    @contextlib.contextmanager
    def observe(self, model, x0: torch.Tensor, optimizer: torch.optim.Optimizer | None = None):
        """Around one optimiser step, as the adaptive sampler's: every K-th step scores the batch's credit
        before the step and folds it into the per-band means after it."""
        if not self.is_update_step:
            yield
            self.step += 1
            return
        t = self._last_t
        check_observed_batch(t, x0)
        self._last_t = None
        index = np.random.SeedSequence([self.seed, self.updates, distributed.rank()]).generate_state(1)[0]
        credit = first_order_credit(model, self.schedule, x0.detach(), t, optimizer,
                                    generator=torch.Generator().manual_seed(int(index)),
                                    strata=self.credit_strata, delta=self.credit_delta, bins=self.bins,
                                    variance=self.variance)
        yield
        self._learn(t.cpu(), credit)
        self.step += 1

    def _learn(self, t: torch.Tensor, credit: torch.Tensor) -> None:
        t = distributed.all_gather_cat(t.long()).cpu()
        credit = distributed.all_gather_cat(credit.double()).cpu()
        self.updates += 1
        spread = credit.std()
        if not (torch.isfinite(credit).all() and spread > 0):
            self.last_stats = {"updates": self.updates, "skipped": True}
            return
        z = (credit - credit.mean()) / spread
        band = self.band_of_t[t]
        for b in band.unique().tolist():
            value = float(z[band == b].mean())
            old = float(self.band_credit[b])
            self.band_credit[b] = value if self.band_seen[b] == 0 else self.decay * old + (1 - self.decay) * value
            self.band_seen[b] += 1
        p = self.probabilities()
        self.last_stats = {"updates": self.updates, "skipped": False, "credit_mean": float(credit.mean()),
                           "credit_std": float(spread), "mass_t_below_20": float(p[:20].sum()),
                           "mean_t": float((p * torch.arange(self.T)).sum())}

    def state_dict(self) -> dict:
        return {"band_credit": self.band_credit.clone(), "band_seen": self.band_seen.clone(), "step": self.step,
                "updates": self.updates, "edges": self.edges.clone()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, self.state_dict(), self.name)
        require(torch.equal(state["edges"], self.edges),
                "the checkpoint's credit-proportional sampler used other bands: use the same T and bands")
        self.band_credit = state["band_credit"].clone().double()
        self.band_seen = state["band_seen"].clone().long()
        self.step, self.updates = int(state["step"]), int(state["updates"])
        self._last_t = None

    def __repr__(self) -> str:
        return (f"CreditProportionalSampler(T={self.T}, bands={len(self.edges) - 1}, temperature={self.temperature}, "
                f"uniform_mix={self.uniform_mix}, K={self.update_every}{credit_repr(self.credit_delta)})")
