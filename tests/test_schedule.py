import pytest
import torch
from diffusers import DDPMScheduler

from timestep_sampling import NoiseSchedule, UserError


@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("quad", "scaled_linear"),
                                          ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(ours, theirs):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    s = NoiseSchedule(ours, T=1000)
    assert torch.allclose(s.betas.float(), ref.betas, rtol=1e-5, atol=1e-8)
    assert torch.allclose(s.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-4)


def test_aliases_and_from_diffusers():
    assert NoiseSchedule("scaled_linear") == NoiseSchedule("quad")
    s = NoiseSchedule.from_diffusers(DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2"))
    assert s.name == "cosine" and s.T == 500
    assert torch.allclose(s.betas, NoiseSchedule("cosine", T=500).betas, atol=1e-7)


def test_linear_endpoints_and_snr():
    s = NoiseSchedule("linear", T=1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    abar = torch.cumprod(1 - s.betas, 0)
    assert torch.allclose(s.snr, abar / (1 - abar))
    assert s.betas.dtype == torch.float64
    assert bool((s.snr[1:] < s.snr[:-1]).all())


def test_at_hands_out_callers_dtype_and_shape_and_names_unknown_quantities():
    s = NoiseSchedule("linear", T=10)
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float16)
    v = s.at("alphas_cumprod", torch.tensor([0, 5, 9]), x)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float16

    with pytest.raises(UserError, match="unknown schedule quantity 'sqrt_alphas_cumprod'; valid: .*alphas_cumprod"):
        s.at("sqrt_alphas_cumprod", torch.tensor([0]), x)


@pytest.mark.parametrize("kwargs", [dict(T=1), dict(T=0), dict(T=2.5), dict(beta_start=0.1, beta_end=0.01),
                                    dict(name="sigmoid")])
def test_bad_schedules_raise_user_error(kwargs):
    with pytest.raises(UserError):
        NoiseSchedule(**kwargs)
