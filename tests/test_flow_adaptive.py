"""The learned time sampler for rectified flow (samplers/flow_adaptive.py): its draws against its own exact
density, the credit on a constructed problem whose answer is known, learning there, the frozen control,
checkpoints, and one-line errors."""
import pytest
import torch
from scipy import stats
from torch import nn

from timestep_sampling import UserError, make_method, make_sampler
from timestep_sampling.flow import RectifiedFlow
from timestep_sampling.samplers.credit import flow_first_order_credit
from timestep_sampling.samplers.flow_adaptive import FlowAdaptiveSampler

BAND = (0.3, 0.6)  # FlowBandModel's band of t: the only times left to learn


class FlowBandModel(nn.Module):
    """A velocity model whose x0-prediction is a learnable constant m per tenth of t:
    v̂ = (x_t − m)/t. Then v − v̂ = (m − x0)/t whatever the noise, so for data x0 ≡ 1 a sample's loss is
    (m_band − 1)²/t² and the ELBO's term ((1 − t)/t)·(m_band − 1)²/t²: training moves m_band only."""

    def __init__(self, m):
        super().__init__()
        self.m = nn.Parameter(torch.as_tensor(m, dtype=torch.float64).clone())

    def forward(self, xt, timesteps):
        t = (timesteps / 1000).to(xt.dtype)
        m = self.m[(t * len(self.m)).long().clamp(max=len(self.m) - 1)].view(-1, *([1] * (xt.ndim - 1)))
        return (xt - m) / t.view(-1, *([1] * (xt.ndim - 1)))


def band_problem():
    """x0 ≡ 1; the model is right (m = 1) except on t in [0.3, 0.6), where m = −1."""
    return FlowBandModel([1.0] * 3 + [-1.0] * 3 + [1.0] * 4), torch.ones(64, 1, 2, 2, dtype=torch.float64)


def band_mass(sampler) -> float:
    cdf = sampler.cdf(torch.tensor(BAND, dtype=torch.float64))
    return float(cdf[1] - cdf[0])


def set_beta(sampler, alpha, beta):
    """Put the policy at (α, β) by inverting softplus(raw) + 1e-5."""
    raw = torch.log(torch.expm1(torch.tensor([alpha, beta]) - 1e-5))
    with torch.no_grad():
        sampler.policy.raw.copy_(raw)
    sampler._ab_cache = None


@pytest.mark.parametrize("mix", [0.0, 0.3])
def test_draws_follow_its_own_density(mix):
    sampler = FlowAdaptiveSampler(uniform_mix=mix)
    set_beta(sampler, 0.4, 2.5)
    t, w = sampler.sample(20_000, generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1 and torch.equal(w, torch.ones(20_000))
    assert stats.kstest(t.double().numpy(), lambda x: sampler.cdf(x).numpy()).pvalue > 1e-3
    expected = mix + (1 - mix) * stats.beta.pdf(0.3, 0.4, 2.5)
    assert float(sampler.density(torch.tensor([0.3]))) == pytest.approx(expected, rel=1e-6)
    # the KS test has teeth: the Beta without the floor is another distribution
    if mix:
        other = FlowAdaptiveSampler()
        set_beta(other, 0.4, 2.5)
        assert stats.kstest(t.double().numpy(), lambda x: other.cdf(x).numpy()).pvalue < 1e-6


def test_credit_ranks_the_band_that_helps_the_bound_first():
    model, x0 = band_problem()
    t = torch.linspace(0.02, 0.98, len(x0), dtype=torch.float64)
    credit = flow_first_order_credit(model, RectifiedFlow(), x0, t, generator=torch.Generator().manual_seed(0))
    inside = (t >= BAND[0]) & (t < BAND[1])
    assert credit[inside].min() > 0
    assert credit[~inside].abs().max() < 1e-6 * credit[inside].min()


def run(sampler, updates, seed=0):
    model, x0 = band_problem()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    flow, g = RectifiedFlow(), torch.Generator().manual_seed(seed)
    for _ in range(updates * sampler.update_every):
        t, w = sampler.sample(len(x0), generator=g)
        with sampler.observe(model, x0, optimizer=opt):
            (w * flow.loss(model, x0, t.double())).mean().backward()
            opt.step()
            opt.zero_grad()
    return band_mass(sampler)


# The band holds 30% of the mass at the start; with the credit the Beta must put more than half of it there
# within 100 updates. Frozen (lr = 0), it must not move. Measured, 100 updates: [0.3, 0.6) 0.30 -> 0.55,
# [0.5, 0.8) -> 0.57, [0.6, 0.9) -> 0.59; but [0.1, 0.4) 0.30 -> 0.23 (α 0.27, β 2.4). Within a band the
# credit grows like 1/t⁵ (the loss's 1/t² times the bound's weight), so the largest credits sit on the band's
# low edge, and a Beta that chases them toward t = 0 also piles mass below the band, where nothing is learned.
def test_the_learned_beta_moves_into_the_band_and_the_frozen_one_stays(capsys):
    sampler = FlowAdaptiveSampler(update_every=1, lr=5e-2)
    initial = band_mass(sampler)
    final = run(sampler, 100)
    with capsys.disabled():
        print(f"\n[flow-adaptive] mass on t in [0.3, 0.6) after 100 updates: {initial:.3f} -> {final:.3f}")
    assert final > 0.5 and sampler.skipped_updates == 0 and sampler.updates == 100
    frozen = FlowAdaptiveSampler(update_every=1, lr=0)
    assert run(frozen, 10) == pytest.approx(initial, abs=1e-12)


def test_state_round_trips_and_resumes_the_same_draws():
    sampler = FlowAdaptiveSampler(update_every=1, lr=5e-2)
    run(sampler, 5)
    clone = FlowAdaptiveSampler(update_every=1, lr=5e-2)
    clone.load_state_dict(sampler.state_dict())
    assert clone.concentrations() == sampler.concentrations() and clone.updates == sampler.updates == 5
    a, _ = sampler.sample(8)
    b, _ = clone.sample(8)
    assert torch.equal(a, b)  # the fallback stream is indexed by the draw counter, which is checkpointed
    with pytest.raises(UserError, match="not a saved state of the 'flow-adaptive' sampler"):
        clone.load_state_dict({"policy": {}})


def test_presets_and_the_frozen_control():
    sampler, weighting = make_method("flow-adaptive", None)
    assert isinstance(sampler, FlowAdaptiveSampler) and sampler.continuous and weighting.continuous
    frozen, _ = make_method("flow-adaptive-frozen", None)
    assert frozen.lr == 0 and frozen.concentrations() == sampler.concentrations()
    assert make_method("flow-adaptive-mix", None)[0].uniform_mix == 0.3


@pytest.mark.parametrize("spec, message", [
    ("flow-adaptive:lr=-1", "lr must be >= 0"),
    ("flow-adaptive:update_every=0", "update_every must be an integer >= 1"),
    ("flow-adaptive:uniform_mix=1", r"uniform_mix must lie in \[0, 1\)"),
    ("flow-adaptive:t_min=1", r"t_min must lie in \(0, 1\)"),
    ("flow-adaptive:credit_strata=0", "credit_strata must be an integer >= 1"),
    ("flow-adaptive:timestep_scale=0", "timestep_scale must be a finite positive number"),
])
def test_bad_options_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message) as info:
        make_sampler(spec)
    assert "\n" not in str(info.value)


def test_observe_needs_the_batch_it_drew_for():
    model, x0 = band_problem()
    sampler = FlowAdaptiveSampler()
    with pytest.raises(UserError, match="call sampler.sample"):
        with sampler.observe(model, x0):
            pass
    sampler.sample(3)
    with pytest.raises(UserError, match="got a batch of 64 but the last sample\\(\\) drew 3"):
        with sampler.observe(model, x0):
            pass
