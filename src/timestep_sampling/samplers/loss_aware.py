"""Samplers that learn their distribution from the per-sample losses of recent steps.

Both keep, per key (a timestep or a band of timesteps), a ring buffer of the last few values passed
to `update(t, losses)`, and sample uniformly until every buffer is full. Under torch.distributed,
`update` first gathers (t, losses) from every rank in rank order, so every rank applies the same
update and holds the same state.
"""
from __future__ import annotations

import numpy as np
import torch

from ..distributed import all_gather_cat
from ..errors import UserError, require
from .base import SAMPLERS, TimestepSampler, check_state


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    require(ok, f"option {name} must be an integer {bounds}, got {value!r}")
    return value


def check_fraction(name: str, value) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    require(ok, f"option {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def gather_losses(t: torch.Tensor, losses: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, losses) from every rank, flattened, detached, on the CPU (t long, losses float64)."""
    t, losses = t.detach().reshape(-1), losses.detach().reshape(-1)
    require(t.numel() == losses.numel(), f"update() needs one loss per timestep, got {t.numel()} timesteps "
                                         f"and {losses.numel()} losses")
    t = all_gather_cat(t.long()).cpu()
    losses = all_gather_cat(losses.double()).cpu()
    # Checked after the gather, on data every rank now shares: all ranks raise together, none hangs.
    require(t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < T),
            f"update() got timesteps outside [0, {T - 1}]")
    require(bool(torch.isfinite(losses).all()), "update() got a non-finite loss (nan or inf)")
    return t, losses


def mix_uniform(scores: torch.Tensor, uniform_prob: float) -> torch.Tensor:
    """p ∝ scores, mixed with `uniform_prob` of the uniform pmf; uniform when all scores are 0."""
    T = scores.numel()
    total = scores.sum()
    if not total > 0:
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    return (1 - uniform_prob) * scores / total + uniform_prob / T


class LossHistory:
    """The last `size` values pushed for each of `rows` keys (a ring buffer per key).

    `values[k]` holds them in ring order, which does not matter for the moments taken from it."""

    def __init__(self, rows: int, size: int):
        self.values = torch.zeros(rows, size, dtype=torch.float64)
        self.seen = torch.zeros(rows, dtype=torch.long)  # values ever pushed per key

    @property
    def full(self) -> bool:
        return bool((self.seen >= self.values.shape[1]).all())

    def push(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append values[i] to key keys[i], in order; a key repeated in one batch gets its values in
        batch order, exactly as a loop would, but in a few vectorised operations."""
        rows, size = self.values.shape
        order = torch.argsort(keys, stable=True)
        keys, values = keys[order], values[order]
        counts = torch.bincount(keys, minlength=rows)
        first = torch.cumsum(counts, 0) - counts
        occurrence = torch.arange(keys.numel()) - first[keys]  # 0, 1, ... within each key
        # Only each key's last `size` values survive; dropping the rest first makes the slots distinct.
        keep = occurrence >= counts[keys] - size
        slots = (self.seen[keys] + occurrence) % size
        self.values[keys[keep], slots[keep]] = values[keep]
        self.seen += counts

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict, what: str) -> None:
        check_state(state, ("values", "seen"), what)
        values, seen = torch.as_tensor(state["values"]), torch.as_tensor(state["seen"])
        require(values.shape == self.values.shape and seen.shape == self.seen.shape,
                f"sampler {what!r}: saved history has shape {tuple(values.shape)}, this sampler expects "
                f"{tuple(self.values.shape)} (different T, bins or history length)")
        self.values = values.to(torch.float64).clone()
        self.seen = seen.to(torch.long).clone()


@SAMPLERS.register("loss-second-moment")
class LossSecondMomentSampler(TimestepSampler):
    """Importance sampling of improved DDPM (Nichol & Dhariwal 2021, `LossSecondMomentResampler`).

    Keeps the last `history` losses of every t. Until each t has `history` of them, t is uniform;
    then p_t ∝ √E[L_t²], mixed with `uniform_prob` of uniform so no t is starved:
    p_t = (1 − uniform_prob)·√E[L_t²] / Σ_s √E[L_s²] + uniform_prob / T.

    Unbiased weights 1/(T·p_t) are ON by default: the point of this sampler is to lower the variance
    of the same objective, not to change it (pass unbiased=False to train on p_t instead).
    """

    name = "loss-second-moment"

    def __init__(self, schedule, history: int = 10, uniform_prob: float = 0.001, unbiased: bool = True):
        super().__init__(schedule, unbiased=unbiased)
        self.uniform_prob = check_fraction("uniform_prob", uniform_prob)
        self.history = LossHistory(self.T, check_int("history", history, 1))

    def probabilities(self) -> torch.Tensor:
        if not self.history.full:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        return mix_uniform(self.history.values.square().mean(1).sqrt(), self.uniform_prob)

    def update(self, t, losses):
        t, losses = gather_losses(t, losses, self.T)
        self.history.push(t, losses)

    def state_dict(self):
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state):
        check_state(state, ("history",), self.name)
        self.history.load_state_dict(state["history"], self.name)


@SAMPLERS.register("variance")
class VarianceSampler(TimestepSampler):
    """Sampling in proportion to a per-timestep variance (the seed paper's Table 4 baseline):
    p_t = (1 − uniform_prob)·v_t / Σ_s v_s + uniform_prob / T.

    Either `variances` is given (a length-T array, e.g. gradient variances measured offline) and p is
    fixed, or v is estimated online, and then WHAT IS ESTIMATED is this: t is cut into `bins` equal
    bands; for each band, the unbiased sample variance of the last `window` values passed to
    `update(t, losses)` whose t fell in that band; every t of a band gets its band's variance. With the
    per-sample training loss as `losses` this is the variance of the loss, a cheap proxy for the
    variance of the stochastic gradient that the seed paper measured (which needs a backward pass per
    timestep). Any per-sample scalar that tracks the gradient better (e.g. a gradient-norm estimate)
    can be passed instead. Uniform until every band has `window` values.

    Weights are ones (the sampler changes the objective, as in the seed paper) unless unbiased=True.
    """

    name = "variance"

    def __init__(self, schedule, variances=None, bins: int = 20, window: int = 64,
                 uniform_prob: float = 0.001, unbiased: bool = False):
        super().__init__(schedule, unbiased=unbiased)
        self.uniform_prob = check_fraction("uniform_prob", uniform_prob)
        self.bins = check_int("bins", bins, 1, self.T)
        self.history = LossHistory(self.bins, check_int("window", window, 2))
        self.variances = None if variances is None else self._check_variances(variances)

    def _check_variances(self, variances) -> torch.Tensor:
        try:
            v = torch.as_tensor(np.asarray(variances, dtype=np.float64)).flatten()
        except (TypeError, ValueError):
            raise UserError(f"option variances must be an array of {self.T} numbers, one per timestep") from None
        require(v.numel() == self.T, f"option variances has {v.numel()} values; expected T={self.T}, one per timestep")
        require(bool(torch.isfinite(v).all() and (v >= 0).all()) and float(v.sum()) > 0,
                "option variances must be finite, >= 0 and not all 0")
        return v

    def band(self, t: torch.Tensor) -> torch.Tensor:
        """The band of each t: bands are [b·T/bins, (b+1)·T/bins)."""
        return t * self.bins // self.T

    def probabilities(self) -> torch.Tensor:
        if self.variances is not None:
            return mix_uniform(self.variances, self.uniform_prob)
        if not self.history.full:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        band_variance = self.history.values.var(dim=1, unbiased=True)
        return mix_uniform(band_variance[self.band(torch.arange(self.T))], self.uniform_prob)

    def update(self, t, losses):
        """Record per-sample values (no-op when `variances` was given: p is fixed then)."""
        if self.variances is None:
            t, losses = gather_losses(t, losses, self.T)
            self.history.push(self.band(t), losses)

    def state_dict(self):
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state):
        check_state(state, ("history",), self.name)
        self.history.load_state_dict(state["history"], self.name)
