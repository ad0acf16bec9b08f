"""The adaptive sampler's reward="paper" (adaptive.py): eq. 14 of Kim et al. as published, the faithful
control, whose reward carries almost no information about t_b (METHOD.md §7):

    before θ_k:   L_t'(x0_b) for t' ∈ S and every sample b;  L_j(x̃0) for one image x̃0 at every probe j
    (the user's optimiser step θ_k → θ_{k+1})
    after θ_{k+1}: the same terms, on the same (t, ε, x_t) when common_noise=True
    reward_b   = Σ_{t'∈S} [L_t'(x0_b; θ_k) − L_t'(x0_b; θ_{k+1})]                         (eq. 14)
    loss(φ)    = −mean_b[ log π_φ(u_b | x0_b) (reward_b − baseline) ] − c_ent · mean_b H(Beta_b)   (eq. 13)
    φ          ← Adam(φ, clip_norm(mean over ranks of ∇_φ loss, grad_clip))
    queue      ← push(Δ = before − after on x̃0's probes, target Σ_j w_j Δ_j);  S = top-|S| F-statistic

L_t is the bound's term in bits/dim (diffusion.vlb_terms_from_eps): the KL for t ≥ 1, the decoder's
discretized NLL over `bins` levels at t = 0. The probes run in eval mode (no dropout), without autograd,
batched: B·|S| reward probes plus the scan's, in chunks of `probe_batch` (2B by default).

The scan. The paper probes every t (`scan=None`, or any n >= T): T images before and T after each
update, which alone cost about 4 training steps at T = 1000 and batch 128 on the digits (1.20x in all
at K = 40, against 1.10x with 50 strata). The default `scan=50` probes 50 strata instead: the timesteps are
cut into n equal-width intervals [e_j, e_{j+1}) and each update draws one t uniformly inside every
stratum (the same draw on every rank). Feature j of a queue row is then "the change at a random t of
stratum j", its target Σ_j (e_{j+1} − e_j) Δ_j is an unbiased estimate of the full-T total, S holds
stratum indices, and the reward probes each chosen stratum at this update's t. With n = T every
stratum is one timestep and this is exactly the full scan. benchmarks/adaptive_cost.py measures both:
the S a 50-strata scan picks tracks the next update's total change at least as well as the full
scan's S (20 noisy rows cannot rank 1000 features as well as 50).

Improvements over the reference implementation, each an option: common random numbers
(`common_noise`), eval-mode probes without autograd in batches of `probe_batch`, a running-mean reward
baseline (`reward_baseline`), the stratified scan (`scan`), a queue and S that are identical on every
rank without shared memory, and a guard that keeps non-finite rewards and gradients away from the
policy and the queue.

The host (AdaptiveSampler) holds the options and counters named here, `_stream`, `_take_last_sample` and
`_policy_step`; this mixin holds the probes, the reward and the queue's bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import distributed
from ..diffusion import predict_eps, q_sample, vlb_terms_from_eps
from .credit import eval_mode, unwrap

# The adaptive sampler's random streams 0–3 (it numbers its own from 4).
_PICK, _STRATA, _SCAN_NOISE, _BATCH_NOISE = range(4)
BASELINE_DECAY = 0.9  # the reward baseline is an exponential moving average: rewards shrink as training goes on


@dataclass
class Probe:
    """What `observe` measured before the update, kept for after it."""

    x0: torch.Tensor           # (B·|S| + n_local, ...) the clean inputs of the probe batch
    t: torch.Tensor            # their timesteps: S repeated per sample, then this rank's scan timesteps
    noise: torch.Tensor
    before: torch.Tensor       # L_t in bits/dim, float64
    batch: int                 # B: the first B·|S| rows are the reward probes
    subset_t: list[int]        # the timesteps of S at this update
    policy_input: torch.Tensor | None
    u: torch.Tensor            # the draws behind the batch's timesteps, float64
    generators: tuple          # (batch, scan) noise generators, continued for fresh noise


class PaperLookahead:
    """Mixin: the paper's look-ahead reward (probe before the step, probe after, reward the change on S),
    the stratified scan that feeds the queue, and the reward baseline."""

    def _probe_timesteps(self) -> torch.Tensor:
        """This update's probe of each stratum: one uniform t in [edges[j], edges[j+1])."""
        lo, width = self.edges[:-1], self.edges[1:] - self.edges[:-1]
        v = torch.rand(len(lo), generator=self._stream(_STRATA), dtype=torch.float64)
        return lo + (v * width).long().clamp(max=width - 1)

    def _local_probes(self) -> torch.Tensor:
        """The indices of the scan probes this rank computes: a contiguous share, gathered in rank order."""
        return torch.tensor_split(torch.arange(len(self.edges) - 1), distributed.world_size())[distributed.rank()]

    def _scan_image(self, x0: torch.Tensor) -> torch.Tensor:
        """One image of rank 0's batch, the same on every rank."""
        # Rank 0's draw is the one that counts; the modulo only keeps other ranks' (overwritten) slice valid.
        index = int(torch.randint(x0.shape[0], (1,), generator=self._stream(_PICK))) % x0.shape[0]
        return distributed.broadcast_(x0[index:index + 1].detach().clone(), src=0)

    def _noise(self, generators, shape, n_subset: int, local: torch.Tensor, device, dtype) -> torch.Tensor:
        """ε for the probe batch: the reward probes' from a per-rank stream, the scan's from a shared
        stream drawn whole and sliced, so a timestep's noise does not depend on the number of ranks."""
        batch_gen, scan_gen = generators
        eps_batch = torch.randn((n_subset,) + shape, generator=batch_gen)
        eps_scan = torch.randn((len(self.edges) - 1,) + shape, generator=scan_gen)[local]
        return torch.cat([eps_batch, eps_scan]).to(device=device, dtype=dtype)

    def _terms(self, model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: int) -> torch.Tensor:
        """L_t(x0) in bits/dim (float64) for the whole probe batch, in eval mode, without autograd, in forward
        passes of `probe_batch` images (2 x the training batch `batch` by default). Chunks rather than one
        pass: on a CPU a 32x32 UNet's time per image nearly doubles from 64 to 292 images at once (cache),
        and on an accelerator one pass over B|S| + T images can exceed the memory a training step needs."""
        net = unwrap(model)  # no DDP hooks or syncs
        chunk = self.probe_batch or 2 * batch
        with torch.no_grad(), eval_mode(model):
            xt = q_sample(self.schedule, x0, t, noise)
            eps = torch.cat([predict_eps(net, x, s) for x, s in zip(xt.split(chunk), t.split(chunk))])
            return vlb_terms_from_eps(self.schedule, x0.double(), xt.double(), t, eps.double(),
                                      bins=self.bins, variance=self.variance)

    def _probe_before(self, model, x0: torch.Tensor) -> Probe:
        policy_input, u = self._take_last_sample(x0)
        x0 = x0.detach()
        B, shape = x0.shape[0], tuple(x0.shape[1:])
        picks = self._probe_timesteps()
        local = self._local_probes()
        subset_t = picks[self.subset]
        scan_image = self._scan_image(x0)
        inputs = torch.cat([x0.repeat((len(subset_t),) + (1,) * len(shape)),
                            scan_image.expand((len(local),) + shape)])
        t = torch.cat([subset_t.repeat_interleave(B), picks[local]]).to(x0.device)
        generators = (self._stream(_BATCH_NOISE, distributed.rank()), self._stream(_SCAN_NOISE))
        noise = self._noise(generators, shape, B * len(subset_t), local, x0.device, x0.dtype)
        before = self._terms(model, inputs, t, noise, B)
        return Probe(inputs, t, noise, before, B, subset_t.tolist(), policy_input, u, generators)

    def _update(self, model, probe: Probe) -> None:
        """The after-probe, the reward, one policy step, and the queue (Algorithm 1, step 3)."""
        noise = probe.noise
        if not self.common_noise:
            noise = self._noise(probe.generators, tuple(probe.x0.shape[1:]), probe.batch * len(probe.subset_t),
                                self._local_probes(), noise.device, noise.dtype)
        change = probe.before - self._terms(model, probe.x0, probe.t, noise, probe.batch)
        n_reward = probe.batch * len(probe.subset_t)
        reward = change[:n_reward].view(len(probe.subset_t), probe.batch).sum(0)
        scan_change = distributed.all_gather_cat(change[n_reward:]).cpu()
        self.last_rewards = reward.detach().cpu()
        target = (scan_change * (self.edges[1:] - self.edges[:-1])).sum()

        baseline = self.baseline
        stats, applied = self._policy_step(probe.policy_input, probe.u, reward - baseline,
                                           finite=bool(torch.isfinite(scan_change).all()))
        stats["reward_mean"] += baseline  # the step saw r − baseline; log the reward itself
        if applied:
            self.queue.push(scan_change, target)
            selected = self.queue.select(self.subset_size)
            self.subset = selected if selected is not None else list(range(self.subset_size))
            self.baseline_ema = BASELINE_DECAY * self.baseline_ema + (1 - BASELINE_DECAY) * stats["reward_mean"]
            self.baseline_count += 1
        else:
            self.skipped_updates += 1
        self.updates += 1
        self.last_stats = {**stats, "subset": probe.subset_t, "skipped": not applied,
                           "skipped_updates": self.skipped_updates, "updates": self.updates, "step": self.step}

    @property
    def baseline(self) -> float:
        """The bias-corrected running mean of the reward (0 before the first update, or when switched off)."""
        if not self.reward_baseline or self.baseline_count == 0:
            return 0.0
        return self.baseline_ema / (1 - BASELINE_DECAY ** self.baseline_count)
