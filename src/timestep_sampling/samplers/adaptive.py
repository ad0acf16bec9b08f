"""The adaptive timestep sampler of Kim et al. (CVPR 2025), METHOD.md section 3.

A policy π_φ maps each training image x0 to a Beta(α, β); the timestep is read off a draw u:

    u ~ Beta(α, β) clamped to [ε, 1 − ε],   t = round(u (T − 1))        (mapping="round", the paper's)
                                            t = min(⌊u T⌋, T − 1)          (mapping="even")

Rounding gives t = 0 and t = T − 1 half the mass of their neighbours; "even" gives every t the same
mass when u is uniform. The loss is not re-weighted (weights are ones): the sampler deliberately
changes how much each timestep is trained.

Every K = `update_every` steps the sampler learns from the model update it wraps (`observe`), with one
of four rewards.

reward="credit" (the default; credit.py): before the step, each sample's first-order credit
c_b = g_b · P∇L̂ (its gradient against the optimiser-preconditioned gradient of a bound estimate), then

    A_b        = (c_b − mean c) / std c   over the whole batch (all ranks)
    loss(φ)    = −mean_b[ log π_φ(u_b | x0_b) A_b ] − c_ent · mean_b H(Beta_b)

reward="variance" and "grad-variance" (importance samplers: unbiased=True) reward each sample's share of
the second moment of the loop's loss estimate or of its optimiser step instead (_loss_spread,
_gradient_spread).

reward="paper" (eq. 14, the faithful control; it carries almost no information about t_b, METHOD.md §7):
the look-ahead reward and its feature-selection queue, in lookahead.py.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from scipy.stats import beta as beta_distribution
from torch import nn

from .. import distributed
from ..diffusion import mse_per_sample
from ..devices import check_device
from ..errors import require
from ..schedule import NoiseSchedule
from .base import SAMPLERS, TimestepSampler, check_batch_size, check_observed_batch, check_state
from .credit import (BoundOptions, StaleGradient, check_credit_delta, check_credit_target, credit_repr, eval_mode,
                     first_order_credit, gradient_rewards, loop_weights, target_name, unwrap, variance_rewards)
from .feature_selection import ChangeQueue
from .lookahead import _BATCH_NOISE, PaperLookahead
from .policy import make_policy
from .policy_gradient import (CREDIT_DIRECTION_EVERY, CREDIT_K, CREDIT_LR, VARIANCE_K, VARIANCE_LR, BetaPolicyTerms,
                              CreditPolicyGradient, draw_beta_mixture)

MAPPINGS = ("round", "even")
REWARDS = ("credit", "paper", "variance", "grad-variance")
VARIANCE_REWARDS = ("variance", "grad-variance")  # importance samplers: they need unbiased=True
# Defaults that depend on the reward. The paper's: K = 40, Adam 1e-2 (linear, quad) or 1e-3 (cosine). The
# credit's advantages are standardised per update, so one learning rate serves every schedule. Since
# 2026-12-07 the credit updates every 40 steps at twice the learning rate of the K = 20 update it replaced
# (3e-2), with the bound probe's gradient kept for 2 updates: the update then costs about one plain step
# in 40 (docs/learned-sampler.md#what-it-costs-per-step) and learns as fast (3 seeds on credit3k, level with
# K = 20's bits/dim). The records made before that date ran `adaptive:update_every=20,lr=0.03,direction_every=1`.
# The variance rewards (a plain forward pass an update) keep K = 20 and 3e-2.
PAPER_K = 40


def _default_lr(reward: str, schedule: NoiseSchedule) -> float:
    if reward == "credit":
        return CREDIT_LR
    if reward != "paper":
        return VARIANCE_LR
    return 1e-3 if schedule.name == "cosine" else 1e-2


# Independent random streams, each derived from (seed, index, stream[, rank]), the index being the update
# or, for the fallback draws, the sample() call: nothing but counters has to be kept, resumed, or agreed on
# between ranks. Streams 0–3 are lookahead.py's; renumbering any changes every run's draws.
_FALLBACK, _INIT, _DIRECTION = 4, 5, 6


# ----------------------------------------------------------------------------------------------------
# u ↔ t


def u_to_t(u: torch.Tensor, T: int, mapping: str = "round") -> torch.Tensor:
    """Timesteps in [0, T − 1] from u ∈ [0, 1]."""
    if mapping == "round":
        return torch.round(u * (T - 1)).long()
    return torch.floor(u * T).long().clamp(0, T - 1)


def u_edges(T: int, mapping: str = "round") -> np.ndarray:
    """The T + 1 edges in u of the intervals that map to t = 0 … T − 1."""
    if mapping == "round":
        inner = (np.arange(T - 1) + 0.5) / (T - 1)
    else:
        inner = np.arange(1, T) / T
    return np.concatenate([[0.0], inner, [1.0]])


def beta_pmf(alpha, beta, T: int, mapping: str = "round") -> np.ndarray:
    """P(t) for u ~ Beta(α, β), shape (..., T) for α, β of shape (...), float64. Each interval's mass is
    a difference of CDFs below u = ½ and of survival functions above it, so neither tail cancels."""
    a, b = np.asarray(alpha, np.float64)[..., None], np.asarray(beta, np.float64)[..., None]
    lo, hi = u_edges(T, mapping)[:-1], u_edges(T, mapping)[1:]
    mass = np.where(lo < 0.5, beta_distribution.cdf(hi, a, b) - beta_distribution.cdf(lo, a, b),
                    beta_distribution.sf(lo, a, b) - beta_distribution.sf(hi, a, b))
    mass = np.clip(mass, 0.0, None)
    return mass / mass.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------


def _positive_int(value, name: str, minimum: int = 1) -> int:
    require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum,
            f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _nonnegative(value, name: str) -> float:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0,
            f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@SAMPLERS.register("adaptive")
class AdaptiveSampler(PaperLookahead, BetaPolicyTerms, CreditPolicyGradient, BoundOptions, TimestepSampler):
    """Kim et al.'s learned sampler. Use it around the optimiser step of any training loop:

        t, w = sampler.sample(x0.shape[0], x0.device, x0=x0)
        with sampler.observe(model, x0):
            loss = (w * mse_per_sample(model, schedule, x0, t)).mean()
            loss.backward(); optimizer.step(); optimizer.zero_grad()

    On K − 1 of every K steps `observe` only counts. Options:
      reward          "credit" (default): each sample's first-order credit for its own timestep (credit.py),
                      standardised over the batch; "paper": eq. 14 as published, the faithful control,
                      whose reward carries almost no information about the sample's timestep (METHOD.md §7);
                      "variance" (needs unbiased=True): an importance sampler that lowers the variance of the
                      loop's loss estimate instead (see _loss_spread); its fixed point is p_t ∝ w_t·RMS(loss_t),
                      the rule of `loss-second-moment`, within the Beta family; "grad-variance" (needs
                      unbiased=True): the same for the variance of the optimiser's step, from each sample's
                      preconditioned gradient norm instead of its loss (see _gradient_spread).
      credit_strata   log-spaced strata of the bound estimate whose gradient the credit is measured against (64).
      credit_target   what the credit is the derivative of: "bound" (default: the variational bound),
                      "loss" (the simple ε-loss under uniform t, which sample quality follows more closely),
                      "objective" (the weighted loss the loop trains: Σ_t w_t E‖ε − ε̂‖² / T with the weighting
                      make_method pairs it with), or a weighting itself (make_weighting(...)), for the same in a
                      loop of one's own. With an objective each sample's credit is scaled by its loss weight.
      credit_delta    0 (default): the exact credit by forward-mode autodiff; > 0: a central difference
                      with this step along the unit-RMS direction (1e-4 is close to exact and cheaper).
      direction_every n: the credit's direction P∇L̂ reuses the bound probe's gradient for n updates (the
                      preconditioner applied afresh), so the probe's backward pass runs once per n updates
                      (None → 2 for the credit).
      uniform_mix     m: draw u uniformly with probability m, from the Beta otherwise (0). A floor that keeps
                      every timestep trained; the policy gradient uses the mixture's density.
      conditioned     False (default): one global Beta; True: π(· | x0) is a CNN (images) or MLP (vectors),
                      as in the paper.
      lr              sampler Adam learning rate; None → 6e-2 for the credit, 3e-2 for the variance; for the paper's
                      reward 1e-2 (linear, quad) or 1e-3 (cosine), as published. 0 freezes it.
      update_every    K, steps between sampler updates; None → 40 (the credit, the paper's reward), 20 (the
                      variance). Before 2026-12-07 the credit's were K = 20, lr 3e-2, direction_every 1.
      queue_size      rows of the feature-selection queue (20; the paper's reward only).
      subset_size     |S|, probes per sample for the paper's reward (3).
      entropy_coef    c_ent (1e-2).       grad_clip   sampler gradient-norm clip (1.0; None: off).
      mapping         "round" (t = round(u(T−1))) or "even" (t = ⌊uT⌋).
      common_noise    same (t, ε, x_t) before and after the update (True; False: fresh noise, as the reference).
      reward_baseline subtract a running mean of the reward (False).
      scan            the queue's probes: n strata, one random t each (50; not the paper's); None or n >= T:
                      every timestep, as the paper.
      probe_batch     images per probe forward pass (None: twice the training batch, which fits wherever
                      a training step does, since a pass without autograd keeps no activations).
      bins, variance  the t = 0 decoder's levels (256; 17 for the digits) and the reverse variance.
      eps             u is clamped into [eps, 1 − eps].   seed   the sampler's own random streams.
      image_shape     shape of one x0 (otherwise taken from the first batch).
      hidden_dim, hidden_depth   the policy MLP (256, 2).

    After each update `last_stats` holds what the trainer logs: the batch's α and β (mean, std; as the
    update saw them), `subset` (the timesteps whose terms made this reward), `reward_mean` (over all
    ranks), `policy_loss`, `entropy`, `skipped`, and the counters; `last_rewards` holds this rank's
    per-sample rewards. `subset` as an attribute is S itself: timesteps for the full scan, stratum
    indices for `scan=n`.
    """

    name = "adaptive"

    def __init__(self, schedule: NoiseSchedule, conditioned: bool = False, lr: float | None = None,
                 update_every: int | None = None, queue_size: int = 20, subset_size: int = 3, entropy_coef: float = 1e-2,
                 grad_clip: float | None = 1.0, mapping: str = "round", common_noise: bool = True,
                 reward_baseline: bool = False, scan: int | None = 50, probe_batch: int | None = None,
                 bins: int = 256,
                 variance: str = "fixed-large", eps: float = 1e-5, seed: int = 0,
                 image_shape: tuple[int, ...] | None = None, hidden_dim: int = 256, hidden_depth: int = 2,
                 unbiased: bool = False, reward: str = "credit", credit_strata: int = 64,
                 credit_delta: float = 0.0, uniform_mix: float = 0.0, credit_target: str = "bound",
                 direction_every: int | None = None):
        require(reward in REWARDS, f"unknown reward {reward!r}; valid choices: {', '.join(REWARDS)}")
        require(reward not in VARIANCE_REWARDS or (unbiased and not conditioned),
                f"reward={reward!r} lowers the variance of an unbiased estimate: it needs unbiased=True and one "
                "global Beta (conditioned=False)")
        self.reward = reward
        self.credit_strata = _positive_int(credit_strata, "credit_strata")
        self.credit_delta = check_credit_delta(credit_delta)
        self.credit_target = check_credit_target(credit_target)
        if direction_every is None:
            direction_every = CREDIT_DIRECTION_EVERY if reward == "credit" else 1
        self.direction = StaleGradient(_positive_int(direction_every, "direction_every"))
        require(isinstance(conditioned, bool), f"conditioned must be True or False, got {conditioned!r}")
        self.conditioned = conditioned
        super().__init__(schedule, unbiased)  # checks `has_pmf`, which needs `conditioned`
        T = self.T
        self.lr = _default_lr(reward, schedule) if lr is None else _nonnegative(lr, "lr")
        if update_every is None:
            update_every = {"paper": PAPER_K, "credit": CREDIT_K}.get(reward, VARIANCE_K)
        self.update_every = _positive_int(update_every, "update_every")
        self.queue_size = _positive_int(queue_size, "queue_size", 2)
        self.subset_size = _positive_int(subset_size, "subset_size")
        require(self.subset_size <= T, f"subset_size must be at most T={T}, got {subset_size}")
        self.entropy_coef = _nonnegative(entropy_coef, "entropy_coef")
        if grad_clip is not None:
            require(_nonnegative(grad_clip, "grad_clip") > 0, f"grad_clip must be > 0 or None, got {grad_clip!r}")
        self.grad_clip = grad_clip
        require(mapping in MAPPINGS, f"unknown mapping {mapping!r}; valid choices: {', '.join(MAPPINGS)}")
        self.mapping = mapping
        require(isinstance(common_noise, bool), f"common_noise must be True or False, got {common_noise!r}")
        require(isinstance(reward_baseline, bool), f"reward_baseline must be True or False, got {reward_baseline!r}")
        self.common_noise, self.reward_baseline = common_noise, reward_baseline
        n = T if scan is None else min(_positive_int(scan, "scan"), T)
        require(self.subset_size <= n, f"scan must be at least subset_size={self.subset_size}, got {scan}")
        self.scan = None if n == T else n
        self.probe_batch = None if probe_batch is None else _positive_int(probe_batch, "probe_batch")
        # Stratum j is [edges[j], edges[j+1]); widths are >= 1 because n <= T.
        self.edges = torch.linspace(0, T, n + 1, dtype=torch.float64).round().long()
        self.configure_bound(bins, variance)
        require(isinstance(eps, float) and 0 < eps < 0.5, f"eps must be a float in (0, 0.5), got {eps!r}")
        self.eps = eps
        require(isinstance(uniform_mix, (int, float)) and not isinstance(uniform_mix, bool) and 0 <= uniform_mix < 1,
                f"uniform_mix must be a number in [0, 1), got {uniform_mix!r}")
        self.uniform_mix = float(uniform_mix)
        self.seed = _positive_int(seed, "seed", 0)
        self.hidden_dim = _positive_int(hidden_dim, "hidden_dim")
        self.hidden_depth = _positive_int(hidden_depth, "hidden_depth", 0)
        if image_shape is not None:
            require(isinstance(image_shape, (tuple, list)) and len(image_shape) in (1, 3)
                    and all(isinstance(s, int) and s >= 1 for s in image_shape),
                    f"image_shape must be (C, H, W) or (D,) with positive sizes, got {image_shape!r}")
            image_shape = tuple(image_shape)
        self.image_shape = image_shape

        self.policy: nn.Module | None = None
        self.optimizer: torch.optim.Adam | None = None
        if not conditioned or image_shape is not None:
            self._build_policy(image_shape)
        self.queue = ChangeQueue(self.queue_size)
        self.subset = list(range(self.subset_size))  # S: feature indices (timesteps for the full scan)
        self.step = 0                # observe() calls completed
        self.updates = 0             # sampler updates attempted (indexes the random streams)
        self.skipped_updates = 0     # updates dropped for a non-finite reward, change or gradient
        self.baseline_ema, self.baseline_count = 0.0, 0
        self.last_stats: dict | None = None
        self.last_rewards: torch.Tensor | None = None  # this rank's per-sample rewards at the last update
        self.draws = 0               # sample() calls without a generator: they index this rank's own stream
        self._last_sample = None
        self._pmf_cache = self._ab_cache = None

    # ------------------------------------------------------------------------------------------------
    # The policy

    @property
    def has_pmf(self) -> bool:
        """Only the unconditioned sampler has one distribution over t; the conditioned one has one per x0."""
        return not self.conditioned

    def _build_policy(self, image_shape, device=None) -> None:
        # Initialised from the sampler's own seed, not the global RNG (which a trainer may seed per rank): every
        # rank builds the same policy, whenever it first sees a batch, with no collective.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._stream(_INIT, index=0).initial_seed())
            self.policy = make_policy(image_shape, self.conditioned, self.hidden_dim, self.hidden_depth).to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)

    def _ensure_policy(self, x0: torch.Tensor) -> None:
        """Build the policy from the first batch, and keep it (and Adam's moments) on the data's device."""
        shape = tuple(x0.shape[1:])
        if self.conditioned:
            require(len(shape) in (1, 3), f"the conditioned sampler takes images (B, C, H, W) or vectors (B, D), "
                                          f"got a batch of shape {tuple(x0.shape)}")
            if self.image_shape is None:
                self.image_shape = shape
            require(shape == self.image_shape, f"the sampler's policy was built for x0 of shape {self.image_shape}, "
                                               f"got {shape}")
        if self.policy is None:
            self._build_policy(self.image_shape, x0.device)
        elif next(self.policy.parameters()).device != x0.device:
            moments = self.optimizer.state_dict()
            self.policy.to(x0.device)
            self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
            self.optimizer.load_state_dict(moments)  # moves Adam's moments to the parameters' device

    def _policy_input(self, x0: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        if not self.conditioned:
            return None
        require(x0 is not None, "the conditioned adaptive sampler needs the batch: call sample(batch_size, device, "
                                "x0=x0), or build it with conditioned=False")
        require(x0.shape[0] == batch_size, f"x0 holds {x0.shape[0]} samples but batch_size is {batch_size}")
        return x0.detach()

    @torch.no_grad()
    def concentrations(self, x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, β) of the policy: one pair per row of x0 (conditioned), or one pair (unconditioned)."""
        if self.conditioned:
            require(x0 is not None, "the conditioned sampler's Beta depends on x0: pass a batch x0")
            self._ensure_policy(x0)
        return self._run_policy(x0)

    def _run_policy(self, x0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, β) for x0 (ignored by the global policy), with x0 cast to the policy's device and dtype."""
        if not self.conditioned:
            return self.policy()
        weight = next(self.policy.parameters())
        return self.policy(x0.detach().to(device=weight.device, dtype=weight.dtype))

    def probabilities(self, x0: torch.Tensor | None = None) -> torch.Tensor:
        """The pmf over t (float64, CPU): of the global Beta, or, for the conditioned sampler, averaged over
        the batch x0 (for plotting the density over training)."""
        if not self.conditioned and self._pmf_cache is not None and self._pmf_cache[0] == self.updates:
            return self._pmf_cache[1]
        alpha, beta = (v.double().cpu().numpy() for v in self.concentrations(x0))
        pmf = torch.from_numpy(beta_pmf(alpha, beta, self.T, self.mapping).mean(0))
        if self.uniform_mix:
            pmf = (1 - self.uniform_mix) * pmf + self.uniform_mix * torch.from_numpy(beta_pmf(1, 1, self.T, self.mapping))
        if not self.conditioned:
            self._pmf_cache = (self.updates, pmf)
        return pmf

    def _sampling_concentrations(self, policy_input) -> tuple[np.ndarray, np.ndarray]:
        """(α, β) in float64 for drawing. The global Beta changes only at an update, so its pair is kept
        until the next one: a plain step then runs no policy and reads nothing back from an accelerator."""
        if not self.conditioned and self._ab_cache is not None and self._ab_cache[0] == self.updates:
            return self._ab_cache[1]
        with torch.no_grad():  # the update recomputes the log-probabilities it differentiates
            pair = tuple(v.double().cpu().numpy() for v in self.concentrations(policy_input))
        if not self.conditioned:
            self._ab_cache = (self.updates, pair)
        return pair

    # ------------------------------------------------------------------------------------------------
    # Sampling

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None,
               x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t_b = map(clamp(F⁻¹_{Beta(α_b, β_b)}(v_b))), v_b ~ U(0, 1) from `generator`, or from the sampler's
        own stream for (seed, rank, call): a counter rather than a generator's state, so that a checkpoint
        written by rank 0 resumes every rank's stream. The draws are kept for the next `observe()`."""
        check_batch_size(batch_size)
        device = check_device(device)
        policy_input = self._policy_input(x0, batch_size)
        alpha, beta = self._sampling_concentrations(policy_input)
        if generator is None:
            generator = self._stream(_FALLBACK, distributed.rank(), index=self.draws)
            self.draws += 1
        u = draw_beta_mixture(alpha, beta, batch_size, generator, self.uniform_mix).clamp(self.eps, 1 - self.eps)
        t = u_to_t(u, self.T, self.mapping)
        self._last_sample = (policy_input, u)
        return t.to(device), self.importance_weights(t).to(device)

    # ------------------------------------------------------------------------------------------------
    # Observing an update

    @contextlib.contextmanager
    def observe(self, model, x0: torch.Tensor, optimizer: torch.optim.Optimizer | None = None):
        """Wrap one optimiser step of `model` (any callable model(x_t, t) -> ε, DDP included) on the batch x0
        that the last `sample()` drew timesteps for. On update steps: score the batch before the step, run
        the body, then update the policy (the paper's reward also probes after the step). If the body
        raises, nothing is updated or counted. `optimizer` gives the credit the preconditioner of the step
        (without it the credit assumes plain SGD).

        Under gradient accumulation, wrap every micro-step (inside Accelerate's `accumulate`, too): K counts
        observe() calls, so micro-steps. The credit and the variance rewards measure the micro-batch at the
        current weights, which a micro-step that does not step leaves as they are (its gradient joins the next
        real step), so they update on any micro-step (studies/accumulation_credit.py: the density moved the same
        with every update on a non-stepping micro-step as on a stepping one). The paper's reward measures the
        step itself: on a micro-step whose step Accelerate skips (the optimizer's
        gradient_state.sync_gradients is False) it does nothing and counts nothing, so for it K counts optimiser
        steps; in a loop of one's own, wrap only the micro-steps that step."""
        if self.reward == "paper" and not getattr(getattr(optimizer, "gradient_state", None), "sync_gradients", True):
            yield  # no step for the look-ahead to measure
            return
        if not self.is_update_step:
            yield
            self.step += 1
            return
        if self.reward != "paper":
            signal = {"credit": self._credit, "variance": self._loss_spread,
                      "grad-variance": self._gradient_spread}[self.reward]
            policy_input, u, credit = signal(model, x0, optimizer)
            yield
            self._learn_from_credit(policy_input, u, credit)
        else:
            probe = self._probe_before(model, x0)
            yield
            self._update(model, probe)
        self.step += 1

    def _take_last_sample(self, x0: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        check_observed_batch(None if self._last_sample is None else self._last_sample[1], x0)
        policy_input, u = self._last_sample
        self._last_sample = None
        self._ensure_policy(x0)
        return policy_input, u

    def _credit(self, model, x0: torch.Tensor, optimizer) -> tuple:
        """The first-order credit of every sample for its own timestep (credit.py), before the step."""
        policy_input, u = self._take_last_sample(x0)
        t = u_to_t(u, self.T, self.mapping).to(x0.device)
        weights = loop_weights(self.credit_target, self.loss_weighting, t,
                               self.importance_weights(t.cpu()) if self.unbiased else None)
        credit = first_order_credit(model, self.schedule, x0.detach(), t, optimizer,
                                    generator=self._stream(_BATCH_NOISE, distributed.rank()),
                                    strata=self.credit_strata, delta=self.credit_delta, bins=self.bins,
                                    variance=self.variance, target=self.credit_target, weighting=self.loss_weighting,
                                    loss_weights=weights, stale=self.direction)
        return policy_input, u, credit

    def _loss_spread(self, model, x0: torch.Tensor, optimizer=None) -> tuple:
        """r_b = (w_b·λ_b·ℓ_b)²: each sample's share of the second moment of the loop's loss estimate, with ℓ_b
        its ε-MSE (fresh noise, eval mode, no autograd), λ_b the loop's loss weight and w_b = 1/(T·p_b).

        Why this reward: the estimate Σ_b w_b λ_b ℓ_b / B is unbiased for every p, so only its variance depends
        on p, through V(p) = Σ_t λ_t² E[ℓ_t²] / (T² p_t). Its likelihood-ratio gradient is
        ∇V = −E_{t~p}[ (w_t λ_t ℓ_t)² ∇log p_t ], so raising log p where r_b is large lowers V; standardised
        over the batch, r_b is the advantage the credit's policy step takes. The optimum p_t ∝ λ_t·RMS(ℓ_t)
        is improved DDPM's importance-sampling rule (`loss-second-moment`): this learns it as a smooth Beta
        instead of a table of the last losses of every t."""
        policy_input, u = self._take_last_sample(x0)
        t = u_to_t(u, self.T, self.mapping).to(x0.device)
        noise = torch.randn(x0.shape, generator=self._stream(_BATCH_NOISE, distributed.rank())).to(x0)
        with torch.no_grad(), eval_mode(model):
            losses = mse_per_sample(unwrap(model), self.schedule, x0.detach(), t, noise)
        return policy_input, u, variance_rewards(losses, t, self.importance_weights(t.cpu()), self.loss_weighting)

    def _gradient_spread(self, model, x0: torch.Tensor, optimizer=None) -> tuple:
        """r_b = ‖P ∇_θ(w_b·λ_b·ℓ_b)‖², by one Hutchinson probe (credit.gradient_rewards): each sample's share
        of the second moment of the optimiser's step, P·Σ_b ∇(w_b λ_b ℓ_b) / B, rather than of the loss.

        Why: the step is unbiased for every p, and tr Cov(step) = Σ_t λ_t² E‖P∇ℓ_t‖² / (T² p_t) − const, the
        same form as _loss_spread's V(p) with the gradient's norm in place of the loss. Its optimum
        p_t ∝ λ_t·RMS‖P∇ℓ_t‖ is the variance-optimal importance sampler of SGD (Alain et al. 2015,
        Katharopoulos & Fleuret 2018), which differs from the loss rule wherever a timestep's loss is large
        but moves the weights little (or the other way round). Cost: one forward pass carrying tangents."""
        policy_input, u = self._take_last_sample(x0)
        t = u_to_t(u, self.T, self.mapping).to(x0.device)
        weights = loop_weights(self.loss_weighting, None, t, self.importance_weights(t.cpu()))
        noise = torch.randn(x0.shape, generator=self._stream(_BATCH_NOISE, distributed.rank())).to(x0)

        def losses(net):
            return mse_per_sample(net, self.schedule, x0.detach(), t, noise) * weights.to(x0)

        rewards = gradient_rewards(model, losses, optimizer, self._stream(_DIRECTION, distributed.rank()))
        return policy_input, u, rewards

    def _stream(self, stream: int, rank: int = 0, index: int | None = None) -> torch.Generator:
        """A CPU generator for one random stream at one index (default: this update), the same on every rank
        unless `rank` is given."""
        index = self.updates if index is None else index
        seed = np.random.SeedSequence([self.seed, index, stream, rank]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict:
        return {
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "policy": None if self.policy is None else {k: v.cpu() for k, v in self.policy.state_dict().items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "queue": self.queue.state_dict(),
            "subset": list(self.subset),
            "step": self.step, "updates": self.updates, "skipped_updates": self.skipped_updates,
            "baseline": [self.baseline_ema, self.baseline_count],
            "draws": self.draws,
            "direction": self.direction.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        check_state(state, self.state_dict(), self.name, optional={"draws", "direction"})  # absent from old checkpoints
        features = state["queue"]["features"]
        require(features.numel() == 0 or features.shape[1] == len(self.edges) - 1,
                f"the checkpoint's sampler scanned {features.shape[1]} probes, this one {len(self.edges) - 1}: "
                f"use the same T and scan")
        require(all(0 <= j < len(self.edges) - 1 for j in state["subset"]) and len(state["subset"]) == self.subset_size,
                f"the checkpoint's subset {state['subset']} does not fit subset_size={self.subset_size}")
        if state["image_shape"] is not None:
            shape = tuple(state["image_shape"])
            require(self.image_shape is None or self.image_shape == shape or not self.conditioned,
                    f"the checkpoint's policy is for x0 of shape {shape}, this sampler's for {self.image_shape}")
            self.image_shape = shape
        if state["policy"] is not None:
            device = None if self.policy is None else next(self.policy.parameters()).device
            self._build_policy(self.image_shape, device)
            require(set(state["policy"]) == set(self.policy.state_dict()),
                    "the checkpoint's sampler policy does not match this one (conditioned, image shape, hidden sizes)")
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.queue.load_state_dict(state["queue"])
        self.subset = [int(j) for j in state["subset"]]
        self.step, self.updates = int(state["step"]), int(state["updates"])
        self.skipped_updates = int(state["skipped_updates"])
        self.baseline_ema, self.baseline_count = float(state["baseline"][0]), int(state["baseline"][1])
        self.draws = int(state.get("draws", 0))  # absent from checkpoints written before 2026-11-25
        self.direction.load_state_dict(state.get("direction", {"age": 0, "grads": None}))  # before 2026-12-07
        self._last_sample, self._pmf_cache, self._ab_cache = None, None, None

    def frozen_spec(self, final: dict, spec: str, weighting: str) -> str | None:
        """The method ("sampler+weighting") of a fixed Beta at this policy's final (α, β) (`final["alpha"]`,
        `final["beta"]`, as the bench records them), trained as this one was: the same `weighting`, the same
        uniform floor (`mix`), and importance weights if it has them (`unbiased`). None for a policy with no
        one final Beta (conditioned on x0).

        The floor was left out until 2026-12-05: for an importance sampler that is another control, whose
        weights 1/(T·p_t) are unbounded where the Beta's tail is thin (adaptive-variance's final Beta(0.68,
        3.2) alone has E[w²] ≈ 83,000 per draw; with its 5 % floor, 5.2)."""
        if final.get("alpha") is None or final.get("beta") is None:
            return None
        mix = f",mix={self.uniform_mix:g}" if self.uniform_mix else ""
        unbiased = ",unbiased=True" if self.unbiased else ""
        return f"beta:a={final['alpha']:.6g},b={final['beta']:.6g}{mix}{unbiased}+{weighting}"

    def __repr__(self) -> str:
        scan = "full" if self.scan is None else self.scan
        if self.reward in VARIANCE_REWARDS:
            mix = f", uniform_mix={self.uniform_mix}" if self.uniform_mix else ""
            return (f"AdaptiveSampler(T={self.T}, reward={self.reward!r}, lr={self.lr}, K={self.update_every}{mix}, "
                    f"unbiased=True, mapping={self.mapping!r})")
        if self.reward == "credit":
            mix = f", uniform_mix={self.uniform_mix}" if self.uniform_mix else ""
            # a frozen policy (lr = 0) never uses its credit: what it trains does not depend on how it is taken
            mix += credit_repr(self.credit_delta) if self.lr else ""
            mix += f", credit_target={target_name(self.credit_target)!r}" if self.credit_target != "bound" else ""
            mix += f", direction_every={self.direction.every}" if self.lr and self.direction.every != 1 else ""
            mix += ", unbiased=True" if self.unbiased else ""
            return (f"AdaptiveSampler(T={self.T}, reward='credit', conditioned={self.conditioned}, lr={self.lr}, "
                    f"K={self.update_every}, credit_strata={self.credit_strata}{mix}, mapping={self.mapping!r})")
        return (f"AdaptiveSampler(T={self.T}, reward='paper', conditioned={self.conditioned}, lr={self.lr}, "
                f"K={self.update_every}, |S|={self.subset_size}, queue={self.queue_size}, scan={scan}, "
                f"mapping={self.mapping!r})")
