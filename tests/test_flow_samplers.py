"""Continuous-time samplers and weightings for rectified flow: draws against exact densities
(Kolmogorov–Smirnov), densities against their CDFs and against 1, SD3's shift, unbiased weights, the
weightings' formulas, methods, and one-line errors."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from timestep_sampling import NoiseSchedule, UserError, make_method, make_sampler, make_weighting
from timestep_sampling.flow import flow_elbo_terms, flow_mse_per_sample
from timestep_sampling.methods import is_flow_method
from timestep_sampling.samplers import ContinuousTimeSampler, available_samplers

DRAWS = 20_000
SPECS = ["flow-uniform", "flow-uniform:shift=3", "flow-logit-normal", "flow-logit-normal:mean=-0.5,std=1.5",
         "flow-logit-normal:resolution=1024", "flow-mode", "flow-mode:scale=-0.8", "flow-mode:scale=1.75",
         "flow-cosmap", "flow-cosmap:shift=0.5", "flow-beta:a=0.5,b=0.5", "flow-beta:a=2,b=5,shift=3",
         "flow-beta:a=0.7,b=3,mix=0.1"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ks_pvalue(draws: torch.Tensor, sampler) -> float:
    return stats.kstest(draws.double().numpy(), lambda x: sampler.cdf(x).numpy()).pvalue


@pytest.mark.parametrize("spec", SPECS)
def test_draws_follow_the_density(spec):
    sampler = make_sampler(spec)
    t, w = sampler.sample(DRAWS, generator=gen(1))
    assert isinstance(sampler, ContinuousTimeSampler) and sampler.continuous
    assert t.dtype == torch.float32 and t.shape == (DRAWS,) and torch.equal(w, torch.ones(DRAWS))
    assert 0 < t.min() and t.max() < 1
    assert ks_pvalue(t, sampler) > 1e-3


@pytest.mark.parametrize("spec", SPECS)
def test_density_integrates_to_its_cdf_and_to_one(spec):
    sampler = make_sampler(spec)
    density = lambda x: float(sampler.density([x])[0])  # noqa: E731
    checks = [0.05, 0.3, 0.5, 0.77, 0.99]
    # A breakpoint where the mode density at scale 1.75 has its sharp peak, so that quad sees it.
    peak = float(sampler._f(0.5)) if hasattr(sampler, "_f") else 0.5
    edges = sorted({0.0, *checks, peak, 1.0})
    pieces = [integrate.quad(density, a, b, limit=400)[0] for a, b in zip(edges[:-1], edges[1:])]
    numeric_cdf = dict(zip(edges[1:], np.cumsum(pieces)))
    for x in checks:
        assert float(sampler.cdf([x])[0]) == pytest.approx(numeric_cdf[x], abs=1e-6), x
    assert numeric_cdf[1.0] == pytest.approx(1.0, abs=1e-6)
    assert sampler.density([-0.1, 0.0, 1.0, 1.5]).tolist() == [0.0] * 4
    assert sampler.cdf([-0.1, 0.0, 1.0, 1.5]).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_the_ks_test_has_teeth():
    draws, _ = make_sampler("flow-logit-normal").sample(DRAWS, generator=gen(2))
    assert ks_pvalue(draws, make_sampler("flow-logit-normal:std=1.1")) < 1e-6
    draws, _ = make_sampler("flow-uniform:shift=1.2").sample(DRAWS, generator=gen(3))
    assert ks_pvalue(draws, make_sampler("flow-uniform")) < 1e-6
    draws, _ = make_sampler("flow-mode:scale=1.29").sample(DRAWS, generator=gen(4))
    assert ks_pvalue(draws, make_sampler("flow-mode:scale=1.1")) < 1e-6


def test_closed_forms():
    t = np.array([0.1, 0.5, 0.8])
    logit = np.log(t / (1 - t))
    expected = stats.norm.pdf((logit - 0.3) / 1.5) / (1.5 * t * (1 - t))
    assert np.allclose(make_sampler("flow-logit-normal:mean=0.3,std=1.5").density(t).numpy(), expected, rtol=1e-12)
    assert np.allclose(make_sampler("flow-cosmap").density(t).numpy(), 2 / (np.pi * (1 - 2 * t + 2 * t * t)))
    assert np.allclose(make_sampler("flow-mode:scale=0").density(t).numpy(), 1.0)
    s = 3.0  # SD3's shift on uniform draws: p(t') = s/(s − (s − 1)t')²
    assert np.allclose(make_sampler("flow-uniform:shift=3").density(t).numpy(), s / (s - (s - 1) * t) ** 2)


def test_the_shift_maps_the_same_draws():
    base, _ = make_sampler("flow-logit-normal").sample(1000, generator=gen(5))
    shifted, _ = make_sampler("flow-logit-normal:shift=3").sample(1000, generator=gen(5))
    expected = 3 * base.double() / (1 + 2 * base.double())
    assert torch.allclose(shifted.double(), expected, rtol=1e-6)
    assert make_sampler("flow-uniform:resolution=1024").shift == 4.0  # the SD3 paper's √(m/n), base 256²
    assert make_sampler("flow-uniform:resolution=512,base_resolution=512").shift == 1.0


def test_seeded_draws_repeat_and_land_on_the_device():
    a = make_sampler("flow-mode").sample(16, "cpu", generator=gen(6))
    b = make_sampler("flow-mode").sample(16, generator=gen(6))
    assert torch.equal(a[0], b[0]) and a[0].device.type == "cpu"
    assert make_sampler("flow-beta:a=2,b=2").sample(0)[0].shape == (0,)


def test_unbiased_weights_restore_the_uniform_objective():
    # The cosmap density is bounded away from 0, so the weights are bounded and the estimate's variance finite
    # (a logit-normal's 1/p(t) grows faster than any power at the ends: its importance weights have none).
    sampler = make_sampler("flow-cosmap:shift=2", unbiased=True)
    t, w = sampler.sample(200_000, generator=gen(7))
    assert torch.allclose(w, 1 / sampler.density(t.double()).float(), rtol=1e-5)
    # E_p[w·g(t)] = ∫_0^1 g: with g(t) = t², 1/3.
    estimate = (w.double() * t.double() ** 2).mean().item()
    assert estimate == pytest.approx(1 / 3, rel=0.01)


# --- weightings --------------------------------------------------------------------------------------

POINTS = torch.tensor([1e-3, 0.1, 0.309, 0.5, 0.9, 0.999], dtype=torch.float32)


def weights(spec):
    w = make_weighting(spec).weights(POINTS)
    assert w.dtype == torch.float32 and w.shape == POINTS.shape
    return w.double()


def test_flow_weightings_formulas():
    t = POINTS.double()
    close = lambda a, b: torch.allclose(a, b.to(a.dtype), rtol=2e-6)  # noqa: E731
    assert torch.equal(weights("flow-none"), torch.ones(len(t), dtype=torch.float64))
    assert close(weights("flow-elbo"), (1 - t) / t)
    assert close(weights("flow-sigma-sqrt"), t ** -2)
    assert close(weights("flow-cosmap"), 2 / (math.pi * (1 - 2 * t + 2 * t * t)))
    # Min-SNR-γ: min(SNR, γ)/SNR on the ε-MSE, times (1 − t)² to move it onto the velocity MSE.
    snr = ((1 - t) / t) ** 2
    for gamma in (5.0, 1.0):
        assert close(weights(f"flow-min-snr:gamma={gamma}"), (1 - t) ** 2 * snr.clamp(max=gamma) / snr)


def test_cosmap_weighting_is_the_cosmap_density():
    t = torch.rand(100, generator=gen(8)) * 0.98 + 0.01
    assert torch.allclose(make_weighting("flow-cosmap").weights(t).double(),
                          make_sampler("flow-cosmap").density(t), rtol=1e-6)


def test_elbo_weighting_turns_the_velocity_loss_into_the_elbo_term():
    model = lambda x, ts: 0.5 * x  # noqa: E731
    x0 = torch.randn(8, 1, 2, 2, generator=gen(9), dtype=torch.float64)
    noise = torch.randn(8, 1, 2, 2, generator=gen(10), dtype=torch.float64)
    t, _ = make_sampler("flow-uniform").sample(8, generator=gen(11))
    mse = flow_mse_per_sample(model, x0, t.double(), noise)
    w = make_weighting("flow-elbo").weights(t).double()
    assert torch.allclose(w * mse / math.log(2), flow_elbo_terms(model, x0, t.double(), noise), rtol=1e-6)


# --- methods, registry, errors --------------------------------------------------------------------------

def test_flow_methods_and_registry():
    names = {"flow-uniform", "flow-logit-normal", "flow-mode", "flow-cosmap", "flow-beta"}
    assert names <= set(available_samplers())
    sampler, weighting = make_method("flow-min-snr")
    assert sampler.name == "flow-uniform" and weighting.name == "flow-min-snr"
    sampler, weighting = make_method("flow-logit-normal:shift=3+flow-cosmap", NoiseSchedule())  # schedule ignored
    assert sampler.shift == 3.0 and weighting.name == "flow-cosmap"
    assert is_flow_method("flow-elbo") and is_flow_method("flow-beta:a=2+flow-none") and not is_flow_method("speed")


@pytest.mark.parametrize("call, message", [
    (lambda: make_sampler("flow-logit-normall"), "did you mean 'flow-logit-normal'"),
    (lambda: make_sampler("flow-logit-normal:sigma=1"), "valid choices: base_resolution, mean, resolution, shift, std"),
    (lambda: make_sampler("flow-logit-normal:std=0"), "std must be a finite positive number"),
    (lambda: make_sampler("flow-uniform:shift=-1"), "shift must be a finite positive number"),
    (lambda: make_sampler("flow-uniform:shift=3,resolution=1024"), "not both"),
    (lambda: make_sampler("flow-uniform:resolution=0"), "resolution must be a finite positive number"),
    (lambda: make_sampler("flow-mode:scale=2"), r"scale must lie in \[-1, 2/\(pi-2\)"),
    (lambda: make_sampler("flow-beta:a=0"), "a must be a finite positive number"),
    (lambda: make_sampler("flow-uniform:unbiased=1"), "unbiased must be True or False"),
    (lambda: make_sampler("flow-uniform").sample(-1), "batch_size"),
    (lambda: make_sampler("flow-uniform").sample(2, "gpu"), "unknown device 'gpu'"),
    (lambda: make_sampler("uniform"), "needs a NoiseSchedule"),
    (lambda: make_weighting("min-snr"), "needs a NoiseSchedule"),
    (lambda: make_weighting("flow-min-snr:gamma=0"), "gamma must be a number > 0"),
    (lambda: make_weighting("flow-none").weights(torch.tensor([1, 2])), "float tensor of times"),
    (lambda: make_weighting("flow-elbo").weights(torch.tensor([0.0, 0.5])), r"outside \(0, 1\)"),
    (lambda: make_method("uniform+flow-none", NoiseSchedule()), "pair flow-... with flow-..."),
    (lambda: make_method("flow-uniform+min-snr", NoiseSchedule()), "pair flow-... with flow-..."),
])
def test_mistakes_are_one_line_user_errors(call, message):
    with pytest.raises(UserError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
