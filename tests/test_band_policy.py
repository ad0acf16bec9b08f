"""adaptive-bands: the credit's policy gradient on a softmax over log-spaced bands of t."""
import numpy as np
import pytest
import torch
from scipy import stats

from timestep_sampling import NoiseSchedule, UserError, make_sampler
from timestep_sampling.methods import make_method
from timestep_sampling.samplers.band_policy import BandPolicySampler
from test_adaptive import train_step
from test_credit import band_problem, run_sampler


def test_it_starts_uniform_and_draws_from_the_distribution_it_reports():
    sampler = BandPolicySampler(NoiseSchedule("linear", T=1000), seed=0)
    assert torch.allclose(sampler.probabilities(), torch.full((1000,), 1e-3, dtype=torch.float64))
    with torch.no_grad():  # a tilted policy: most mass on the first bands, the floor elsewhere
        sampler.policy.theta.copy_(torch.linspace(3.0, -3.0, len(sampler.width)))
    sampler._pmf_cache = None
    p = sampler.probabilities()
    assert abs(p.sum().item() - 1) < 1e-12 and p.min().item() >= 0.3 / 1000 - 1e-15
    t = sampler.sample(200_000, generator=torch.Generator().manual_seed(0))[0]
    edges = [0, 1, 3, 10, 30, 100, 300, 1000]
    observed = np.histogram(t.numpy(), bins=edges)[0]
    expected = np.array([p[a:b].sum().item() for a, b in zip(edges[:-1], edges[1:])]) * len(t)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


# Constructed problem (test_credit.band_problem: only t in [10, 40) of T = 100 can lower the bound, 30% of
# the timesteps). Measured (20 bands): critic 0.30 → 0.43 / 0.59 / 0.60 after 10 / 50 / 100 updates (its fixed
# point at c_ent = 0.5; without the probes 0.38 / 0.50 / 0.52); reinforce 0.36 / 0.72 / 0.78; the global Beta 0.47 / 0.57 after 50 / 100 (test_credit.py).
@pytest.mark.parametrize("estimator, reached", [("critic", 0.55), ("reinforce", 0.6)])
def test_its_mass_moves_into_the_band_that_helps_and_the_frozen_copy_stays_uniform(estimator, reached):
    learned = BandPolicySampler(NoiseSchedule("linear", T=100), update_every=1, bins=17, bands=20, seed=0,
                                estimator=estimator)
    assert run_sampler(learned, 50) > reached
    assert learned.skipped_updates == 0 and learned.last_stats["updates"] == 50
    frozen = BandPolicySampler(NoiseSchedule("linear", T=100), update_every=1, bins=17, bands=20, lr=0, seed=0,
                               estimator=estimator)
    assert run_sampler(frozen, 10) == pytest.approx(0.30, abs=1e-12)


def test_state_round_trips_and_resumes_the_same_draws():
    schedule, model, x0 = band_problem()
    sampler = BandPolicySampler(schedule, update_every=2, bins=17, bands=20, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        train_step(sampler, model, opt, schedule, x0, g)
    clone = BandPolicySampler(schedule, update_every=2, bins=17, bands=20, seed=3)
    clone.load_state_dict(sampler.state_dict())
    assert torch.equal(clone.probabilities(), sampler.probabilities())
    assert torch.equal(clone.sample(64)[0], sampler.sample(64)[0])  # the sampler's own stream, resumed
    assert not torch.allclose(sampler.probabilities(), torch.full((100,), 0.01, dtype=torch.float64))
    with pytest.raises(UserError):
        BandPolicySampler(schedule, bands=10).load_state_dict(sampler.state_dict())


def test_the_preset_and_bad_options():
    sampler, weighting = make_method("adaptive-bands", NoiseSchedule("linear", T=1000))
    assert isinstance(sampler, BandPolicySampler) and sampler.uniform_mix == 0.3
    for spec in ["adaptive-bands:bands=0", "adaptive-bands:lr=-1", "adaptive-bands:uniform_mix=1",
                 "adaptive-bands:credit_delta=-0.1", "adaptive-bands:entropy_coef=nan",
                 "adaptive-bands:estimator=adam", "adaptive-bands:decay=2", "adaptive-bands:theta=1;2"]:
        with pytest.raises(UserError) as e:
            make_sampler(spec, NoiseSchedule("linear", T=100))
        assert "\n" not in str(e.value)


def test_observe_needs_the_batch_it_drew_for():
    schedule, model, x0 = band_problem()
    sampler = BandPolicySampler(schedule, bins=17)
    with pytest.raises(UserError):
        with sampler.observe(model, x0):
            pass


def test_its_final_density_frozen_from_step_0_is_the_density_it_logged(tmp_path):
    """bench's adaptive-bands-final: the logits recovered from the logged density (p(t)·T, 3 digits) give
    back that density, frozen (lr = 0)."""
    import json

    from timestep_sampling import bench
    from timestep_sampling import train as train_module
    from timestep_sampling.bench import run_name

    learned = BandPolicySampler(NoiseSchedule("linear", T=100))  # the preset's bands
    with torch.no_grad():
        learned.policy.theta.copy_(torch.linspace(2.0, -4.0, len(learned.width)))
    learned._pmf_cache = None
    logged = [float(f"{v * 100:.3g}") for v in learned.probabilities().tolist()]
    settings = bench.make_settings(tmp_path, methods="uniform", T=100)
    folder = tmp_path / "runs" / run_name("adaptive-bands", "linear", 0)
    folder.mkdir(parents=True)
    densities = [{"step": 0, "density": [0.01] * 100}, {"step": 5, "density": [v / 100 for v in logged]}]
    (folder / train_module.DENSITY_LOG).write_text("".join(json.dumps(d) + "\n" for d in densities))
    (folder / "metrics.jsonl").write_text("")
    spec = bench.frozen_final_method(settings, "adaptive-bands-final", "linear", 0)
    assert spec.startswith("adaptive-bands:lr=0,theta=") and spec.endswith("+none")
    frozen, _ = make_method(spec, NoiseSchedule("linear", T=100))
    assert frozen.lr == 0
    assert (frozen.probabilities() - learned.probabilities()).abs().sum().item() / 2 < 1e-3


def test_a_held_out_probe_needs_its_images_and_the_trainer_keeps_them_out_of_training():
    from timestep_sampling.train import held_out_for_probe

    schedule, model, x0 = band_problem()
    sampler = BandPolicySampler(schedule, bins=17, holdout=0.1)
    sampler.sample(len(x0))
    with pytest.raises(UserError, match="probe_x0"):
        with sampler.observe(model, x0):
            pass
    with sampler.observe(model, x0, probe_x0=x0[:8]):  # with its images it updates
        pass
    assert sampler.updates == 1
    with pytest.raises(UserError, match="holdout"):
        BandPolicySampler(schedule, holdout=1.0)

    images = torch.arange(100.0)[:, None]
    train, held = held_out_for_probe(images, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert sorted(torch.cat([train, held]).squeeze(1).tolist()) == list(range(100))  # a split, nothing lost
    assert torch.equal(held, held_out_for_probe(images, 0.1, seed=3)[1])  # the same on every rank and resume
    assert held_out_for_probe(images, 0.0, seed=3) == (images, None)
