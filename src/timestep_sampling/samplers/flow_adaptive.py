"""The learned time sampler for rectified flow: a Beta policy on t ∈ (0, 1) itself, trained online on the
first-order credit of each sample for its own t (credit.py), as the discrete `adaptive` sampler is.

    t ~ m·U(0, 1) + (1 − m)·Beta(α, β)         (m = `uniform_mix`, 0 by default)
    c_b = d/dδ ‖v − v̂_{θ + δd}(x_t_b, t_b)‖²,   d = P·∇ ∫_{t_min}^1 ((1 − t)/t)‖v − v̂‖² dt   (the flow's ELBO)
    A_b = (c_b − mean c)/std c;   φ ← Adam step on −mean_b[log π_φ(t_b) A_b] − c_ent·H(Beta)

every K = `update_every` steps, around the user's optimiser step (`observe(model, x0, optimizer=opt)`),
exactly as in the discrete loop. One global Beta: the discrete measurement (README, issue 14) found the
per-image policy giving every image the same (α, β). The policy starts at α = β = softplus(0.5) ≈ 0.974,
nearly uniform, which is rectified flow's own choice of t; lr = 0 freezes it there (the frozen control).
The policy's density is exact (`density`, `cdf`), so `unbiased=True` and goodness-of-fit tests work as
for the fixed flow samplers.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy import stats

from .. import distributed
from ..devices import check_device
from ..errors import require
from ..flow import TIMESTEP_SCALE, RectifiedFlow
from .base import SAMPLERS, check_batch_size, check_observed_batch, check_state
from .continuous import EPS, ContinuousTimeSampler
from .credit import (LEGACY_DELTA, StaleGradient, check_credit_delta, check_credit_target, eval_mode, flow_first_order_credit,
                     gradient_rewards, loop_weights, target_name, unwrap, variance_rewards)
from .fixed import check_real
from .policy import GlobalPolicy
from .policy_gradient import (CREDIT_DIRECTION_EVERY, CREDIT_K, CREDIT_LR, VARIANCE_K, VARIANCE_LR, BetaPolicyTerms,
                              CreditPolicyGradient, draw_beta_mixture)

_FALLBACK, _CREDIT, _DIRECTION = range(3)  # independent random streams, each from (seed, stream, rank, index)
REWARDS = ("credit", "variance", "grad-variance")


def _count(value, name: str, minimum: int = 1) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"option {name} must be an integer >= {minimum}, got {value!r}")
    return value


@SAMPLERS.register("flow-adaptive")
class FlowAdaptiveSampler(BetaPolicyTerms, CreditPolicyGradient, ContinuousTimeSampler):
    """A learned Beta over t for rectified flow. In a training loop:

        t, w = sampler.sample(len(x0), device)
        with sampler.observe(model, x0, optimizer=opt):
            loss = (w * flow.loss(model, x0, t)).mean()
            loss.backward(); opt.step(); opt.zero_grad()

    Options: lr (Adam; 6e-2 for the credit, 3e-2 for the variance rewards; 0 freezes), update_every (K: 40 for
    the credit, 20 for the variance rewards), entropy_coef (1e-2), grad_clip (1.0; None:
    off), uniform_mix (m, 0), credit_strata (64 log-spaced strata of [t_min, 1) in the bound probe),
    credit_delta (0: exact, as the adaptive sampler's), credit_target ("bound", the flow's ELBO; "loss", the
    velocity loss under uniform t; "objective", the weighted one the loop trains, ∫ w(t)‖v − v̂‖² dt with the
    weighting make_method pairs it with; or a flow weighting itself), t_min (1e-3), timestep_scale (the model's
    conditioning is t·scale; 1000, as diffusers' flow schedulers and the trainer), seed, unbiased, reward
    ("credit", or "variance" with unbiased=True: learn to lower the variance of the loop's loss estimate
    instead, as the discrete sampler's reward="variance"; its optimum is p(t) ∝ w(t)·RMS(‖v − v̂‖²) at t; or
    "grad-variance" with unbiased=True: the variance of the optimiser's step, from each sample's preconditioned
    gradient norm, as the discrete sampler's), direction_every (n: the bound probe's gradient is reused for n
    updates, as the discrete sampler's; 2 for the credit)."""

    name = "flow-adaptive"

    def __init__(self, schedule=None, lr: float | None = None, update_every: int | None = None, entropy_coef: float = 1e-2,
                 grad_clip: float | None = 1.0, uniform_mix: float = 0.0, credit_strata: int = 64,
                 credit_delta: float = 0.0, t_min: float = 1e-3, timestep_scale: float = TIMESTEP_SCALE,
                 seed: int = 0, unbiased: bool = False, credit_target="bound", reward: str = "credit",
                 direction_every: int | None = None):
        super().__init__(schedule, unbiased=unbiased)
        require(reward in REWARDS, f"unknown reward {reward!r}; valid choices: {', '.join(REWARDS)}")
        require(reward == "credit" or self.unbiased,
                f"reward={reward!r} lowers the variance of an unbiased estimate: it needs unbiased=True")
        self.reward = reward
        self.credit_target = check_credit_target(credit_target, continuous=True)
        credit = reward == "credit"  # the discrete sampler's defaults (adaptive.py): K, lr, kept probe gradient
        lr = (CREDIT_LR if credit else VARIANCE_LR) if lr is None else lr
        update_every = (CREDIT_K if credit else VARIANCE_K) if update_every is None else update_every
        direction_every = (CREDIT_DIRECTION_EVERY if credit else 1) if direction_every is None else direction_every
        self.lr = check_real("lr", lr)
        require(self.lr >= 0, f"option lr must be >= 0, got {lr!r}")
        self.update_every = _count(update_every, "update_every")
        self.entropy_coef = check_real("entropy_coef", entropy_coef)
        require(self.entropy_coef >= 0, f"option entropy_coef must be >= 0, got {entropy_coef!r}")
        self.grad_clip = None if grad_clip is None else check_real("grad_clip", grad_clip, positive=True)
        self.uniform_mix = check_real("uniform_mix", uniform_mix)
        require(0 <= self.uniform_mix < 1, f"option uniform_mix must lie in [0, 1), got {uniform_mix!r}")
        self.credit_strata = _count(credit_strata, "credit_strata")
        self.credit_delta = check_credit_delta(credit_delta)
        self.direction = StaleGradient(_count(direction_every, "direction_every"))
        self.t_min = check_real("t_min", t_min, positive=True)
        require(self.t_min < 1, f"option t_min must lie in (0, 1), got {t_min!r}")
        self.flow = RectifiedFlow(timestep_scale)
        self.seed = _count(seed, "seed", 0)
        self.policy = GlobalPolicy()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
        self.step = self.updates = self.skipped_updates = self.draws = 0
        self.last_stats: dict | None = None
        self.last_rewards: torch.Tensor | None = None
        self._last_sample = None
        self._pmf_cache = self._ab_cache = None  # cleared by every policy step

    # --- the policy and its density ------------------------------------------------------------
    def _run_policy(self, policy_input=None):
        return self.policy()

    def concentrations(self) -> tuple[float, float]:
        """(α, β) of the current Beta, kept until the next update (a plain step runs no policy)."""
        if self._ab_cache is None or self._ab_cache[0] != self.updates:
            with torch.no_grad():
                alpha, beta = (float(v) for v in self.policy())
            self._ab_cache = (self.updates, (alpha, beta))
        return self._ab_cache[1]

    def _density(self, t: np.ndarray) -> np.ndarray:
        alpha, beta = self.concentrations()
        return self.uniform_mix + (1 - self.uniform_mix) * stats.beta.pdf(t, alpha, beta)

    def _cdf(self, t: np.ndarray) -> np.ndarray:
        alpha, beta = self.concentrations()
        return self.uniform_mix * t + (1 - self.uniform_mix) * stats.beta.cdf(t, alpha, beta)

    def _draw(self, n: int, generator) -> torch.Tensor:
        alpha, beta = self.concentrations()
        return draw_beta_mixture(alpha, beta, n, generator, self.uniform_mix)

    # --- drawing and learning --------------------------------------------------------------------
    def _stream(self, stream: int, rank: int, index: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, stream, rank, index]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))

    def sample(self, batch_size, device=None, generator=None, x0=None):
        """t ∈ (0, 1) as float32 and the weights; without a generator, the sampler's own stream for
        (seed, rank, call). The draws are kept for the next `observe()`."""
        check_batch_size(batch_size)
        device = check_device(device)
        if generator is None:
            generator = self._stream(_FALLBACK, distributed.rank(), self.draws)
            self.draws += 1
        t = self._draw(batch_size, generator).clamp(EPS, 1 - EPS).float()
        self._last_sample = t
        return t.to(device), self.importance_weights(t).to(device)

    @contextlib.contextmanager
    def observe(self, model, x0: torch.Tensor, optimizer: torch.optim.Optimizer | None = None):
        """Wrap one optimiser step of `model` (model(x_t, t·timestep_scale) -> v̂, DDP included) on the batch x0
        that the last `sample()` drew times for. On update steps the credit is measured before the body and
        the policy learns after it; if the body raises, nothing is learned or counted."""
        if not self.is_update_step:
            yield
            self.step += 1
            return
        t = self._last_sample
        check_observed_batch(t, x0, "times")
        self._last_sample = None
        t_batch = t.to(device=x0.device, dtype=x0.dtype)
        generator = self._stream(_CREDIT, distributed.rank(), self.updates)
        if self.reward == "variance":  # the velocity MSE at fresh noise, without autograd
            with torch.no_grad(), eval_mode(model):
                noise = torch.randn(x0.shape, generator=generator).to(x0)
                losses = self.flow.loss(unwrap(model), x0.detach(), t_batch, noise)
            reward = variance_rewards(losses, t_batch, self.importance_weights(t), self.loss_weighting)
        elif self.reward == "grad-variance":
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            weights = loop_weights(self.loss_weighting, None, t_batch, self.importance_weights(t)).to(x0)
            reward = gradient_rewards(model, lambda net: self.flow.loss(net, x0.detach(), t_batch, noise) * weights,
                                      optimizer, self._stream(_DIRECTION, distributed.rank(), self.updates))
        else:
            weights = loop_weights(self.credit_target, self.loss_weighting, t_batch,
                                   self.importance_weights(t) if self.unbiased else None)
            reward = flow_first_order_credit(model, self.flow, x0, t_batch, optimizer, generator=generator,
                                             strata=self.credit_strata, delta=self.credit_delta, t_min=self.t_min,
                                             target=self.credit_target, weighting=self.loss_weighting,
                                             loss_weights=weights, stale=self.direction)
        yield
        self._learn_from_credit(None, t.double(), reward)
        self.step += 1

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"policy": {k: v.cpu() for k, v in self.policy.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step, "updates": self.updates,
                "skipped_updates": self.skipped_updates, "draws": self.draws,
                "direction": self.direction.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, self.state_dict(), self.name, optional={"direction"})  # absent before 2026-12-07
        require(set(state["policy"]) == set(self.policy.state_dict()),
                "the checkpoint's sampler state is not a flow-adaptive sampler's")
        self.direction.load_state_dict(state.get("direction", {"age": 0, "grads": None}))
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.updates = int(state["step"]), int(state["updates"])
        self.skipped_updates, self.draws = int(state["skipped_updates"]), int(state["draws"])
        self._last_sample, self._ab_cache = None, None

    def frozen_spec(self, final: dict, spec: str, weighting: str) -> str | None:
        """The method ("sampler+weighting") of a fixed flow Beta at this policy's final (α, β) (`final["alpha"]`,
        `final["beta"]`, as the bench records them), trained as this one was: the same `weighting`, uniform
        floor and importance weights; None without a final Beta."""
        if final.get("alpha") is None or final.get("beta") is None:
            return None
        mix = f",mix={self.uniform_mix:g}" if self.uniform_mix else ""  # its floor, as AdaptiveSampler.frozen_spec
        unbiased = ",unbiased=True" if self.unbiased else ""
        return f"flow-beta:a={final['alpha']:.6g},b={final['beta']:.6g}{mix}{unbiased}+{weighting}"

    def options(self) -> dict:
        if self.reward != "credit":  # no credit: its strata, δ and target do not apply
            return {"reward": repr(self.reward), "lr": self.lr, "K": self.update_every, "uniform_mix": self.uniform_mix}
        options = {"lr": self.lr, "K": self.update_every, "credit_strata": self.credit_strata, "t_min": self.t_min}
        if self.uniform_mix:
            options["uniform_mix"] = self.uniform_mix
        if self.entropy_coef != 1e-2:
            options["entropy_coef"] = self.entropy_coef
        if self.lr and self.credit_delta != LEGACY_DELTA:  # see AdaptiveSampler.__repr__
            options.update({"credit": "'exact'"} if self.credit_delta == 0 else {"credit_delta": self.credit_delta})
        if self.credit_target != "bound":
            options["credit_target"] = repr(target_name(self.credit_target))
        if self.lr and self.direction.every != 1:
            options["direction_every"] = self.direction.every
        return options
