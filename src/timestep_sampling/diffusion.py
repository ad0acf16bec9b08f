"""The DDPM forward process, its posterior, the model's reverse step, and the per-timestep terms of
the variational bound in bits/dim (METHOD.md sections 1 and 2).

`model` everywhere is any callable `model(x_t, t) -> eps` (ε-prediction); a diffusers model, whose
output holds ε in `.sample`, works as it is.
"""
from __future__ import annotations

import math

import torch

from .errors import require
from .schedule import NoiseSchedule

VARIANCES = ("fixed-large", "fixed-small")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def predict_eps(model, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε_θ(x_t, t) from a plain callable or a diffusers model (UNet2DModel returns an output object)."""
    out = model(xt, t)
    return out if isinstance(out, torch.Tensor) else out.sample


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε."""
    abar = schedule.at("alphas_cumprod", t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def predict_x0(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    abar = schedule.at("alphas_cumprod", t, xt)
    return (xt - (1 - abar).sqrt() * eps) / abar.sqrt()


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0)."""
    mean = schedule.at("posterior_mean_coef_x0", t, xt) * x0 + schedule.at("posterior_mean_coef_xt", t, xt) * xt
    return mean, schedule.at("posterior_variance", t, xt)


def model_log_variance(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor, variance: str) -> torch.Tensor:
    """log σ_t². fixed-large uses β_t, except at t = 0 where (as in Ho et al.'s code) it uses β̃_1,
    since β̃_0 = 0 would make the decoder a point mass."""
    require(variance in VARIANCES, f"unknown variance {variance!r}; valid choices: {', '.join(VARIANCES)}")
    if variance == "fixed-large":
        var = schedule.at("betas", t, like)
        var = torch.where(t.reshape(var.shape) == 0, schedule.posterior_variance[1].item(), var)
    else:
        # β̃_0 = 0: take β̃_1 at t = 0 for the same reason.
        var = schedule.at("posterior_variance", t.clamp(min=1), like)
    return var.log()


def p_mean_variance(schedule: NoiseSchedule, eps: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                    variance: str = "fixed-large", clip: bool = True):
    """Mean and log-variance of p_θ(x_{t-1} | x_t), and the x̂_0 behind the mean.

    The mean is the posterior mean at x̂_0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t, optionally clipped to the data
    range [-1, 1] (any function of x_t gives a valid model, so the bound stays a bound).
    """
    x0_hat = predict_x0(schedule, xt, t, eps)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
    mean, _ = q_posterior(schedule, x0_hat, xt, t)
    return mean, model_log_variance(schedule, t, xt, variance), x0_hat


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b, evaluated on the side of the tail where it does not cancel."""
    upper = a > 0
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    return torch.log((torch.special.ndtr(hi) - torch.special.ndtr(lo)).clamp(min=1e-12))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int) -> torch.Tensor:
    """−log P(x) elementwise, in nats, for data on `bins` evenly spaced levels in [-1, 1].

    Each level owns the interval of half-width 1/(bins−1) around it; the two end levels own the tails.
    """
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    lo, hi = (x - mean - half) * inv_std, (x - mean + half) * inv_std
    log_prob = torch.where(
        x < -1 + half / 2, torch.special.log_ndtr(hi),
        torch.where(x > 1 - half / 2, torch.special.log_ndtr(-lo), _log_ndtr_diff(lo, hi)))
    return -log_prob


def vlb_terms_from_eps(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                       eps: torch.Tensor, *, bins: int = 256, variance: str = "fixed-large",
                       clip: bool = True) -> torch.Tensor:
    """L_t per sample in bits/dim, given the model's prediction `eps` at (x_t, t).

    t ≥ 1: KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)); t = 0: the decoder's −log p_θ(x_0|x_t) over `bins` levels.
    """
    mean, log_var, _ = p_mean_variance(schedule, eps, xt, t, variance, clip)
    true_mean, true_var = q_posterior(schedule, x0, xt, t)
    # β̃_0 = 0; the KL is unused at t = 0, clamp so it stays finite.
    kl = mean_flat(normal_kl(true_mean, true_var.clamp(min=1e-20).log(), mean, log_var))
    nll = mean_flat(discretized_gaussian_nll(x0, mean, 0.5 * log_var, bins))
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def vlb_terms(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor | None = None, **options) -> torch.Tensor:
    """L_t(x0) per sample in bits/dim for any batch of (x0, t): one forward pass of the model.

    Pass `noise` to fix ε (common random numbers); options as in `vlb_terms_from_eps`.
    """
    if noise is None:
        noise = torch.randn_like(x0)
    xt = q_sample(schedule, x0, t, noise)
    return vlb_terms_from_eps(schedule, x0, xt, t, predict_eps(model, xt, t), **options)


def prior_bpd(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per sample in bits/dim; it has no parameters."""
    t = torch.full((x0.shape[0],), schedule.T - 1, device=x0.device, dtype=torch.long)
    abar = schedule.at("alphas_cumprod", t, x0)
    kl = normal_kl(abar.sqrt() * x0, (1 - abar).log().expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
    return mean_flat(kl) / math.log(2.0)


def mse_per_sample(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """The "simple" DDPM loss ‖ε − ε_θ(x_t, t)‖², averaged over pixels, one value per sample."""
    if noise is None:
        noise = torch.randn_like(x0)
    return mean_flat((predict_eps(model, q_sample(schedule, x0, t, noise), t) - noise) ** 2)
