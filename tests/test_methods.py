"""Method presets: one name picks a sampler and a weighting; "sampler+weighting" pairs any two."""
import re

import pytest

from timestep_sampling import NoiseSchedule, UserError
from timestep_sampling.methods import METHODS, available_methods, make_method, method_label, method_specs
from timestep_sampling.samplers import available_samplers, make_sampler
from timestep_sampling.samplers.base import UniformSampler
from timestep_sampling.samplers.fixed import BetaSampler, SpeedCurrentSampler, Speed2024Sampler
from timestep_sampling.weighting import MinSNRWeighting, NoWeighting, P2Weighting, SpeedWeighting

LINEAR = NoiseSchedule("linear", T=1000)
NEEDS_ADAPTIVE = {name for name, (sampler, _) in METHODS.items() if sampler.split(":")[0] == "adaptive"}
BANDS = {name for name, (sampler, _) in METHODS.items() if sampler.split(":")[0] == "adaptive-bands"}


def test_the_k20_names_train_what_the_presets_trained_before_2026_12_07():
    """The records renamed to -k20 keep their fingerprints: each -k20 name is its preset with the old update."""
    from timestep_sampling import NoiseSchedule
    schedule = NoiseSchedule("linear", T=1000)
    for name in ("adaptive", "adaptive-mix", "adaptive-min-snr", "adaptive-unbiased", "flow-adaptive", "flow-adaptive-mix",
                 "flow-adaptive-min-snr"):
        old, new = make_method(name + "-k20", schedule)[0], make_method(name, schedule)[0]
        assert (old.update_every, old.lr, old.direction.every) == (20, 0.03, 1)
        assert (new.update_every, new.lr, new.direction.every) == (40, 0.06, 2)
        assert repr(old) == repr(new).replace("lr=0.06, K=40", "lr=0.03, K=20").replace(", direction_every=2", "")


def test_presets_are_the_documented_pairs():
    assert METHODS["speed"] == ("speed", "speed")
    assert METHODS["speed-2024"] == ("speed-2024", "speed-2024")
    assert METHODS["adaptive-min-snr"] == ("adaptive:credit_target=objective", "min-snr")
    assert METHODS["adaptive-frozen"] == ("adaptive:lr=0,update_every=20", "none")  # K changes nothing it trains
    assert METHODS["adaptive-paper"] == ("adaptive:reward=paper,conditioned=True", "none")
    assert METHODS["adaptive-full-scan"] == ("adaptive:reward=paper,conditioned=True,scan=None", "none")
    assert METHODS["credit-proportional"] == ("credit-proportional", "none")
    assert NEEDS_ADAPTIVE == {"adaptive", "adaptive-min-snr", "adaptive-frozen", "adaptive-full-scan", "adaptive-paper",
                              "adaptive-conditioned", "adaptive-mix", "adaptive-fine", "adaptive-coarse", "adaptive-loss",
                              "adaptive-mix-coarse", "adaptive-unbiased", "adaptive-variance", "adaptive-grad-variance",
                              "adaptive-k20", "adaptive-mix-k20", "adaptive-min-snr-k20", "adaptive-unbiased-k20",
                              "adaptive-k40-d4", "adaptive-k80"}
    assert BANDS == {"adaptive-bands", "adaptive-bands-reinforce", "adaptive-bands-unprobed", "adaptive-bands-heldout",
                     "adaptive-bands-mild", "adaptive-bands-fast",
                     "adaptive-bands-fine", "adaptive-bands-coarse"}
    assert METHODS["adaptive-bands-heldout"] == ("adaptive-bands:holdout=0.1,credit_delta=1e-3", "none")
    assert METHODS["adaptive-bands-reinforce"] == ("adaptive-bands:estimator=reinforce,credit_delta=1e-3", "none")


def test_the_offered_methods_are_few_and_ablations_stay_reachable():
    offered, ablations = available_methods(), available_methods(ablations=True)
    assert len(offered) <= 25 and not set(offered) & set(ablations)
    assert sorted(offered + ablations) == sorted(METHODS)
    assert {"uniform", "min-snr", "speed", "adaptive", "adaptive-mix", "adaptive-paper", "flow-adaptive"} <= set(offered)
    assert not any(name.endswith(("-coarse", "-fine")) or name.startswith("adaptive-bands") for name in offered)
    make_method("adaptive-bands-coarse", LINEAR)  # an ablation still builds by name, for its records
    with pytest.raises(UserError) as error:
        make_method("no-such-method", LINEAR)
    assert "adaptive-bands" not in str(error.value) and "adaptive-mix" in str(error.value)


@pytest.mark.parametrize("name", sorted(set(METHODS) - NEEDS_ADAPTIVE - BANDS))
def test_every_preset_builds(name):
    sampler, weighting = make_method(name, LINEAR)
    t, w = sampler.sample(8)
    assert weighting.weights(t).shape == w.shape == (8,)


def test_presets_pick_the_right_halves():
    sampler, weighting = make_method("speed", LINEAR)
    assert type(sampler) is SpeedCurrentSampler and type(weighting) is SpeedWeighting
    sampler, weighting = make_method("speed-2024", LINEAR)
    assert type(sampler) is Speed2024Sampler and weighting.name == "speed-2024"
    sampler, weighting = make_method("p2", LINEAR)
    assert type(sampler) is UniformSampler and type(weighting) is P2Weighting
    sampler, weighting = make_method("beta-0.95", LINEAR)
    assert type(sampler) is BetaSampler and (sampler.a, sampler.b) == (0.95, 0.95) and type(weighting) is NoWeighting


@pytest.mark.parametrize("name", sorted(NEEDS_ADAPTIVE))
def test_adaptive_presets_build_or_say_the_sampler_is_missing(name):
    if "adaptive" in available_samplers():
        sampler, _ = make_method(name, LINEAR)
        assert sampler.name == "adaptive"
    else:
        with pytest.raises(UserError, match="unknown sampler 'adaptive'.*valid choices"):
            make_method(name, LINEAR)


@pytest.mark.parametrize("name", sorted(BANDS))
def test_band_presets_build_or_say_the_sampler_is_missing(name):
    if "adaptive-bands" in available_samplers():
        sampler, _ = make_method(name, LINEAR)
        assert sampler.name == "adaptive-bands"
        assert sampler.estimator == ("reinforce" if name.endswith("reinforce") else "critic")
    else:
        with pytest.raises(UserError, match="unknown sampler 'adaptive-bands'.*valid choices"):
            make_method(name, LINEAR)


def test_options_reach_the_right_half():
    sampler, weighting = make_method("logit-normal", LINEAR, std=2.0)
    assert sampler.std == 2.0
    sampler, weighting = make_method("min-snr", LINEAR, prediction="v")
    assert type(weighting) is MinSNRWeighting and weighting.prediction == "v"
    with pytest.raises(UserError, match="valid choices: a, b, mix, unbiased"):
        make_method("beta-0.95", LINEAR, k=2)


def test_sampler_plus_weighting():
    sampler, weighting = make_method("speed+min-snr:gamma=3", LINEAR)
    assert type(sampler) is SpeedCurrentSampler and type(weighting) is MinSNRWeighting and weighting.gamma == 3
    # A "+" inside a number is not a join.
    assert method_specs("beta:a=2,b=1e+0+p2:k=0.5") == ("beta:a=2,b=1e+0", "p2:k=0.5")
    sampler, weighting = make_method("beta:a=2,b=1e+0+p2:k=0.5", LINEAR)
    assert sampler.b == 1.0 and weighting.k == 0.5


@pytest.mark.parametrize("name, message", [
    ("min_snr", "unknown method 'min_snr' .*valid choices: .*min-snr.*'sampler\\+weighting'"),
    ("speedd+min-snr", "unknown sampler 'speedd'"),
    ("speed+min-snrr", "unknown weighting 'min-snrr'"),
    ("+min-snr", "expected 'sampler\\+weighting'"),
])
def test_unknown_methods_raise_one_clear_error(name, message):
    with pytest.raises(UserError, match=message) as info:
        make_method(name, LINEAR)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method, sampler, weighting, label", [
    ("uniform", None, None, "uniform"),
    ("min-snr", None, None, "min-snr"),
    ("uniform", "adaptive", None, "adaptive"),  # a preset overridden into another preset's pair
    ("adaptive-min-snr", "adaptive", "none", "adaptive"),
    ("uniform", "adaptive:update_every=4", None, "adaptive:update_every=4+none"),  # the case
    ("min-snr", "logit-normal:mean=0,std=1", None, "logit-normal:mean=0,std=1+min-snr"),
    ("uniform", None, "p2:gamma=0.5", "uniform+p2:gamma=0.5"),
    ("speed+min-snr:gamma=5", None, None, "speed+min-snr:gamma=5"),
    ("uniform+none", None, None, "uniform"),
])
def test_the_label_names_the_pair_actually_trained(method, sampler, weighting, label):
    assert method_label(method, sampler, weighting) == label
    # The label is itself a method name for that pair, so it round-trips (config.json read back).
    assert method_label(label) == label
    expected = (sampler or method_specs(method)[0], weighting or method_specs(method)[1])
    assert method_specs(label) == expected


def test_a_method_name_given_to_make_sampler_says_which_call_takes_it():
    """The README's "Which method" names methods; a user who passes one to make_sampler learns the call that
    takes it and the sampler spec inside it, which then builds the same sampler make_method does."""
    with pytest.raises(UserError, match=r"'adaptive-unbiased' is a method .*make_method\('adaptive-unbiased'") as info:
        make_sampler("adaptive-unbiased", LINEAR)
    spec = re.search(r"make_sampler\('([^']+)', schedule\)", str(info.value)).group(1)
    assert repr(make_sampler(spec, LINEAR)) == repr(make_method("adaptive-unbiased", LINEAR)[0])
    with pytest.raises(UserError, match="'p2' is a method .*weighting 'p2'"):
        make_sampler("p2", LINEAR)
    with pytest.raises(UserError, match="unknown sampler 'adaptve' \\(did you mean 'adaptive'\\?\\)"):
        make_sampler("adaptve", LINEAR)
