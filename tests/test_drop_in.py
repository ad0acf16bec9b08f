"""The drop-in contract: `sampler.observe(model, x0, optimizer=opt)` with the model as an nn.Module, a plain
callable model(x_t, t) -> ε (a lambda around a diffusers UNet), or a callable around DistributedDataParallel,
for every learned sampler; and the credit of the user's own weighted objective (credit_target)."""
import pytest
import torch
from diffusers import UNet2DModel
from torch import nn

from multiproc import run_ranks
from timestep_sampling import NoiseSchedule, UserError, make_method, make_sampler, make_weighting
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.flow import RectifiedFlow
from timestep_sampling.samplers.credit import first_order_credit
from timestep_sampling.weighting import LossWeighting
from test_adaptive import BandX0Model, ConvEps, digits


def adam_with_state(model, schedule, x0, steps=3):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):  # give Adam a second moment
        mse_per_sample(model, schedule, x0, torch.randint(schedule.T, (len(x0),))).mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_a_callable_model_gets_the_modules_exact_credit():
    """A lambda around the module reaches the weights through the optimiser and takes the same derivative
    by reverse mode that the module gets by forward mode."""
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50).double()
    x0 = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    opt = adam_with_state(model, schedule, x0)
    model.eval()  # the credit puts a module in eval mode itself; a callable runs as its modules are set
    t = torch.randint(50, (6,))
    options = dict(strata=8, bins=17)
    module = first_order_credit(model, schedule, x0, t, opt, generator=torch.Generator().manual_seed(3), **options)
    plain = first_order_credit(lambda x, s: model(x, s), schedule, x0, t, opt,
                               generator=torch.Generator().manual_seed(3), **options)
    assert torch.allclose(plain, module, rtol=1e-10, atol=1e-12)
    assert module.abs().min() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("model, optimizer, says", [
    (lambda x, t: x, False, "pass optimizer="),
    ("a string", True, "nn.Module or a callable"),
])
def test_what_observe_cannot_use_is_one_user_error(model, optimizer, says):
    schedule = NoiseSchedule("linear", T=50)
    net = ConvEps(50)
    sampler = make_sampler("adaptive", schedule, update_every=1, bins=17)
    x0 = torch.randn(4, 1, 4, 4)
    sampler.sample(4, "cpu", x0=x0)
    opt = torch.optim.Adam(net.parameters()) if optimizer else None
    with pytest.raises(UserError, match=says) as error:
        with sampler.observe(model, x0, optimizer=opt):
            pass
    assert "\n" not in str(error.value)


def unet_loop(spec, steps, flow=False):
    """The README's loop with the model passed as a plain callable; returns the sampler."""
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=1000)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      layers_per_block=1, norm_num_groups=8)
    model = lambda x, t: net(x, t).sample  # noqa: E731 (the contract under test)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sampler = make_sampler(spec, None if flow else schedule)
    data, process = digits(64), RectifiedFlow()
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (16,))]
        t, w = sampler.sample(len(x0), "cpu", x0=x0)
        with sampler.observe(model, x0, optimizer=opt):
            loss = (w * (process.loss(model, x0, t) if flow else mse_per_sample(model, schedule, x0, t))).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
    return sampler


@pytest.mark.parametrize("spec, flow", [("adaptive:update_every=2,bins=17", False),
                                        ("adaptive-bands:update_every=2,bins=17", False),
                                        ("flow-adaptive:update_every=2", True)])
def test_every_learned_sampler_learns_from_a_callable_diffusers_model(spec, flow):
    sampler = unet_loop(spec, steps=4, flow=flow)
    assert sampler.updates == 2 and sampler.skipped_updates == 0
    assert sampler.last_stats["reward_std"] > 0 if "reward_std" in sampler.last_stats else True
    assert torch.isfinite(sampler.last_rewards).all() and sampler.last_rewards.abs().max() > 0


# ---------------------------------------------------------------------------------------------------
# DistributedDataParallel in a loop of one's own


def ddp_loop_worker(rank, dump, wrap):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.cuda.is_available = lambda: False  # forked CPU ranks (tests/test_distributed.py's cpu_only)
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    ddp = DDP(ConvEps(50))
    reductions = []

    def counting_hook(state, bucket):  # every gradient all-reduce DDP makes goes through here
        reductions.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, counting_hook)
    model = {"callable": lambda x, t: ddp(x, t), "ddp": ddp, "none": ddp}[wrap]
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    sampler = (make_sampler("uniform", schedule) if wrap == "none" else
               make_sampler("adaptive", schedule, update_every=2, bins=17, seed=0))
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for _ in range(6):
        x0 = torch.randn(8, 1, 4, 4, generator=g)
        t, w = sampler.sample(len(x0), "cpu", x0=x0)
        with sampler.observe(model, x0, optimizer=opt):
            loss = (w * mse_per_sample(model, schedule, x0, t, torch.randn(x0.shape, generator=g))).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
    torch.save({"sampler": sampler.state_dict(), "model": ddp.module.state_dict(), "reductions": reductions},
               f"{dump}/rank{rank}.pt")


@pytest.mark.parametrize("wrap", ["callable", "ddp"])
def test_a_ddp_model_in_a_users_loop_keeps_ranks_identical_and_adds_no_all_reduce(tmp_path, wrap):
    """Two gloo ranks, each with its own data: the learned sampler's state and the model are identical on
    both ranks, and the credit's own passes make no gradient all-reduce (as many as the uniform sampler's)."""
    results = {}
    for case in (wrap, "none"):
        dump = tmp_path / case
        dump.mkdir()
        run_ranks(ddp_loop_worker, str(dump), case, init_file=dump / "init")
        results[case] = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(2)]
    a, b = results[wrap]
    assert a["sampler"]["updates"] == 3 and a["sampler"]["skipped_updates"] == 0
    for key, value in a["sampler"]["policy"].items():
        assert torch.equal(value, b["sampler"]["policy"][key])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key])
    assert a["reductions"] == results["none"][0]["reductions"] and len(a["reductions"]) >= 6


# ---------------------------------------------------------------------------------------------------
# The credit of the user's objective


class BandWeighting(LossWeighting):
    """w_t = 1 on [70, 80) and 0 elsewhere: only that band can lower the weighted objective."""

    name = "band"

    def epsilon_weights(self):
        w = torch.zeros(self.T, dtype=torch.float64)
        w[70:80] = 1.0
        return w


def two_band_problem():
    """Data x0 ≡ 1; the model's x0-prediction is wrong (−1) on t in [10, 20) and in [70, 80), right elsewhere.
    Training on either band lowers the bound; only the second can lower BandWeighting's objective."""
    schedule = NoiseSchedule("linear", T=100)
    m = [1.0] * 10
    m[1] = m[7] = -1.0
    return schedule, BandX0Model(schedule, m), torch.ones(64, 1, 2, 2, dtype=torch.float64)


def test_the_objective_credit_ranks_the_only_band_that_lowers_the_weighted_objective_first():
    schedule, model, x0 = two_band_problem()
    weighting = BandWeighting(schedule)
    t = torch.linspace(0, 99, len(x0)).long()
    first, second = (t >= 10) & (t < 20), (t >= 70) & (t < 80)
    options = dict(generator=torch.Generator().manual_seed(0), bins=17)
    bound = first_order_credit(model, schedule, x0, t, **options)
    assert bound[first].min() > 0 and bound[second].min() > 0  # the bound is lowered by both bands
    objective = first_order_credit(model, schedule, x0, t, target=weighting, loss_weights=weighting.weights(t),
                                   generator=torch.Generator().manual_seed(0), bins=17)
    assert objective[second].min() > 0
    assert objective[~second].abs().max() < 1e-9 * objective[second].min()
    assert torch.equal(torch.argsort(objective, descending=True)[:second.sum()].sort().values,
                       torch.nonzero(second).flatten())


@pytest.mark.parametrize("how", ["weighting", "make_method"])
def test_the_learned_sampler_moves_to_the_band_of_its_objective(how):
    """With the weighting as its target (one keyword in the drop-in loop) or paired by make_method, the
    learned Beta moves its mass into [70, 80); the bound's credit would also pull it to [10, 20)."""
    schedule, model, x0 = two_band_problem()
    weighting = BandWeighting(schedule)
    options = dict(update_every=1, bins=17, lr=0.1, seed=0)
    if how == "weighting":
        sampler = make_sampler("adaptive", schedule, credit_target=weighting, **options)
    else:
        from timestep_sampling.methods import METHODS
        METHODS["test-band-objective"] = ("adaptive:credit_target=objective", "none")
        try:
            sampler, paired = make_method("test-band-objective", schedule, **options)
        finally:
            del METHODS["test-band-objective"]
        assert paired is sampler.loss_weighting
        sampler.pair_weighting(weighting)  # as make_method does, with the constructed weighting
    opt = torch.optim.SGD(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    band = slice(70, 80)
    initial = sampler.probabilities()[band].sum().item()
    for _ in range(80):  # measured: [70, 80) holds 0.10 -> 0.28 of the mass, [10, 20) 0.09 -> 0.00
        t, w = sampler.sample(len(x0), "cpu", generator=g)
        with sampler.observe(model, x0, optimizer=opt):
            noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
            loss = (w * weighting.weights(t) * mse_per_sample(model, schedule, x0, t, noise)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
    final = sampler.probabilities()[band].sum().item()
    assert sampler.skipped_updates == 0
    assert final > 2 * initial and final > sampler.probabilities()[10:20].sum().item(), (initial, final)


def test_the_objective_target_needs_the_loops_weighting():
    schedule = NoiseSchedule("linear", T=50)
    sampler = make_sampler("adaptive:credit_target=objective", schedule, update_every=1, bins=17)
    model, x0 = ConvEps(50), torch.randn(4, 1, 4, 4)
    sampler.sample(4, "cpu", x0=x0)
    with pytest.raises(UserError, match="make_method"):
        with sampler.observe(model, x0):
            pass
    with pytest.raises(UserError, match="flow weighting"):
        make_sampler("flow-adaptive", None, credit_target=make_weighting("min-snr", schedule))
    sampler, weighting = make_method("adaptive-min-snr", schedule)
    assert sampler.loss_weighting is weighting and "objective" in repr(sampler)


def test_the_loop_weight_of_a_sample_is_its_weighting_times_its_importance_weight():
    schedule = NoiseSchedule("linear", T=1000)
    sampler, weighting = make_method("adaptive-unbiased", schedule)
    t = torch.tensor([0, 10, 500, 999])
    importance = sampler.importance_weights(t)
    assert torch.allclose(importance, 1 / (1000 * sampler.probabilities()[t]).float())
    assert importance.max() <= 1 / 0.3 + 1e-6  # the floor bounds the weights
    from timestep_sampling.samplers.credit import loop_weights
    assert torch.allclose(loop_weights("objective", weighting, t, importance), importance.double())
    min_snr = make_weighting("min-snr", schedule)
    assert torch.allclose(loop_weights(min_snr, None, t, importance), min_snr.weights(t).double() * importance.double())
    assert loop_weights("bound", min_snr, t) is None  # the bound's credit ignores the loop's weighting


def test_the_flow_sampler_credits_a_weighted_velocity_objective():
    torch.manual_seed(0)
    sampler, weighting = make_method("flow-adaptive-min-snr", None, update_every=1)
    assert sampler.loss_weighting is weighting
    model, flow = ConvEps(1000), RectifiedFlow()
    model.embed = nn.Embedding(1001, 8)  # conditioning on t·1000 rounded below
    net = lambda x, t: model(x, t.round().long())  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x0 = torch.randn(16, 1, 4, 4)
    for _ in range(2):
        t, w = sampler.sample(len(x0), "cpu")
        with sampler.observe(net, x0, optimizer=opt):
            (w * weighting.weights(t) * flow.loss(net, x0, t)).mean().backward()
            opt.step()
            opt.zero_grad()
    assert sampler.updates == 2 and torch.isfinite(sampler.last_rewards).all()


def test_a_callable_is_differentiated_in_forward_mode_when_its_module_can_be_found(monkeypatch):
    """A lambda, a functools.partial and a bound method reach their module, and the credit is then taken by
    forward mode (the reverse passes are not run); a callable object that hides its module falls back to
    reverse mode, with the same credit."""
    import functools
    import timestep_sampling.samplers.credit as credit_module
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50).double()
    x0 = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    opt = adam_with_state(model, schedule, x0)
    model.eval()
    t = torch.randint(50, (6,))

    def credit(net):
        return first_order_credit(net, schedule, x0, t, opt, generator=torch.Generator().manual_seed(3), strata=8,
                                  bins=17)

    class Hidden:  # holds the module where no closure, partial or bound self shows it
        def __init__(self):
            self.nets = {"eps": model}

        def __call__(self, x, s):
            return self.nets["eps"](x, s)

    reference = credit(model)
    reverse = credit_module._reverse_mode
    calls = []
    monkeypatch.setattr(credit_module, "_reverse_mode", lambda *a: calls.append(1) or reverse(*a))
    for found in (lambda x, s: model(x, s), functools.partial(model.forward), model.forward):
        assert credit_module.owning_module(found, list(model.parameters())) is model
        assert torch.allclose(credit(found), reference, rtol=1e-10, atol=1e-12)
    assert calls == []
    hidden = Hidden()
    assert credit_module.owning_module(hidden, list(model.parameters())) is None
    assert torch.allclose(credit(hidden), reference, rtol=1e-10, atol=1e-12)
    assert calls == [1]
