"""The policy-gradient half of a learned Beta sampler, shared by the discrete adaptive sampler (adaptive.py)
and the rectified-flow one (flow_adaptive.py): drawing u from a Beta (or a Beta mixed with a uniform floor)
driven by any torch.Generator, and one REINFORCE step of the policy

    loss(φ) = −mean_b[ log π_φ(u_b) A_b ] − c_ent · mean_b H(Beta_b)

with the gradient and every statistic averaged over ranks in one all-reduce, so that every rank keeps the
same policy. With the credit (credit.py) the advantage A_b is the credit standardised over the whole batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special
from torch import nn

from .. import distributed
from .base import with_uniform_floor

# The learned Beta samplers' defaults (adaptive.py says why): the credit updates every K = 40 steps at Adam 6e-2
# with the bound probe's gradient kept for 2 updates; the variance rewards every 20 at 3e-2.
CREDIT_K, CREDIT_LR, CREDIT_DIRECTION_EVERY = 40, 6e-2, 2
VARIANCE_K, VARIANCE_LR = 20, 3e-2


def beta_icdf(alpha, beta, v: torch.Tensor) -> torch.Tensor:
    """u = F⁻¹_{Beta(α, β)}(v) in float64 on the CPU: inverse-CDF sampling, exact and driven by a uniform
    v from any torch.Generator (torch.distributions.Beta cannot take a generator)."""
    a = np.asarray(alpha, np.float64)
    b = np.asarray(beta, np.float64)
    return torch.from_numpy(np.asarray(special.betaincinv(a, b, v.double().cpu().numpy()), np.float64))


def draw_beta_mixture(alpha, beta, n: int, generator: torch.Generator, uniform_mix: float = 0.0) -> torch.Tensor:
    """n draws of u (float64, CPU): from Beta(α, β) by the inverse CDF, or, with probability `uniform_mix`,
    from U(0, 1). The mixture takes two more uniforms per draw, and only when it is on, so that without one
    a generator's stream is what it always was."""
    v = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return with_uniform_floor(beta_icdf(alpha, beta, v), uniform_mix, generator)


class CreditPolicyGradient:
    """Mixin: the policy step and the credit's advantage. The host class holds `policy`, `optimizer`,
    `entropy_coef`, `grad_clip`, `update_every` (K), the counters `step`, `updates`, `skipped_updates`,
    and `_policy_terms(policy_input, draws) -> (log π(draws), entropy, {statistic: scalar tensor})`
    (BetaPolicyTerms for a Beta; band_policy.py for a softmax over bands of t)."""

    @property
    def is_update_step(self) -> bool:
        """Whether the next `observe()` updates the sampler (every K-th step, starting with the first)."""
        return self.step % self.update_every == 0

    def _learn_from_credit(self, policy_input, u: torch.Tensor, credit: torch.Tensor) -> None:
        """One policy step on the credit, standardised over the whole batch (all ranks): the advantage."""
        moments = torch.tensor([credit.sum(), (credit ** 2).sum(), len(credit)], dtype=torch.float64)
        total, squares, n = distributed.all_reduce_sum_(moments).tolist()
        mean = total / n
        std = math.sqrt(max(squares / n - mean ** 2, 0.0))
        advantage = (credit - mean) / std if std > 0 else torch.zeros_like(credit)
        self.last_rewards = credit
        stats, applied = self._policy_step(policy_input, u, advantage, finite=math.isfinite(mean + std))
        stats["reward_mean"], stats["reward_std"] = mean, std
        if not applied:
            self.skipped_updates += 1
        self.updates += 1
        self.last_stats = {**stats, "skipped": not applied, "skipped_updates": self.skipped_updates,
                           "updates": self.updates, "step": self.step}

    def _policy_step(self, policy_input, u: torch.Tensor, advantage: torch.Tensor,
                     finite: bool) -> tuple[dict, bool]:
        """loss = −mean_b log π(u_b | x0_b) A_b − c_ent mean_b H_b; gradients and diagnostics are averaged over
        ranks in one all-reduce, then clipped; one optimiser step unless anything is non-finite. The host's
        `_policy_terms(policy_input, u)` gives the log-probabilities, the entropy and its own statistics."""
        params = list(self.policy.parameters())
        device = params[0].device
        log_prob, entropy, extra = self._policy_terms(policy_input, u)
        advantage = advantage.to(device)
        loss = -(log_prob * advantage).mean() - self.entropy_coef * entropy.mean()
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()

        bad = not (finite and bool(torch.isfinite(advantage).all()) and bool(torch.isfinite(loss)))
        names = ("reward_mean", "policy_loss", "entropy", *extra)
        diagnostics = torch.stack([torch.tensor(float(bad), dtype=torch.float64, device=device), advantage.mean(),
                                   loss, entropy.mean(), *extra.values()]).detach().double()
        flat = torch.cat([p.grad.flatten().double() for p in params] + [diagnostics])
        distributed.all_reduce_mean_(flat)  # one collective for the gradient and every statistic
        grads, diagnostics = flat[:-len(diagnostics)], flat[-len(diagnostics):]
        stats = self._summarise(dict(zip(names, diagnostics[1:].tolist())))
        if diagnostics[0] > 0 or not bool(torch.isfinite(grads).all()):
            self.optimizer.zero_grad(set_to_none=False)
            return stats, False
        offset = 0
        for p in params:
            p.grad.copy_(grads[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        self._pmf_cache = self._ab_cache = None
        return stats, True

    def _summarise(self, stats: dict) -> dict:
        """The rank-averaged statistics as logged (a hook)."""
        return stats


class BetaPolicyTerms:
    """Mixin: `_policy_terms` for a Beta policy (`_run_policy(policy_input) -> (α, β)`), with the uniform
    floor `uniform_mix` in the density, and the batch's α and β (mean, std) as statistics."""

    def _policy_terms(self, policy_input, u: torch.Tensor):
        alpha, beta = (v.double() for v in self._run_policy(policy_input))
        policy = torch.distributions.Beta(alpha, beta, validate_args=False)
        log_prob, entropy = policy.log_prob(u.to(alpha.device)), policy.entropy()
        if self.uniform_mix:  # the draw's density is the mixture's: m + (1 − m)·Beta(u)
            log_prob = torch.logaddexp(torch.tensor(math.log(self.uniform_mix), dtype=log_prob.dtype,
                                                    device=alpha.device),
                                       math.log1p(-self.uniform_mix) + log_prob)
        extra = {"alpha_mean": alpha.mean(), "alpha_sq": (alpha ** 2).mean(),
                 "beta_mean": beta.mean(), "beta_sq": (beta ** 2).mean()}
        return log_prob, entropy, extra

    def _summarise(self, stats: dict) -> dict:
        stats["alpha_std"] = math.sqrt(max(stats.pop("alpha_sq") - stats["alpha_mean"] ** 2, 0.0))
        stats["beta_std"] = math.sqrt(max(stats.pop("beta_sq") - stats["beta_mean"] ** 2, 0.0))
        return stats
