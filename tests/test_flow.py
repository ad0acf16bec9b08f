"""Rectified flow against closed forms on Gaussian data x0 ~ N(μ, Σ), where the optimal velocity field is
known exactly: the loss at the optimum, the ODE likelihood against the Gaussian's own, Hutchinson against
the exact trace, dequantisation, Euler sampling, and clear errors."""
import math

import pytest
import torch

from timestep_sampling import UserError
from timestep_sampling.flow import (RectifiedFlow, euler_sample, flow_elbo_terms, flow_mse_per_sample, flow_xt,
                                    ode_likelihood)

SHAPE = (1, 4, 4)  # D = 16, as images so that flattening is exercised
D = 16


class GaussianVelocity:
    """The optimal v̂(x, t) = E[ε − x0 | x_t] for x0 ~ N(μ, Σ), called as model(x_t, t·scale).

    x_t ~ N((1 − t)μ, S_t) with S_t = (1 − t)²Σ + t²I and Cov(v, x_t) = tI − (1 − t)Σ, so
    v̂ = −μ + (tI − (1 − t)Σ) S_t⁻¹ (x − (1 − t)μ); in Σ's eigenbasis (eigenvalues λ) every matrix is diagonal.
    """

    def __init__(self, mu, cov, scale=1000.0):
        self.mu, self.cov, self.scale = mu, cov, scale
        self.lam, self.Q = torch.linalg.eigh(cov)

    def coefficient(self, t):  # (B, D): the eigenvalues of (tI − (1 − t)Σ) S_t⁻¹
        t = t[:, None]
        return (t - (1 - t) * self.lam) / ((1 - t) ** 2 * self.lam + t ** 2)

    def __call__(self, x, timesteps):
        t = (timesteps / self.scale).to(x.dtype)
        centred = x.flatten(1) - (1 - t[:, None]) * self.mu
        v = -self.mu + ((centred @ self.Q) * self.coefficient(t)) @ self.Q.T
        return v.reshape(x.shape)

    def optimal_loss(self, t: float) -> float:
        """E‖v − v̂‖²/D: the residual variance is λ/((1 − t)²λ + t²) along each eigenvector."""
        return float((self.lam / ((1 - t) ** 2 * self.lam + t ** 2)).mean())

    def nll_bpd(self, x):
        d = (x.flatten(1) - self.mu) @ self.Q
        nll = 0.5 * (d ** 2 / self.lam).sum(1) + 0.5 * torch.log(2 * math.pi * self.lam).sum()
        return nll / (D * math.log(2))

    def draw(self, n, seed=0):
        z = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return (self.mu + (z * self.lam.sqrt()) @ self.Q.T).reshape(n, *SHAPE)


def gaussian(scale=1000.0, spread=(0.2, 2.0), mean=0.3, seed=0):
    """A full-covariance Gaussian (eigenvalues spread over `spread`, random eigenvectors), so that the
    velocity's Jacobian is not diagonal and Hutchinson's estimate has a variance to test."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.linspace(*spread, D, dtype=torch.float64)
    mu = mean * torch.randn(D, generator=g, dtype=torch.float64)
    return GaussianVelocity(mu, Q @ torch.diag(lam) @ Q.T, scale)


@pytest.mark.parametrize("t", [0.02, 0.3, 0.5, 0.9, 0.999])
def test_loss_and_elbo_term_at_the_optimum_match_their_closed_forms(t):
    model = gaussian()
    x0 = model.draw(20_000, seed=1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    times = torch.full((len(x0),), t, dtype=torch.float64)
    mse = flow_mse_per_sample(model, x0, times, noise)
    assert mse.shape == (len(x0),)
    stderr = mse.std().item() / math.sqrt(len(mse))
    assert abs(mse.mean().item() - model.optimal_loss(t)) < 4 * stderr
    elbo = flow_elbo_terms(model, x0, times, noise)
    assert torch.allclose(elbo, (1 - t) / t * mse / math.log(2), rtol=1e-12)


def test_the_path_and_its_target():
    x0, noise = torch.full((2, 3), 2.0), torch.full((2, 3), -1.0)
    assert torch.equal(flow_xt(x0, torch.tensor([0.0, 1.0]), noise), torch.tensor([[2.0] * 3, [-1.0] * 3]))
    assert torch.allclose(flow_xt(x0, torch.tensor([0.25, 0.75]), noise), torch.tensor([[1.25] * 3, [-0.25] * 3]))
    assert torch.equal(RectifiedFlow().target(x0, noise), torch.full((2, 3), -3.0))


@pytest.mark.parametrize("solver, steps, tol", [("rk4", 16, 1e-5), ("heun", 64, 2e-3)])
def test_ode_likelihood_is_the_gaussian_nll(solver, steps, tol):
    model = gaussian()
    x0 = model.draw(48, seed=3)
    result = ode_likelihood(model, x0, steps=steps, solver=solver, trace="exact", batch_size=20)
    truth = model.nll_bpd(x0)
    assert result.trace == "exact" and result.stderr == 0.0
    assert result.per_sample.shape == (48,)
    assert (result.per_sample - truth).abs().max().item() < tol
    assert result.bpd == pytest.approx(truth.mean().item(), abs=tol)


def test_the_timestep_scale_is_a_parameter():
    """A network conditioned on t itself (scale 1) gives the same likelihood as one on t·1000."""
    x0 = gaussian().draw(8, seed=4)
    a = ode_likelihood(gaussian(scale=1000.0), x0, steps=8, trace="exact").per_sample
    b = RectifiedFlow(timestep_scale=1.0).likelihood(gaussian(scale=1.0), x0, steps=8, trace="exact").per_sample
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_hutchinson_agrees_with_the_exact_trace_within_its_standard_error():
    model = gaussian(spread=(0.05, 3.0))
    x0 = model.draw(64, seed=5)
    exact = ode_likelihood(model, x0, steps=12, trace="exact")
    hutch = ode_likelihood(model, x0, steps=12, trace="hutchinson", probes=8, seed=1)
    assert hutch.trace == "hutchinson" and (hutch.per_sample_stderr > 0).all()
    z = (hutch.per_sample - exact.per_sample) / hutch.per_sample_stderr
    # t-distributed with 7 degrees of freedom per sample: |z| > 3.5 has probability 1%.
    assert (z.abs() > 3.5).sum() <= 4, z
    assert abs(hutch.bpd - exact.bpd) < 3.5 * hutch.stderr
    assert 0 < hutch.stderr < 0.05


def test_auto_trace_is_exact_up_to_64_dimensions():
    model = gaussian()
    assert ode_likelihood(model, model.draw(2), steps=2).trace == "exact"
    assert ode_likelihood(model, model.draw(2), steps=2, trace="hutchinson").trace == "hutchinson"


def test_dequantised_likelihood_bounds_the_discrete_data():
    """On data rounded to 256 levels, the dequantised bits/dim ≈ −log2 P(x0)/D with P(x0) ≈ p(x0)·Δ^D (cells
    far narrower than the Gaussian), and it is an upper bound on average."""
    model = gaussian(spread=(0.01, 0.05), mean=0.1)
    bins = 256
    delta = 2 / (bins - 1)
    x0 = ((model.draw(64, seed=6).clamp(-1, 1) + 1) / delta).round() * delta - 1
    result = ode_likelihood(model, x0, bins=bins, steps=16, trace="exact", seed=2)
    discrete = model.nll_bpd(x0) + math.log2(1 / delta)
    gap = result.bpd - discrete.mean().item()
    assert -1e-3 < gap < 5e-3, gap


def test_euler_sampling_follows_the_exact_flow_map():
    """For Gaussian data the ODE's map from noise to data is x0 = μ + Σ^½ x1 (S_t = (1 − t)²Σ + t²I shares
    Σ's eigenvectors, so x_t − (1 − t)μ = S_t^½ x1 all the way); Euler's error shrinks like 1/steps."""
    model = gaussian()
    noise = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    exact = model.mu + (noise.flatten(1) @ model.Q * model.lam.sqrt()) @ model.Q.T
    errors = [(euler_sample(model, noise, steps=n).flatten(1) - exact).abs().max().item() for n in (25, 100)]
    assert errors[1] < 0.06 and 3 < errors[0] / errors[1] < 5, errors
    # Heun is second order: 4x the steps, about 16x less error, and far below Euler's at equal model calls
    heun = [(euler_sample(model, noise, steps=n, solver="heun").flatten(1) - exact).abs().max().item()
            for n in (25, 100)]
    assert 10 < heun[0] / heun[1] < 25 and heun[0] < errors[1] / 5, (heun, errors)


def test_mistakes_are_one_line_user_errors():
    model, x0 = gaussian(), gaussian().draw(4)
    cases = [
        (lambda: flow_mse_per_sample(model, x0, torch.tensor([1, 2, 3, 4])), "not integer timesteps"),
        (lambda: flow_mse_per_sample(model, x0, torch.rand(3)), "one time per sample"),
        (lambda: flow_elbo_terms(model, x0, torch.zeros(4, dtype=torch.float64)), r"every t in \(0, 1\]"),
        (lambda: euler_sample(model, x0, 4, solver="rk45"), "unknown sampling solver 'rk45'"),
        (lambda: ode_likelihood(model, x0, solver="euler"), "valid choices: heun, rk4"),
        (lambda: ode_likelihood(model, x0, trace="hutch"), "did you mean 'hutchinson'"),
        (lambda: ode_likelihood(model, x0, bins=1), "bins must be an integer >= 2"),
        (lambda: ode_likelihood(model, x0, steps=0), "steps must be an integer >= 1"),
        (lambda: ode_likelihood(model, x0[:0]), "empty"),
        (lambda: RectifiedFlow(timestep_scale=0), "timestep_scale must be a finite positive number"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
