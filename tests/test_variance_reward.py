"""reward="variance": the learned Beta as an importance sampler that lowers the variance of the loop's
unbiased loss estimate, on problems whose optimum is known (p_t ∝ λ_t·RMS(ℓ_t))."""
import numpy as np
import pytest
import torch
from torch import nn

from timestep_sampling import NoiseSchedule, UserError, make_method, make_sampler
from timestep_sampling.diffusion import mse_per_sample

SCHEDULE = NoiseSchedule("linear", T=200)


class ScaledInput(nn.Module):
    """ε̂ = s·x_t. With s = 1 the ε-MSE is ≈ 1 + x0² at small t and → 0 at large t (so the variance-optimal
    p_t leans on small t); with s = 0 it is ‖ε‖², the same at every t (so uniform is optimal)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, xt, t):
        return self.scale * xt


def second_moment(model, pmf, weights=None, n=64):
    """V(p) = Σ_t λ_t² E[ℓ_t²] / (T² p_t): the second moment of one draw of the importance-weighted loss,
    E[ℓ_t²] by Monte Carlo on fixed noise at every t."""
    T = SCHEDULE.T
    g = torch.Generator().manual_seed(1)
    x0 = torch.ones(n, 1, 2, 2)
    with torch.no_grad():
        moments = torch.stack([mse_per_sample(model, SCHEDULE, x0, torch.full((n,), t), torch.randn(x0.shape, generator=g))
                               .double().square().mean() for t in range(T)])
    lam = torch.ones(T, dtype=torch.float64) if weights is None else weights.weights(torch.arange(T)).double()
    return float((lam.square() * moments / (T ** 2 * pmf)).sum()), moments


def observe_fixed(sampler, model, x0, updates):
    """`updates` sampler updates around a model that does not train: only the sampler learns."""
    g = torch.Generator().manual_seed(0)
    for _ in range(updates):
        sampler.sample(len(x0), generator=g)
        with sampler.observe(model, x0):
            pass
    assert sampler.skipped_updates == 0


def learn(model, updates=150, weighting=None):
    sampler = make_sampler("adaptive:reward=variance,unbiased=True,uniform_mix=0.05", SCHEDULE, update_every=1,
                           lr=0.05, seed=0)
    if weighting is not None:
        sampler.pair_weighting(weighting)
    observe_fixed(sampler, model, torch.ones(64, 1, 2, 2), updates)
    assert sampler.updates == updates
    return sampler


def test_it_moves_to_where_the_loss_is_large_and_lowers_the_estimates_variance():
    model = ScaledInput(1.0)
    sampler = learn(model)
    start = make_sampler("adaptive:reward=variance,unbiased=True,uniform_mix=0.05", SCHEDULE).probabilities()
    pmf = sampler.probabilities()
    before, moments = second_moment(model, start)
    after, _ = second_moment(model, pmf)
    best = float(moments.sqrt().sum() ** 2 / SCHEDULE.T ** 2)  # V at p ∝ RMS(ℓ_t), the optimum
    assert pmf[:SCHEDULE.T // 2].sum() > start[:SCHEDULE.T // 2].sum() + 0.15
    assert after < before - 0.5 * (before - best), (before, after, best)


def test_a_loss_spread_evenly_keeps_it_near_uniform():
    sampler = learn(ScaledInput(0.0))
    assert abs(float(sampler.probabilities()[:SCHEDULE.T // 2].sum()) - 0.5) < 0.05


def test_the_loops_weighting_enters_the_variance():
    """With a weighting that is zero on the upper half of t, only the lower half's loss counts: the sampler
    leaves the upper half to its floor even where the plain loss there is large (ε̂ = 0: a flat ε-MSE)."""
    class LowerHalf:
        def weights(self, t):
            return (t < SCHEDULE.T // 2).float()
    sampler = learn(ScaledInput(0.0), weighting=LowerHalf())
    assert float(sampler.probabilities()[:SCHEDULE.T // 2].sum()) > 0.7


def test_it_is_an_unbiased_global_sampler_and_says_so():
    for spec in ["adaptive:reward=variance", "adaptive:reward=variance,unbiased=True,conditioned=True"]:
        with pytest.raises(UserError, match="unbiased=True"):
            make_sampler(spec, SCHEDULE)
    sampler, _ = make_method("adaptive-variance", SCHEDULE)
    assert sampler.unbiased and "reward='variance'" in repr(sampler)
    t, w = sampler.sample(8)
    assert torch.allclose(w, 1 / (SCHEDULE.T * sampler.probabilities()[t]).float())


class NegativeInput(nn.Module):
    """v̂ = −s·x_t for rectified flow (x_t = (1 − t)·x0 + t·ε, v = ε − x0): with s = 1 the velocity error is
    (1 + t)·ε − t·x0, growing with t (for x0 = 1 the optimum p(t) ∝ 1 + 2t + 2t² puts 0.69 of the mass on
    t > ½); with s = 0 and x0 = 0 it is ε, the same at every t."""

    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, xt, t):
        return -self.scale * xt


# ----------------------------------------------------------------------------- reward="grad-variance"

class StepScaled(nn.Module):
    """ε̂ = s(t)·θ with θ = 0: the ε-MSE is ‖ε‖² at every t (flat), but its gradient −2·s(t)·mean(ε) is `ratio`
    times larger on the upper half of t. Only a sampler that looks at gradients can tell the halves apart."""

    def __init__(self, ratio=10.0):
        super().__init__()
        self.theta, self.ratio = nn.Parameter(torch.zeros(())), ratio

    def forward(self, xt, t):
        s = torch.where(t >= SCHEDULE.T // 2, self.ratio, 1.0).to(xt).view(-1, *[1] * (xt.dim() - 1))
        return s * self.theta * torch.ones_like(xt)


def per_sample_squared_gradients(model, x0, t, noise):
    return torch.stack([torch.autograd.grad(mse_per_sample(model, SCHEDULE, x0[b:b + 1], t[b:b + 1], noise[b:b + 1])
                                            .sum(), model.theta)[0] ** 2 for b in range(len(x0))]).double()


def test_the_gradient_reward_is_each_samples_squared_gradient_norm():
    """One weight: a Rademacher probe is ±1, so the reward is the squared gradient exactly; with Adam's
    preconditioner it is the preconditioned gradient's square."""
    from timestep_sampling.samplers.credit import gradient_rewards
    model, g = StepScaled(), torch.Generator().manual_seed(3)
    x0, t, noise = torch.zeros(6, 1, 2, 2), torch.tensor([0, 10, 99, 100, 150, 199]), torch.randn(6, 1, 2, 2)
    losses = lambda net: mse_per_sample(net, SCHEDULE, x0, t, noise)  # noqa: E731
    expected = per_sample_squared_gradients(model, x0, t, noise)
    assert torch.allclose(gradient_rewards(model, losses, None, g), expected, rtol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.theta.grad = torch.tensor(2.0)
    opt.step()  # a second moment v = 0.004, so P = 1/(√(v/0.001) + 1e-8) = 0.5
    model.theta.data.zero_()
    assert torch.allclose(gradient_rewards(model, losses, opt, g), expected * 0.25, rtol=1e-4)


def learn_gradient(model, reward, updates=400):
    sampler = make_sampler(f"adaptive:reward={reward},unbiased=True,uniform_mix=0.05", SCHEDULE, update_every=1,
                           lr=0.05, seed=0)
    x0 = torch.zeros(64, 1, 2, 2)
    observe_fixed(sampler, model, x0, updates)
    return sampler.probabilities()


def test_it_moves_to_where_the_gradients_are_large_where_the_loss_reward_cannot_see_them():
    """The step's second moment is V(p) ∝ Σ_t s_t² / (T² p_t) (s_t: the gradient's scale at t), lowest at
    p ∝ s_t, which puts 10/11 of the mass on the upper half. The loss is flat, so the loss reward stays near
    uniform on the same model; with equal gradients the gradient reward does too."""
    half, s = SCHEDULE.T // 2, torch.where(torch.arange(SCHEDULE.T) >= SCHEDULE.T // 2, 10.0, 1.0).double()
    second_moment = lambda p: float((s ** 2 / (SCHEDULE.T ** 2 * p)).sum())  # noqa: E731
    before, best = second_moment(torch.full((SCHEDULE.T,), 1 / SCHEDULE.T).double()), float(s.mean() ** 2)
    pmf = learn_gradient(StepScaled(10.0), "grad-variance")
    assert pmf[half:].sum() > 0.75
    assert second_moment(pmf) < before - 0.6 * (before - best), (before, second_moment(pmf), best)
    assert abs(float(learn_gradient(StepScaled(10.0), "variance")[half:].sum()) - 0.5) < 0.05
    assert abs(float(learn_gradient(StepScaled(1.0), "grad-variance")[half:].sum()) - 0.5) < 0.06


@pytest.mark.parametrize("method", ["adaptive-variance", "adaptive-grad-variance"])
def test_it_learns_in_a_drop_in_loop_with_a_plain_callable_model(method):
    net = StepScaled(10.0)
    model = lambda x, t: net(x, t)  # noqa: E731: any callable, as the README promises
    sampler, weighting = make_method(method, SCHEDULE, update_every=1)
    assert sampler.unbiased and f"reward='{sampler.reward}'" in repr(sampler)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x0 = torch.ones(16, 1, 2, 2)
    for _ in range(3):
        t, w = sampler.sample(len(x0))
        with sampler.observe(model, x0, optimizer=opt):
            loss = (w * weighting.weights(t) * mse_per_sample(model, SCHEDULE, x0, t)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert sampler.updates == 3 and sampler.skipped_updates == 0
    with pytest.raises(UserError, match="unbiased=True"):
        make_sampler(f"adaptive:reward={sampler.reward}", SCHEDULE)


class FlowStepScaled(nn.Module):
    """v̂ = s(t)·θ with θ = 0 for rectified flow (the model sees t·1000): a flat velocity loss whose gradient is
    `ratio` times larger for t > ½."""

    def __init__(self, ratio):
        super().__init__()
        self.theta, self.ratio = nn.Parameter(torch.zeros(())), ratio

    def forward(self, xt, t):
        s = torch.where(t > 500, self.ratio, 1.0).to(xt).view(-1, *[1] * (xt.dim() - 1))
        return s * self.theta * torch.ones_like(xt)


def learn_flow(method, model, x0, updates):
    """The flow sampler's mass on t > ½ after `updates` updates around a fixed model."""
    sampler, _ = make_method(method, None, update_every=1, lr=0.05)
    assert sampler.unbiased and f"reward='{sampler.reward}'" in repr(sampler)
    observe_fixed(sampler, model, x0, updates)
    with pytest.raises(UserError, match="unbiased=True"):
        make_sampler(f"flow-adaptive:reward={sampler.reward}")
    return 1 - float(sampler._cdf(np.array([0.5]))[0])


@pytest.mark.parametrize("scale, data, upper", [(1.0, 1.0, (0.62, 0.72)), (0.0, 0.0, (0.45, 0.55))])
def test_the_flow_sampler_learns_the_same_way(scale, data, upper):
    mass = learn_flow("flow-adaptive-variance", NegativeInput(scale), torch.full((64, 1, 2, 2), data), 300)
    assert upper[0] < mass < upper[1], mass


@pytest.mark.parametrize("ratio, upper", [(10.0, (0.75, 1.0)), (1.0, (0.44, 0.56))])
def test_the_flow_sampler_takes_the_gradient_reward_too(ratio, upper):
    mass = learn_flow("flow-adaptive-grad-variance", FlowStepScaled(ratio), torch.zeros(64, 1, 2, 2), 400)
    assert upper[0] < mass < upper[1], mass
