"""Timestep samplers: each draws from the pmf it reports, SpeeD's rules, the loss-aware samplers'
learning, unbiased mode, state round-trips, and clear errors."""
import math

import pytest
import torch
from scipy import stats

from timestep_sampling import NoiseSchedule, UserError, make_sampler
from timestep_sampling.samplers import TimestepSampler, available_samplers
from timestep_sampling.samplers import loss_aware
from multiproc import run_ranks

DRAWS = 100_000
LINEAR = NoiseSchedule("linear", T=1000)
COSINE = NoiseSchedule("cosine", T=1000)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def chi2_pvalue(t: torch.Tensor, p: torch.Tensor, n_bins: int = 30) -> float:
    """Chi-square p-value of the draws `t` against pmf `p`, over bins of about equal expected mass
    (so every expected count is large, even in thin tails)."""
    p = p.double()
    p = p / p.sum()
    mid_mass = torch.cumsum(p, 0) - p / 2
    bin_of_t = (mid_mass * n_bins).long().clamp(max=n_bins - 1)
    observed = torch.bincount(bin_of_t[t], minlength=n_bins).double()
    expected = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bin_of_t, p) * len(t)
    used = expected > 0
    if observed[~used].sum() > 0:  # draws where the pmf says none can be
        return 0.0
    return float(stats.chisquare(observed[used].numpy(), expected[used].numpy()).pvalue)


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# --- each sampler draws from its pmf -------------------------------------------------------------

EXPLICIT = ["uniform", "logit-normal", "logit-normal:mean=0.7,std=0.5", "lognormal-edm",
            "lognormal-edm:P_mean=0.4,P_std=2", "beta:a=0.95,b=0.95", "beta:a=2,b=5", "beta:a=0.5,b=0.5",
            "speed:dual=False", "speed:k=5,tau=400,dual=False", "speed-2024:dual=False",
            "beta:a=0.68,b=3.2,mix=0.05", "beta:a=0.5,b=2,mix=0.3"]


@pytest.mark.parametrize("spec", EXPLICIT)
@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_draws_follow_the_reported_pmf(spec, schedule):
    sampler = make_sampler(spec, schedule)
    t, w = sampler.sample(DRAWS, generator=gen(1))
    assert t.dtype == torch.long and t.shape == (DRAWS,) and 0 <= t.min() and t.max() < schedule.T
    assert torch.equal(w, torch.ones(DRAWS))
    p = sampler.probabilities()
    assert p.dtype == torch.float64 and p.shape == (schedule.T,) and abs(p.sum().item() - 1) < 1e-12
    assert chi2_pvalue(t, p) > 1e-3


def test_chi_square_rejects_a_wrong_pmf():
    logit_normal = make_sampler("logit-normal", LINEAR)
    uniform_draws, _ = make_sampler("uniform", LINEAR).sample(DRAWS, generator=gen(2))
    assert chi2_pvalue(uniform_draws, logit_normal.probabilities()) < 1e-12
    # Subtler: draws with std 1 against the pmf for std 1.1.
    draws, _ = logit_normal.sample(DRAWS, generator=gen(3))
    assert chi2_pvalue(draws, make_sampler("logit-normal:std=1.1", LINEAR).probabilities()) < 1e-6


def test_logit_normal_pmf_integrates_the_normal_over_rounding_intervals():
    p = make_sampler("logit-normal:mean=0.3,std=1.5", LINEAR).probabilities()
    logit = lambda u: math.log(u / (1 - u))  # noqa: E731
    for t in (1, 250, 500, 998):
        lo, hi = (t - 0.5) / 999, (t + 0.5) / 999
        expected = phi((logit(hi) - 0.3) / 1.5) - phi((logit(lo) - 0.3) / 1.5)
        assert p[t].item() == pytest.approx(expected, rel=1e-9)
    assert p[0].item() == pytest.approx(phi((logit(0.5 / 999) - 0.3) / 1.5), rel=1e-6)


def test_beta_pmf_halves_the_end_masses():
    p = make_sampler("beta:a=1,b=1", LINEAR).probabilities()
    assert p[0].item() == pytest.approx(0.5 / 999) and p[999].item() == pytest.approx(0.5 / 999)
    assert p[1:999] == pytest.approx(torch.full((998,), 1 / 999, dtype=torch.float64))
    q = make_sampler("beta:a=2,b=3", LINEAR).probabilities()
    cdf = lambda u: 6 * u**2 - 8 * u**3 + 3 * u**4  # noqa: E731  (∫ 12 u (1-u)² du)
    assert q[400].item() == pytest.approx(cdf(400.5 / 999) - cdf(399.5 / 999), rel=1e-9)


def test_lognormal_edm_takes_the_nearest_sigma():
    p = make_sampler("lognormal-edm", LINEAR).probabilities()
    abar = LINEAR.alphas_cumprod
    log_sigma = [0.5 * math.log((1 - a) / a) for a in abar.tolist()]
    for t in (1, 100, 700):
        lo, hi = (log_sigma[t - 1] + log_sigma[t]) / 2, (log_sigma[t] + log_sigma[t + 1]) / 2
        assert p[t].item() == pytest.approx(phi((hi + 1.2) / 1.2) - phi((lo + 1.2) / 1.2), rel=1e-9)
    # The lower tail lands on t = 0.
    assert p[0].item() == pytest.approx(phi(((log_sigma[0] + log_sigma[1]) / 2 + 1.2) / 1.2), rel=1e-9)
    t, _ = make_sampler("lognormal-edm", LINEAR).sample(10, generator=gen(4))
    sigma = torch.exp(torch.randn(10, generator=gen(4), dtype=torch.float64) * 1.2 - 1.2)
    nearest = (torch.tensor(log_sigma)[None, :] - sigma.log()[:, None]).abs().argmin(1)
    assert torch.equal(t, nearest)


# --- SpeeD --------------------------------------------------------------------------------------

def hand_gradient(x):
    """Central differences, one-sided at the ends (what numpy.gradient does), written out."""
    x = x.tolist()
    return [x[1] - x[0]] + [(x[i + 1] - x[i - 1]) / 2 for i in range(1, len(x) - 1)] + [x[-1] - x[-2]]


def test_speed_meaningful_step_is_642_on_linear():
    assert make_sampler("speed", LINEAR).m == 642
    assert make_sampler("speed-2024", LINEAR).m == 642
    g = hand_gradient((1 - LINEAR.alphas_cumprod).sqrt())
    assert next(i for i, v in enumerate(g) if v < 1e-4) + 1 == 642


def test_speed_current_pmf():
    p = make_sampler("speed", LINEAR).probabilities()
    assert torch.allclose(p[:700], torch.full((700,), 2 / 1700, dtype=torch.float64))
    assert torch.allclose(p[700:], torch.full((300,), 1 / 1700, dtype=torch.float64))
    q = make_sampler("speed:k=5,tau=300", LINEAR).probabilities()
    assert q[299].item() == pytest.approx(5 / 2200) and q[300].item() == pytest.approx(1 / 2200)
    # τ defaults to 0.7·T on other T.
    assert make_sampler("speed", NoiseSchedule("linear", T=100)).tau == 70


def test_speed_2024_pmf():
    g = hand_gradient((1 - LINEAR.alphas_cumprod).sqrt())
    score = torch.tensor([math.tanh(1e6 * (v - 1e-4)) + 1.5 for v in g], dtype=torch.float64)
    p = make_sampler("speed-2024", LINEAR).probabilities()
    assert torch.allclose(p, score / score.sum(), rtol=1e-12)
    assert p[0] / p[999] == pytest.approx(5, rel=1e-6)


@pytest.mark.parametrize("name", ["speed", "speed-2024"])
def test_speed_dual_rule(name):
    sampler = make_sampler(name, LINEAR)
    m = 642
    for n in (1, 2, 3, 4, 7, 128):
        t, _ = sampler.sample(n, generator=gen(n))
        k = n // 2 + 1
        assert t.shape == (n,)
        base = t[:min(k, n)]
        expected_duals = [b - m if b >= m else m - b for b in base.tolist()][: n - min(k, n)]
        assert t[min(k, n):].tolist() == expected_duals


@pytest.mark.parametrize("name", ["speed", "speed-2024"])
def test_speed_dual_positions_follow_base_and_pushforward(name):
    sampler = make_sampler(name, LINEAR)
    g = gen(6)
    batches = torch.stack([sampler.sample(5, generator=g)[0] for _ in range(25_000)])  # 3 base + 2 duals
    p = sampler.probabilities()
    q = torch.zeros(1000, dtype=torch.float64)
    for t in range(1000):
        q[642 - t if t < 642 else t - 642] += p[t]
    assert chi2_pvalue(batches[:, :3].flatten(), p) > 1e-3
    assert chi2_pvalue(batches[:, 3:].flatten(), q) > 1e-3
    assert chi2_pvalue(batches[:, 3:].flatten(), p) < 1e-12  # the duals are not draws from p
    assert torch.allclose(sampler.batch_probabilities(5), (3 * p + 2 * q) / 5)
    assert torch.allclose(sampler.batch_probabilities(), (p + q) / 2)


def test_speed_without_dual_draws_plainly_from_p():
    t, _ = make_sampler("speed:dual=False", LINEAR).sample(9, generator=gen(7))
    assert torch.equal(t, torch.multinomial(make_sampler("speed", LINEAR).probabilities(), 9,
                                            replacement=True, generator=gen(7)))


# --- loss-second-moment -------------------------------------------------------------------------

SMALL = NoiseSchedule("linear", T=50)


def test_loss_second_moment_uniform_until_every_history_fills():
    sampler = make_sampler("loss-second-moment", SMALL)
    t = torch.arange(50).repeat(9)
    sampler.update(t, torch.ones(450) * 3)
    sampler.update(torch.arange(49), torch.ones(49))  # every t but 49 now has 10 losses
    assert torch.equal(sampler.probabilities(), torch.full((50,), 0.02, dtype=torch.float64))
    draws, w = sampler.sample(DRAWS, generator=gen(8))
    assert torch.equal(w, torch.ones(DRAWS))  # 1/(T·p) = 1 while uniform
    assert chi2_pvalue(draws, torch.full((50,), 0.02)) > 1e-3


def test_loss_second_moment_samples_in_proportion_to_root_mean_square_loss():
    sampler = make_sampler("loss-second-moment", SMALL)
    scale = torch.where(torch.arange(50) < 10, 4.0, 1.0)  # t < 10: losses 4× larger
    for i in range(10):  # alternate signs: E[L²] = scale², not (E L)² which would be 0
        sampler.update(torch.arange(50), scale * (1 if i % 2 else -1))
    expected = 0.999 * scale / scale.sum() + 0.001 / 50
    assert torch.allclose(sampler.probabilities(), expected.double())
    draws, w = sampler.sample(DRAWS, generator=gen(9))
    assert chi2_pvalue(draws, expected) > 1e-3
    assert chi2_pvalue(draws, torch.full((50,), 0.02)) < 1e-12
    assert torch.allclose(w, (1 / (50 * expected[draws])).float())  # unbiased weights on by default


def test_loss_second_moment_keeps_the_last_ten_losses_in_order():
    sampler = make_sampler("loss-second-moment", SMALL)
    sampler.update(torch.arange(50).repeat(10), torch.ones(500))
    # t = 3 gets 15 losses in one batch: only the last 10 (6..15) must remain.
    sampler.update(torch.full((15,), 3), torch.arange(1.0, 16.0))
    rms = sampler.probabilities()
    expected_rms3 = math.sqrt(sum(v * v for v in range(6, 16)) / 10)
    score = torch.ones(50, dtype=torch.float64)
    score[3] = expected_rms3
    assert torch.allclose(rms, 0.999 * score / score.sum() + 0.001 / 50)


def test_update_gathers_from_every_rank(monkeypatch):
    # Stand-in for a 2-rank all_gather: the other rank sent t + 1 with losses × 10.
    def fake_gather(x):
        other = x + 1 if x.dtype == torch.long else x * 10
        return torch.cat([x, other])
    monkeypatch.setattr(loss_aware, "all_gather_cat", fake_gather)
    sampler = make_sampler("loss-second-moment:history=1", SMALL)
    sampler.update(torch.arange(0, 50, 2), torch.ones(25))
    assert torch.equal(sampler.history.values[:, 0], torch.tensor([1.0, 10.0] * 25, dtype=torch.float64))


def rank_batch(rank: int, step: int):
    """What rank `rank` trains on at `step` of the two-rank test: different sizes on each rank."""
    t = torch.arange(50) if rank == 0 else torch.arange(50).flip(0)[:30]
    return t, (rank + 1) * (step + 1) * torch.linspace(0.1, 1.0, t.numel())


def gather_worker(rank, out_dir):
    sampler = make_sampler("loss-second-moment:history=2", SMALL)
    for step in range(2):
        sampler.update(*rank_batch(rank, step))
    torch.save(sampler.state_dict(), f"{out_dir}/rank{rank}.pt")


def test_two_ranks_end_with_the_state_of_one_process_seeing_all_data(tmp_path):
    run_ranks(gather_worker, str(tmp_path), init_file=tmp_path / "init")
    reference = make_sampler("loss-second-moment:history=2", SMALL)
    for step in range(2):
        (t0, l0), (t1, l1) = rank_batch(0, step), rank_batch(1, step)
        reference.update(torch.cat([t0, t1]), torch.cat([l0, l1]))
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(state["history"]["values"], reference.state_dict()["history"]["values"])
        assert torch.equal(state["history"]["seen"], reference.state_dict()["history"]["seen"])


# --- variance -----------------------------------------------------------------------------------

def test_variance_sampler_with_given_variances():
    v = torch.linspace(1, 3, 1000) ** 2
    sampler = make_sampler("variance", LINEAR, variances=v.tolist(), uniform_prob=0)
    assert torch.allclose(sampler.probabilities(), (v / v.sum()).double())
    draws, _ = sampler.sample(DRAWS, generator=gen(10))
    assert chi2_pvalue(draws, v) > 1e-3


def test_variance_sampler_estimates_per_band_loss_variance():
    sampler = make_sampler("variance:bins=5,window=4,uniform_prob=0", SMALL)  # bands of 10 timesteps
    spread = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[torch.arange(50) // 10]
    sampler.update(torch.arange(50), torch.zeros(50))  # 10 values per band: every window is full
    # One value per t again: each band's window now holds its last 4 values, at t = 10b+6 … 10b+9,
    # which are 7 + s, 7 − s, 7 + s, 7 − s: sample variance s²·4/3.
    sampler.update(torch.arange(50), 7 + spread * torch.tensor([1.0, -1.0]).repeat(25))
    band_var = torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0]) * 4 / 3
    expected = band_var[torch.arange(50) // 10]
    assert torch.allclose(sampler.probabilities(), (expected / expected.sum()).double())
    draws, _ = sampler.sample(DRAWS, generator=gen(11))
    assert chi2_pvalue(draws, expected) > 1e-3


def test_variance_sampler_is_uniform_until_every_band_has_a_window():
    sampler = make_sampler("variance:bins=5,window=4", SMALL)
    sampler.update(torch.arange(40), torch.randn(40, generator=gen(12)))  # band 4 (t ≥ 40) still empty
    assert torch.equal(sampler.probabilities(), torch.full((50,), 0.02, dtype=torch.float64))


# --- unbiased mode -----------------------------------------------------------------------------

def warmed_loss_sampler():
    sampler = make_sampler("loss-second-moment", LINEAR)
    for i in range(10):
        sampler.update(torch.arange(1000), torch.linspace(0.1, 2, 1000) * (1 + i % 3))
    return sampler


def build_unbiased(name):
    if name == "loss-second-moment":
        return warmed_loss_sampler()
    if name == "variance":
        return make_sampler("variance", LINEAR, variances=torch.rand(1000, generator=gen(13)).tolist(), unbiased=True)
    return make_sampler(name, LINEAR, unbiased=True)


@pytest.mark.parametrize("name", ["logit-normal", "lognormal-edm", "beta:a=0.95,b=0.95", "speed:dual=False",
                                  "speed-2024:dual=False", "loss-second-moment", "variance"])
def test_unbiased_weights_recover_the_uniform_objective(name):
    sampler = build_unbiased(name)
    p = sampler.probabilities()
    w = sampler.importance_weights(torch.arange(1000)).double()
    assert (p * w).sum().item() == pytest.approx(1, rel=1e-5)  # E_p[w] = 1
    loss_curve = 1 + torch.cos(torch.arange(1000) / 100.0) ** 2  # a fixed per-timestep loss
    assert (p * w * loss_curve).sum().item() == pytest.approx(loss_curve.mean().item(), rel=1e-5)
    t, weights = sampler.sample(16, generator=gen(14))
    assert torch.allclose(weights, (1 / (1000 * p[t])).float())


def test_unbiased_monte_carlo_mean_matches_uniform_mean():
    sampler = make_sampler("speed:dual=False", LINEAR, unbiased=True)
    t, w = sampler.sample(DRAWS, generator=gen(15))
    loss_curve = torch.linspace(0.2, 2.0, 1000)
    assert (w * loss_curve[t]).mean().item() == pytest.approx(loss_curve.mean().item(), rel=0.01)


def test_unbiased_refused_where_it_cannot_be_exact():
    with pytest.raises(UserError, match="dual=False"):
        make_sampler("speed", LINEAR, unbiased=True)

    class Implicit(TimestepSampler):
        name = "implicit"
        has_pmf = False
    with pytest.raises(UserError, match="unbiased=False"):
        Implicit(LINEAR, unbiased=True)


# --- state --------------------------------------------------------------------------------------

def trained(spec):
    sampler = make_sampler(spec, SMALL)
    g = gen(16)
    for _ in range(30):
        t = torch.randint(0, 50, (64,), generator=g)
        sampler.update(t, (t.double() / 50 + 0.1) * torch.rand(64, generator=g, dtype=torch.float64))
    return sampler


@pytest.mark.parametrize("spec", ["loss-second-moment", "variance:bins=10,window=8"])
def test_state_round_trip(spec):
    sampler = trained(spec)
    assert not torch.equal(sampler.probabilities(), torch.full((50,), 0.02, dtype=torch.float64))
    state = sampler.state_dict()
    restored = make_sampler(spec, SMALL)
    restored.load_state_dict(state)
    sampler.update(torch.arange(50), torch.full((50,), 100.0))  # the saved state must not follow
    restored_again = make_sampler(spec, SMALL)
    restored_again.load_state_dict(state)
    assert torch.equal(restored.probabilities(), restored_again.probabilities())
    assert not torch.equal(restored.probabilities(), sampler.probabilities())
    a, wa = restored.sample(1000, generator=gen(17))
    b, wb = restored_again.sample(1000, generator=gen(17))
    assert torch.equal(a, b) and torch.equal(wa, wb)
    # And continuing to learn gives the same state on both.
    restored.update(torch.arange(50), torch.ones(50))
    restored_again.update(torch.arange(50), torch.ones(50))
    assert torch.equal(restored.state_dict()["history"]["values"], restored_again.state_dict()["history"]["values"])


@pytest.mark.parametrize("spec", EXPLICIT + ["speed", "speed-2024"])
def test_fixed_samplers_have_no_state_and_repeat_with_a_seed(spec):
    sampler = make_sampler(spec, LINEAR)
    assert sampler.state_dict() == {}
    other = make_sampler(spec, LINEAR)
    other.load_state_dict(sampler.state_dict())
    assert torch.equal(sampler.sample(100, generator=gen(18))[0], other.sample(100, generator=gen(18))[0])


def test_state_from_another_T_is_refused():
    state = trained("loss-second-moment").state_dict()
    with pytest.raises(UserError, match="expects"):
        make_sampler("loss-second-moment", LINEAR).load_state_dict(state)
    with pytest.raises(UserError, match="saved state"):
        make_sampler("variance", SMALL).load_state_dict({"history": {}})
    with pytest.raises(UserError, match="'extra', which this sampler does not write"):
        make_sampler("loss-second-moment", LINEAR).load_state_dict({"history": {**state["history"], "extra": 1}})


# --- errors -------------------------------------------------------------------------------------

def test_every_sampler_is_registered():
    assert {"uniform", "logit-normal", "lognormal-edm", "beta", "speed", "speed-2024", "variance",
            "loss-second-moment"} <= set(available_samplers())


def test_a_beta_with_a_uniform_floor_is_the_mixture_and_without_one_draws_as_it_always_did():
    plain, floored = make_sampler("beta:a=0.68,b=3.2", LINEAR), make_sampler("beta:a=0.68,b=3.2,mix=0.05", LINEAR)
    flat = make_sampler("beta:a=1,b=1", LINEAR).probabilities()  # U(0, 1) rounded: half mass at both ends
    assert torch.allclose(floored.probabilities(), 0.95 * plain.probabilities() + 0.05 * flat, rtol=1e-12)
    v = torch.rand(500, generator=gen(4), dtype=torch.float64).numpy()
    expected = torch.round(torch.from_numpy(stats.beta.ppf(v, 0.68, 3.2)) * 999).long()
    assert torch.equal(plain.sample(500, generator=gen(4))[0], expected)  # mix = 0: the stream of old records
    with pytest.raises(UserError, match=r"mix must be in \[0, 1\)"):
        make_sampler("beta:mix=1", LINEAR)


@pytest.mark.parametrize("spec, options, message", [
    ("logit-normall", {}, "valid choices: .*logit-normal"),
    ("logit-normal", {"sigma": 1}, "valid choices: mean, std, unbiased"),
    ("beta", {"c": 1}, "valid choices: a, b, mix, unbiased"),
    ("logit-normal", {"std": -1}, "std must be a finite positive number"),
    ("lognormal-edm", {"P_std": 0}, "P_std must be a finite positive number"),
    ("beta", {"a": 0}, "a must be a finite positive number"),
    ("speed", {"k": -2}, "k must be a finite positive number"),
    ("speed", {"tau": 2000}, r"tau must be an integer in \[0, T=1000\]"),
    ("speed", {"dual": "yes"}, "dual must be True or False"),
    ("loss-second-moment", {"history": 0}, "history must be an integer >= 1"),
    ("loss-second-moment", {"uniform_prob": 2}, r"uniform_prob must be a number in \[0, 1\]"),
    ("variance", {"variances": [1.0] * 999}, "has 999 values; expected T=1000"),
    ("variance", {"variances": [-1.0] * 1000}, ">= 0"),
    ("variance", {"bins": 0}, r"bins must be an integer in \[1, 1000\]"),
    ("variance", {"window": 1}, "window must be an integer >= 2"),
])
def test_invalid_options_raise_one_clear_error(spec, options, message):
    with pytest.raises(UserError, match=message) as info:
        make_sampler(spec, LINEAR, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [n for n in available_samplers() if not n.startswith("flow-")])
def test_every_sampler_refuses_a_bad_batch_size(name):
    sampler = make_sampler(name, LINEAR)
    for bad in (-1, 2.5, True):
        with pytest.raises(UserError, match="batch_size"):
            sampler.sample(bad)


@pytest.mark.parametrize("name", available_samplers())
def test_every_sampler_draws_an_empty_batch(name):
    # A ragged last shard can be empty on some rank: every sampler, learned or fixed, draws nothing for it
    # rather than one raising where the others return.
    sampler = make_sampler(name, None if name.startswith("flow-") else LINEAR)
    t, weights = sampler.sample(0)
    assert t.shape == (0,) and weights.shape == (0,)


LEARNED = ["adaptive", "adaptive:reward=paper", "adaptive:reward=variance,unbiased=True", "adaptive-bands",
           "credit-proportional", "flow-adaptive"]


@pytest.mark.parametrize("spec", LEARNED)
def test_every_learned_sampler_refuses_to_observe_a_batch_it_did_not_draw_for(spec):
    sampler = make_sampler(spec, None if spec.startswith("flow-") else LINEAR)
    model = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for drawn, x0, message in [(None, torch.zeros(4, 1, 4, 4), r"call sampler\.sample"),
                               (3, torch.zeros(4, 1, 4, 4), r"got a batch of 4 but the last sample\(\) drew 3"),
                               (0, torch.zeros(0, 1, 4, 4), "empty batch")]:
        if drawn is not None:
            sampler.sample(drawn)
        with pytest.raises(UserError, match=message):
            with sampler.observe(model, x0, optimizer=opt):
                pass


@pytest.mark.parametrize("spec, message", [(None, "a spec is a string"), (123, "a spec is a string"),
                                           ("logit-normal:std=1,std=2", "option 'std' is given twice")])
def test_a_spec_that_is_not_one_is_a_user_error(spec, message):
    with pytest.raises(UserError, match=message):
        make_sampler(spec, LINEAR)


def test_invalid_calls_raise_user_errors():
    sampler = make_sampler("loss-second-moment", SMALL)
    with pytest.raises(UserError, match="one loss per timestep"):
        sampler.update(torch.arange(3), torch.ones(4))
    with pytest.raises(UserError, match=r"outside \[0, 49\]"):
        sampler.update(torch.tensor([50]), torch.ones(1))
    with pytest.raises(UserError, match="non-finite"):
        sampler.update(torch.tensor([1]), torch.tensor([float("nan")]))


@pytest.mark.parametrize("name", ["uniform", "logit-normal", "beta", "speed", "loss-second-moment", "variance",
                                  "adaptive"])
@pytest.mark.parametrize("device, message", [("gpu", "unknown device 'gpu'; valid here: cpu"),
                                             ("cuda:7", "not available on this machine; valid here: cpu")])
def test_a_wrong_device_is_one_clear_error(name, device, message):
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    sampler = make_sampler(name, SMALL)
    with pytest.raises(UserError, match=message) as info:
        sampler.sample(4, device, x0=torch.zeros(4, 1, 8, 8))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["adaptive", "adaptive-bands", "credit-proportional", "loss-second-moment",
                                  "variance", "flow-adaptive"])
def test_a_state_that_is_not_the_samplers_own_is_a_user_error(name):
    """A checkpoint of another method, or any dict, handed to load_state_dict: one line that says so, not a
    KeyError from inside the sampler."""
    sampler = make_sampler(name) if name.startswith("flow-") else make_sampler(name, LINEAR)
    other = make_sampler("adaptive-bands" if name == "adaptive" else "adaptive", LINEAR).state_dict()
    for state in ({"foo": 1}, other, None, [1, 2]):
        with pytest.raises(UserError) as info:
            sampler.load_state_dict(state)
        assert "\n" not in str(info.value)
