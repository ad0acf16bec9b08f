"""The bound's terms against closed forms computed independently of the library."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from scipy import stats

from timestep_sampling import NoiseSchedule
from timestep_sampling.diffusion import (discretized_gaussian_nll, p_mean_variance, prior_bpd, q_posterior,
                                         q_sample, vlb_terms)


class OptimalGaussianEps:
    """The exact minimiser of the ε-MSE for data x0 ~ N(0, s²I): ε̂ = E[ε | x_t] = b/(a²s² + b²) · x_t."""

    def __init__(self, schedule, s2):
        self.schedule, self.s2 = schedule, s2

    def __call__(self, xt, t):
        abar = self.schedule.at("alphas_cumprod", t, xt).double()
        return ((1 - abar).sqrt() / (abar * self.s2 + 1 - abar) * xt.double()).to(xt.dtype)


@pytest.mark.parametrize("variance", ["fixed-large", "fixed-small"])
@pytest.mark.parametrize("t_value", [1, 10, 200, 900])
def test_kl_terms_match_closed_form_for_gaussian_data(variance, t_value):
    schedule, s2, n = NoiseSchedule("linear", T=1000), 0.3, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64) * math.sqrt(s2)
    t = torch.full((n,), t_value)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    terms = vlb_terms(OptimalGaussianEps(schedule, s2), schedule, x0, t, noise, variance=variance, clip=False)

    # E[KL] = ½[log(σ²/β̃) + β̃/σ² − 1 + c₀² Var(x0 | x_t)/σ²],  Var(x0 | x_t) = s² b² / (a² s² + b²)
    beta, abar, abar_prev = (float(v[t_value]) for v in (schedule.betas, schedule.alphas_cumprod,
                                                          schedule.alphas_cumprod_prev))
    post_var = beta * (1 - abar_prev) / (1 - abar)
    sigma2 = beta if variance == "fixed-large" else post_var
    c0 = beta * math.sqrt(abar_prev) / (1 - abar)
    cond_var = s2 * (1 - abar) / (abar * s2 + 1 - abar)
    expected = 0.5 * (math.log(sigma2 / post_var) + post_var / sigma2 - 1 + c0**2 * cond_var / sigma2) / math.log(2)
    assert terms.mean().item() == pytest.approx(expected, rel=0.02, abs=1e-9)


@pytest.mark.parametrize("bins", [17, 256])
def test_decoder_term_matches_scipy(bins):
    half = 1 / (bins - 1)
    levels = torch.linspace(-1, 1, bins, dtype=torch.float64)
    x = levels[[0, 1, bins // 2, bins - 2, bins - 1]]
    mean = torch.tensor([-0.9, 0.3, 0.0, 2.5, 0.95], dtype=torch.float64)
    log_scale = torch.log(torch.tensor([0.05, 0.2, 0.01, 0.3, 0.1], dtype=torch.float64))
    ours = discretized_gaussian_nll(x, mean, log_scale, bins).numpy()
    sd = log_scale.exp().numpy()
    xs, ms = x.numpy(), mean.numpy()
    upper = np.where(np.isclose(xs, 1), np.inf, xs + half)
    lower = np.where(np.isclose(xs, -1), -np.inf, xs - half)
    expected = -np.log(stats.norm.cdf(upper, ms, sd) - stats.norm.cdf(lower, ms, sd))
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_decoder_term_is_used_at_t0_and_counts_bins():
    schedule = NoiseSchedule("linear", T=1000)
    x0 = torch.full((2, 1, 4, 4), 0.5)
    perfect = lambda xt, t: (xt - schedule.at("alphas_cumprod", t, xt).sqrt() * x0) / (
        1 - schedule.at("alphas_cumprod", t, xt)).sqrt()
    t = torch.zeros(2, dtype=torch.long)
    coarse = vlb_terms(perfect, schedule, x0, t, bins=17)
    fine = vlb_terms(perfect, schedule, x0, t, bins=256)
    # A perfect predictor at t = 0 puts almost all mass in x0's bin: about 0 bits for 17 wide bins,
    # more for 256 narrow bins whose width is comparable to σ_0.
    assert (coarse < 1e-3).all() and (fine > coarse).all()


def test_prior_term_matches_formula():
    schedule = NoiseSchedule("linear", T=1000)
    x0 = torch.tensor([[-1.0, 0.0, 0.5, 1.0]], dtype=torch.float64)
    abar = float(schedule.alphas_cumprod[-1])
    per_dim = 0.5 * (-math.log(1 - abar) + (1 - abar) + abar * x0.numpy() ** 2 - 1)
    assert prior_bpd(schedule, x0).item() == pytest.approx(per_dim.mean() / math.log(2), rel=1e-9)


@pytest.mark.parametrize("t_value", [0, 1, 500, 999])
@pytest.mark.parametrize("clip", [False, True])
def test_reverse_step_matches_diffusers(t_value, clip):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                        clip_sample=clip)
    schedule = NoiseSchedule("linear", T=1000)
    g = torch.Generator().manual_seed(1)
    xt, eps = torch.randn(4, 1, 8, 8, generator=g) * 1.5, torch.randn(4, 1, 8, 8, generator=g)
    t = torch.full((4,), t_value)
    prev = ref.step(eps, t_value, xt, generator=torch.Generator().manual_seed(7)).prev_sample
    mean, _, _ = p_mean_variance(schedule, eps, xt, t, variance="fixed-small", clip=clip)
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(7))
    std = schedule.at("posterior_variance", t, xt).sqrt() if t_value > 0 else 0.0
    # diffusers forms β_t = 1 − ᾱ_t/ᾱ_{t-1} in float32, which loses about 3 digits at t = 1 where
    # ᾱ_t ≈ 1; our coefficients come from float64. Hence the looser tolerance at small t.
    assert torch.allclose(prev, mean + std * z, atol=1e-3 if t_value <= 1 else 1e-5)


def test_posterior_is_consistent_with_forward_process():
    """q(x_{t-1}|x_t,x0) must have the marginal q(x_{t-1}|x0) when x_t ~ q(x_t|x0): check the mean."""
    schedule = NoiseSchedule("cosine", T=200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((100_000, 1), 0.7, dtype=torch.float64)
    t = torch.full((len(x0),), 50)
    xt = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    mean, var = q_posterior(schedule, x0, xt, t)
    x_prev = mean + var.sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    abar_prev = float(schedule.alphas_cumprod[49])
    assert x_prev.mean().item() == pytest.approx(math.sqrt(abar_prev) * 0.7, abs=5e-3)
    assert x_prev.var().item() == pytest.approx(1 - abar_prev, rel=2e-2)
