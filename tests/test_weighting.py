"""Loss weightings against their formulas, computed here by hand from alphas_cumprod and betas."""
import math

import pytest
import torch

from timestep_sampling import NoiseSchedule, UserError
from timestep_sampling.weighting import LossWeighting, available_weightings, make_weighting

LINEAR = NoiseSchedule("linear", T=1000)
COSINE = NoiseSchedule("cosine", T=1000)
POINTS = [0, 1, 57, 250, 641, 699, 700, 999]


def snr(schedule, t):
    abar = schedule.alphas_cumprod[t].item()
    return abar / (1 - abar)


def weights_at(spec, schedule=LINEAR, points=POINTS, **options):
    w = make_weighting(spec, schedule, **options).weights(torch.tensor(points))
    assert w.dtype == torch.float32 and w.shape == (len(points),)
    return w.tolist()


def close(actual, expected):
    assert actual == pytest.approx(expected, rel=2e-6, abs=0)


def test_all_weightings_are_registered():
    assert set(available_weightings()) >= {"none", "p2", "min-snr", "speed", "speed-2024", "debiased", "vlb"}


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_none_is_ones_for_every_prediction(prediction):
    assert weights_at("none", prediction=prediction) == [1.0] * len(POINTS)


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_p2(schedule):
    close(weights_at("p2", schedule), [1 / (1 + snr(schedule, t)) for t in POINTS])
    close(weights_at("p2:k=0.5,gamma=2", schedule), [1 / (0.5 + snr(schedule, t)) ** 2 for t in POINTS])
    assert weights_at("p2:gamma=0", schedule) == [1.0] * len(POINTS)  # the seed paper's γ = 0 is uniform


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_min_snr_in_its_three_forms(schedule):
    s = [snr(schedule, t) for t in POINTS]
    close(weights_at("min-snr", schedule), [min(x, 5) / x for x in s])
    close(weights_at("min-snr", schedule, prediction="v"), [min(x, 5) / (x + 1) for x in s])
    close(weights_at("min-snr", schedule, prediction="x0"), [min(x, 5) for x in s])
    close(weights_at("min-snr:gamma=1", schedule), [min(x, 1) / x for x in s])
    # diffusers' names for the prediction types
    assert weights_at("min-snr", schedule, prediction="v_prediction") == weights_at("min-snr", schedule, prediction="v")
    assert weights_at("min-snr", schedule, prediction="sample") == weights_at("min-snr", schedule, prediction="x0")


def test_speed_current():
    one_minus = (1 - LINEAR.alphas_cumprod).tolist()
    grad = [one_minus[1] - one_minus[0]] + [(one_minus[i + 1] - one_minus[i - 1]) / 2 for i in range(1, 999)] \
        + [one_minus[999] - one_minus[998]]
    lo, hi = min(grad), max(grad)
    k = 1 - 0.6
    expected = [k + (1 - 2 * k) * (grad[t] - lo) / (hi - lo) if t < 700 else 1.0 for t in POINTS]
    close(weights_at("speed"), expected)
    k = 1 - 0.9
    expected = [k + (1 - 2 * k) * (grad[t] - lo) / (hi - lo) if t < 250 else 1.0 for t in POINTS]
    close(weights_at("speed:lam=0.9,tau=250"), expected)


def test_speed_2024_and_debiased():
    close(weights_at("speed-2024"), [1 / (1 + snr(LINEAR, t)) for t in POINTS])
    close(weights_at("debiased"), [1 / math.sqrt(snr(LINEAR, t)) for t in POINTS])
    close(weights_at("debiased", COSINE), [1 / math.sqrt(snr(COSINE, t)) for t in POINTS])


def test_prediction_conversion_keeps_the_objective():
    """w^x0 = w^ε·SNR and w^v = w^ε·SNR/(1+SNR), for every rule but none."""
    s = [snr(LINEAR, t) for t in POINTS]
    eps = weights_at("debiased")
    close(weights_at("debiased", prediction="x0"), [w * x for w, x in zip(eps, s)])
    close(weights_at("debiased", prediction="v"), [w * x / (1 + x) for w, x in zip(eps, s)])


def test_vlb_fixed_large():
    betas, abar = LINEAR.betas.tolist(), LINEAR.alphas_cumprod.tolist()
    # λ_t = β²/(2σ²α(1−ᾱ)) with σ² = β: β/(2α(1−ᾱ)).
    expected = [betas[t] / (2 * (1 - betas[t]) * (1 - abar[t])) for t in POINTS[1:]]
    close(weights_at("vlb", points=POINTS[1:]), expected)
    # t = 0: σ_0² = β̃_1 = β_1 (1 − ᾱ_0)/(1 − ᾱ_1).
    tilde1 = betas[1] * (1 - abar[0]) / (1 - abar[1])
    close(weights_at("vlb", points=[0]), [betas[0] ** 2 / (2 * tilde1 * (1 - betas[0]) * (1 - abar[0]))])
    assert 0.85 < weights_at("vlb", points=[0])[0] < 1.0


def test_vlb_fixed_small():
    betas, abar = LINEAR.betas.tolist(), LINEAR.alphas_cumprod.tolist()
    # σ² = β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t), so λ_t = β_t/(2α_t(1−ᾱ_{t−1})) for t ≥ 1.
    expected = [betas[t] / (2 * (1 - betas[t]) * (1 - abar[t - 1])) for t in POINTS[1:]]
    close(weights_at("vlb:variance=fixed-small", points=POINTS[1:]), expected)
    assert weights_at("vlb:variance=fixed-small", points=[0]) == weights_at("vlb", points=[0])


def test_weights_follow_t_and_keep_its_shape():
    weighting = make_weighting("min-snr", LINEAR)
    t = torch.tensor([[0, 999], [500, 1]])
    w = weighting.weights(t)
    assert w.shape == (2, 2) and w.device == t.device and w.dtype == torch.float32
    assert w[0, 1].item() == 1.0 and w[1, 1].item() == pytest.approx(5 / snr(LINEAR, 1), rel=1e-6)


@pytest.mark.parametrize("spec, options, message", [
    ("p2", {"gamma": -1}, "gamma must be a number >= 0"),
    ("p2", {"k": -0.5}, "k must be a number >= 0"),
    ("min-snr", {"gamma": -5}, "gamma must be a number > 0"),
    ("min-snr", {"gamma": 0}, "gamma must be a number > 0"),
    ("min-snr", {"prediction": "score"}, "valid choices: epsilon, sample, v, v_prediction, x0"),
    ("min-snr", {"gama": 5}, "valid choices: gamma, prediction"),
    ("min-snrr", {}, "valid choices: debiased, flow-cosmap, flow-elbo, flow-min-snr, flow-none, flow-sigma-sqrt, "
                     "min-snr, none, p2, speed, speed-2024, vlb"),
    ("speed", {"lam": 1.5}, r"lam must be a number in \[0, 1\]"),
    ("speed", {"tau": 5000}, r"tau must be an integer in \[0, T=1000\]"),
    ("vlb", {"variance": "learned"}, "valid choices: fixed-large, fixed-small"),
])
def test_invalid_options_raise_one_clear_error(spec, options, message):
    with pytest.raises(UserError, match=message) as info:
        make_weighting(spec, LINEAR, **options)
    assert "\n" not in str(info.value)


def test_invalid_timesteps_raise_user_errors():
    weighting = make_weighting("p2", LINEAR)
    with pytest.raises(UserError, match="integer tensor"):
        weighting.weights(torch.tensor([0.5]))
    with pytest.raises(UserError, match=r"outside \[0, 999\]"):
        weighting.weights(torch.tensor([1000]))
    with pytest.raises(UserError, match="NoiseSchedule"):
        LossWeighting("linear")
