"""First-order credit (samplers/credit.py), the learned sampler on it, and its non-RL control, on problems
whose answers are known."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from timestep_sampling import NoiseSchedule, make_sampler
from timestep_sampling.bound import stratified_timesteps
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.reward_signal import t_dependence
from timestep_sampling.samplers.adaptive import AdaptiveSampler
from timestep_sampling.samplers.credit import bound_probe, first_order_credit, preconditioner
from timestep_sampling.samplers.credit_proportional import CreditProportionalSampler
from test_adaptive import BandX0Model, ConvEps, train_step

BAND = slice(10, 40)  # BandX0Model's band [10, 40) of T = 100: the only timesteps left to learn


def band_problem():
    """Data x0 ≡ 1; the model's x0-prediction is 1 (right) everywhere except on t in [10, 40), where it is −1.
    Training on t in that band lowers the bound; training anywhere else changes nothing."""
    schedule = NoiseSchedule("linear", T=100)
    model = BandX0Model(schedule, [1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    return schedule, model, torch.ones(64, 1, 2, 2, dtype=torch.float64)


@pytest.mark.parametrize("delta", [0.0, 1e-4])
def test_credit_is_the_samples_gradient_against_the_preconditioned_bound_gradient(delta):
    """c_b = g_b · P∇L̂ / rms(P∇L̂), with P = 1/(√v̂ + ε) of the Adam state, computed here by autograd; exact
    by forward mode (delta 0) and to rounding by the central difference."""
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50).double()
    x0 = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # give Adam a second moment
        mse_per_sample(model, schedule, x0, torch.randint(50, (6,))).mean().backward()
        opt.step()
        opt.zero_grad()
    t = torch.randint(50, (6,))
    before = [p.detach().clone() for p in model.parameters()]
    credit = first_order_credit(model, schedule, x0, t, opt, generator=torch.Generator().manual_seed(3),
                                strata=8, delta=delta, bins=17)

    gen = torch.Generator().manual_seed(3)  # the same draws, by hand
    model.eval()
    probe = bound_probe(model, schedule, x0, 8, gen, bins=17, variance="fixed-large")
    params = list(model.parameters())
    direction = [g * preconditioner(opt, p) for g, p in zip(torch.autograd.grad(probe, params), params)]
    rms = torch.sqrt(sum((d ** 2).sum() for d in direction) / sum(d.numel() for d in direction))
    noise = torch.randn(x0.shape, generator=gen).double()
    expected = []
    for b in range(len(x0)):
        loss = mse_per_sample(model, schedule, x0[b:b + 1], t[b:b + 1], noise[b:b + 1]).sum()
        grads = torch.autograd.grad(loss, params)
        expected.append(sum((g * d).sum() for g, d in zip(grads, direction)) / rms)
    assert torch.allclose(credit, torch.stack(expected).detach(), rtol=1e-12 if delta == 0 else 1e-5, atol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # restored bit for bit
    assert all(p.grad is None for p in model.parameters())  # the user's .grad untouched


def test_preconditioner_is_the_identity_for_sgd_and_before_adams_first_step():
    p = nn.Parameter(torch.ones(3))
    assert preconditioner(torch.optim.SGD([p], lr=0.1), p) is None
    assert preconditioner(torch.optim.Adam([p]), p) is None
    assert preconditioner(None, p) is None
    opt = torch.optim.Adam([p], eps=1e-8, betas=(0.9, 0.99))
    p.grad = torch.tensor([1.0, 2.0, 4.0])
    opt.step()
    v_hat = torch.tensor([1.0, 4.0, 16.0])  # (1 − β2) g² / (1 − β2¹)
    assert torch.allclose(preconditioner(opt, p), 1 / (v_hat.sqrt() + 1e-8))


@pytest.mark.parametrize("target", ["bound", "loss"])
def test_credit_ranks_the_band_that_helps_the_bound_first(target):
    """Both targets (the bound; the simple loss under uniform t) can only be lowered inside the band."""
    schedule, model, x0 = band_problem()
    t = torch.arange(0, 100, 100 // len(x0))[:len(x0)]
    credit = first_order_credit(model, schedule, x0, t, generator=torch.Generator().manual_seed(0), bins=17,
                                target=target)
    inside = (t >= BAND.start) & (t < BAND.stop)
    assert credit[inside].min() > 0
    assert credit[~inside].abs().max() < 1e-6 * credit[inside].min()


def run_sampler(sampler, updates, seed=0):
    schedule, model, x0 = band_problem()
    opt = torch.optim.SGD(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(updates * sampler.update_every):
        train_step(sampler, model, opt, schedule, x0, g)
    return sampler.probabilities()[BAND].sum().item()


# The band holds 30% of the timesteps. Within 100 updates, the credit-driven global Beta must put more than
# half of its mass there; the paper's reward, with the same settings, is reported beside it. Measured:
# credit 0.30 → 0.47 / 0.57 / 0.72 after 50 / 100 / 200 updates; paper 0.30 → 0.36 / 0.38 / 0.36.
UPDATES = 100


@pytest.mark.parametrize("reward", ["credit", "paper"])
def test_learned_sampler_moves_its_mass_into_the_band(reward, capsys):
    sampler = AdaptiveSampler(NoiseSchedule("linear", T=100), conditioned=False, update_every=1, bins=17,
                              reward=reward, lr=5e-2, seed=0)
    initial = sampler.probabilities()[BAND].sum().item()
    final = run_sampler(sampler, UPDATES)
    with capsys.disabled():
        print(f"\n[{reward}] mass on the band after {UPDATES} updates: {initial:.3f} -> {final:.3f}")
    assert sampler.skipped_updates == 0
    if reward == "credit":
        assert final > 0.5, (initial, final)


def test_credit_proportional_control_moves_its_mass_into_the_band():
    sampler = CreditProportionalSampler(NoiseSchedule("linear", T=100), update_every=1, bins=17, bands=20)
    assert sampler.probabilities()[BAND].sum().item() == pytest.approx(0.30)
    final = run_sampler(sampler, 10)
    # 6 of the 18 log bands lie in the band: standardised, their z is +1.41 against −0.71 elsewhere, so at
    # τ = 1 and m = 0.3 the band's mass tends to 0.7 · 30e^2.12/(30e^2.12 + 70) + 0.3 · 0.3 = 0.64.
    assert final > 0.55, final
    # The uniform share keeps every timestep drawn.
    assert sampler.probabilities().min().item() >= sampler.uniform_mix / 100 - 1e-12


def test_credit_proportional_pmf_is_uniform_for_equal_credit_and_its_state_round_trips():
    schedule = NoiseSchedule("linear", T=1000)
    sampler = CreditProportionalSampler(schedule, bands=50)
    sampler.band_seen[:] = 1
    assert torch.allclose(sampler.probabilities(), torch.full((1000,), 1e-3, dtype=torch.float64))
    sampler.band_credit[:3] = 2.0
    p = sampler.probabilities()
    assert p[0] > p[500] and abs(p.sum().item() - 1) < 1e-12
    clone = CreditProportionalSampler(schedule, bands=50)
    clone.load_state_dict(sampler.state_dict())
    assert torch.equal(clone.probabilities(), p)


def test_the_diagnostic_finds_a_planted_dependence_and_none_in_shuffled_rewards():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 1000, 2560)
    update = np.repeat(np.arange(20), 128)
    reward = rng.normal(size=len(t)) + 0.5 * (t < 100) + rng.normal(size=20)[update]  # per-update offsets
    planted = t_dependence(t, reward, update)
    assert planted["p"] < 1e-6 and planted["explained"] > 0.01
    assert planted["mean"][0] > max(planted["mean"][1:])
    shuffled = t_dependence(t, rng.permutation(reward), update)
    assert shuffled["p"] > 0.01 and shuffled["explained"] < 0.01


def test_stratified_timesteps_still_cover_every_timestep_once_per_stratum():
    t, w = stratified_timesteps(1000, exact_below=20, strata=80, seed=1)
    assert list(t[:20]) == list(range(20)) and w.sum().item() == pytest.approx(1000)


def test_credit_options_are_checked():
    schedule = NoiseSchedule("linear", T=100)
    from timestep_sampling import UserError
    for spec in ["adaptive:reward=nope", "adaptive:credit_delta=-1e-3", "adaptive:uniform_mix=1",
                 "credit-proportional:credit_delta=nan", "adaptive-bands:credit_delta=-1",
                 "adaptive:credit_target=fid",
                 "credit-proportional:temperature=0",
                 "credit-proportional:uniform_mix=2", "credit-proportional:bands=0"]:
        with pytest.raises(UserError) as e:
            make_sampler(spec, schedule)
        assert "\n" not in str(e.value)


def test_reward_signal_runs_on_a_checkpoint_from_the_command_line(tmp_path, capsys):
    from timestep_sampling.cli import main

    run = tmp_path / "run"
    cheap = tmp_path / "cheap.json"  # the bound is not under test here
    cheap.write_text(json.dumps({"final_exact": False, "eval_exact_below": 0, "eval_strata": 2}))
    assert main(["train", "--steps", "2", "--T", "50", "--batch-size", "32", "--num-samples", "0", "--no-progress",
                 "--eval-every", "0", "--checkpoint-every", "2", "--out", str(run), "--config", str(cheap)]) == 0
    assert main(["analyze", "reward-signal", "--run", str(run), "--updates", "3", "--groups", "4",
                 "--no-progress", "--kept", "2"]) == 0
    out = capsys.readouterr().out
    assert "paper: t explains" in out and "credit: t explains" in out and "kept: t explains" in out
    record = json.loads((run / "analysis" / "reward_signal.json").read_text())
    assert set(record["estimators"]) == {"paper", "credit", "kept"} and record["updates"] == 3
    assert record["kept"] == 2
    fresh, kept = record["estimators"]["credit"], record["estimators"]["kept"]
    assert fresh["mean"] != kept["mean"]  # the kept gradient's credit differs from update 1 on
    assert all(e["samples"] == 96 and 0 <= e["explained"] <= 1 for e in record["estimators"].values())
    assert (run / "analysis" / "reward_signal.png").stat().st_size > 0


def test_a_plain_step_of_the_global_beta_runs_no_policy_until_the_next_update():
    """The pair (α, β) is kept between updates, so drawing t needs no policy forward and no read-back."""
    schedule, model, x0 = band_problem()
    sampler = AdaptiveSampler(schedule, update_every=3, bins=17, seed=0)
    calls = []
    forward = sampler.policy.forward
    sampler.policy.forward = lambda *a: calls.append(1) or forward(*a)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the update comes at the first step, then two plain steps
        train_step(sampler, model, opt, schedule, x0, g)
    assert sampler.updates == 1 and len(calls) == 3  # the first draw, the update's log-prob, the next draw
    before = sampler.concentrations()
    train_step(sampler, model, opt, schedule, x0, g)  # an update: the next draw uses the new pair
    t = sampler.sample(4096, generator=torch.Generator().manual_seed(1))[0]
    fresh = AdaptiveSampler(schedule, bins=17, seed=0)
    fresh.load_state_dict(sampler.state_dict())
    assert torch.equal(t, fresh.sample(4096, generator=torch.Generator().manual_seed(1))[0])
    assert not torch.equal(before[0], sampler.concentrations()[0])


def test_a_uniform_floor_draws_from_the_mixture_it_reports():
    """uniform_mix=m: t from m·uniform + (1 − m)·Beta; probabilities() is that mixture (chi-square, 6 bands)."""
    from scipy import stats

    sampler = AdaptiveSampler(NoiseSchedule("linear", T=1000), uniform_mix=0.3, seed=0)
    with torch.no_grad():
        sampler.policy.raw.copy_(torch.tensor([-2.0, 1.0]))  # α ≈ 0.13, β ≈ 1.31: most mass at small t
    sampler._ab_cache = sampler._pmf_cache = None
    t = sampler.sample(200_000, generator=torch.Generator().manual_seed(0))[0]
    edges = [0, 2, 20, 100, 300, 600, 1000]
    observed = np.histogram(t.numpy(), bins=edges)[0]
    p = sampler.probabilities()
    expected = np.array([p[a:b].sum().item() for a, b in zip(edges[:-1], edges[1:])]) * len(t)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert p[600:].sum() > 0.3 * 0.4 - 1e-9  # the floor keeps the uniform share of the large timesteps


def test_the_bound_is_probed_on_the_images_given():
    """probe_x0 = the batch is the default; other images change the direction, hence the credit."""
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50).double()
    x0, held = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randn(8, 1, 4, 4, dtype=torch.float64)
    t = torch.randint(50, (6,))

    def credit(**kw):
        return first_order_credit(model, schedule, x0, t, generator=torch.Generator().manual_seed(3), strata=8,
                                  bins=17, **kw)
    assert torch.equal(credit(), credit(probe_x0=x0))
    assert not torch.allclose(credit(), credit(probe_x0=held))


def test_exact_credit_runs_through_the_trainers_unet_and_matches_autograd():
    """Forward mode through the diffusers UNet (GroupNorm, the attention of its middle block): the exact credit is
    g_b · d to float32 rounding, where a central difference at the old default δ = 1e-3 is not."""
    from timestep_sampling.models import make_unet
    from timestep_sampling.samplers.credit import directional_credit, eval_mode

    torch.manual_seed(0)
    schedule, model = NoiseSchedule("linear", T=1000), make_unet(8, 1, "tiny")
    x0, t = torch.randn(6, 1, 8, 8), torch.tensor([0, 3, 10, 100, 500, 999])
    noise = torch.randn_like(x0)

    def probe():
        return bound_probe(model, schedule, x0, 8, torch.Generator().manual_seed(1), bins=256, variance="fixed-large")

    def credit(delta):
        return directional_credit(model, probe, lambda net: mse_per_sample(net, schedule, x0, t, noise), delta=delta)

    exact, coarse = credit(0.0), credit(1e-3)
    params = list(model.parameters())
    with eval_mode(model):
        direction = torch.autograd.grad(probe(), params)
        rms = torch.sqrt(sum((d.double() ** 2).sum() for d in direction) / sum(d.numel() for d in direction))
        expected = torch.stack([
            sum((g.double() * d.double()).sum() for g, d in zip(torch.autograd.grad(
                mse_per_sample(model, schedule, x0[b:b + 1], t[b:b + 1], noise[b:b + 1]).sum(), params), direction)) / rms
            for b in range(len(t))])
    scale = expected.abs().max()
    assert (exact - expected).abs().max() < 1e-4 * scale
    assert (coarse - expected).abs().max() > 1e-2 * scale
    assert all(p.grad is None for p in params)


def test_loss_probe_is_an_unbiased_estimate_of_the_uniform_t_loss():
    """E[loss_probe] = (1/T) Σ_t E_ε mse(t): against the exact average over every t with the same noise law."""
    from timestep_sampling.samplers.credit import loss_probe

    torch.manual_seed(0)
    schedule, model = NoiseSchedule("linear", T=50), ConvEps(50).double()
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([loss_probe(model, schedule, x0, 10, gen) for _ in range(400)])
        noise = torch.randn((2000, 1, 4, 4), generator=gen, dtype=torch.float64)
        t = torch.arange(50).repeat(40)
        exact = mse_per_sample(model, schedule, x0.expand(2000, -1, -1, -1), t, noise).mean()
    assert abs(draws.mean() - exact) < 4 * draws.std() / 400 ** 0.5 + 4e-3 * exact
