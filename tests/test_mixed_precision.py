"""The credit under a loop's mixed precision: its passes run in the weights' own precision (credit.full_precision),
so the credit taken inside a bf16 autocast region, or through a forward that Accelerate wrapped in autocast, is
the fp32 credit; and the exact credit's forward mode, which fails under CPU autocast, runs."""
import types

import torch

from timestep_sampling import NoiseSchedule
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.samplers.credit import first_order_credit, gradient_rewards
from test_adaptive import ConvEps
from test_drop_in import adam_with_state


def setup(seed=0):
    torch.manual_seed(seed)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50)
    x0 = torch.randn(16, 1, 6, 6)
    opt = adam_with_state(model, schedule, x0)
    model.eval()  # a callable runs in its modules' mode: no dropout, so that two credits can be equal
    return schedule, model, x0, opt, torch.randint(50, (16,))


def credit(model, schedule, x0, t, opt, **options):
    return first_order_credit(model, schedule, x0, t, opt, generator=torch.Generator().manual_seed(3),
                              strata=8, bins=17, **options)


def wrap_forward_like_accelerate(model):
    """What Accelerator.prepare(model) does under mixed_precision="bf16": the module's own forward, in autocast."""
    model._original_forward = model.forward
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    model.forward = types.MethodType(autocast(model.forward.__func__), model)
    return model.forward


def test_the_credit_in_a_bf16_autocast_region_is_the_fp32_credit():
    schedule, model, x0, opt, t = setup()
    fp32 = credit(model, schedule, x0, t, opt)
    callable_fp32 = credit(lambda x, s: model(x, s), schedule, x0, t, opt)
    difference_fp32 = credit(model, schedule, x0, t, opt, delta=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x0, t).dtype == torch.bfloat16  # the region is on
        in_region = credit(model, schedule, x0, t, opt)
        callable_in_region = credit(lambda x, s: model(x, s), schedule, x0, t, opt)
        difference = credit(model, schedule, x0, t, opt, delta=1e-3)
    assert torch.equal(in_region, fp32) and torch.equal(callable_in_region, callable_fp32)
    assert torch.equal(difference, difference_fp32)  # the central difference's two passes too
    assert fp32.abs().min() > 0


def test_a_forward_that_accelerate_wrapped_in_autocast_is_run_unwrapped_and_put_back():
    schedule, model, x0, opt, t = setup()
    fp32 = credit(model, schedule, x0, t, opt)
    noise = torch.randn(x0.shape)
    rewards_fp32 = gradient_rewards(model, lambda net: mse_per_sample(net, schedule, x0, t, noise), opt,
                                    torch.Generator().manual_seed(5))
    callable_fp32 = credit(lambda x, s: model(x, s), schedule, x0, t, opt)
    wrapped = wrap_forward_like_accelerate(model)
    assert model(x0, t).dtype == torch.bfloat16
    assert torch.equal(credit(model, schedule, x0, t, opt), fp32)
    assert torch.equal(credit(lambda x, s: model(x, s), schedule, x0, t, opt), callable_fp32)  # its module is found
    rewards = gradient_rewards(model, lambda net: mse_per_sample(net, schedule, x0, t, noise), opt,
                               torch.Generator().manual_seed(5))
    assert torch.equal(rewards, rewards_fp32)
    assert model.forward is wrapped and model(x0, t).dtype == torch.bfloat16  # the loop's precision is untouched


def test_the_bf16_credit_would_rank_as_the_fp32_one():
    """Why fp32 costs no ranking: a credit that followed bf16 autocast (an opaque callable that enters autocast
    itself, differentiated by reverse mode) correlates with the fp32 one (studies/credit_autocast.py measures
    the digits UNet: Spearman 0.9997)."""
    schedule, model, x0, opt, t = setup()
    held = {"model": model}

    def bf16(x, s):  # the module out of the credit's sight: black-box reverse mode, every pass in bf16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return held["model"](x, s).float()

    fp32 = credit(model, schedule, x0, t, opt)
    low = credit(bf16, schedule, x0, t, opt)
    assert not torch.equal(low, fp32)  # it did run in bf16
    ranks = lambda c: c.argsort().argsort().double()  # noqa: E731
    assert torch.corrcoef(torch.stack([ranks(low), ranks(fp32)]))[0, 1] > 0.9
