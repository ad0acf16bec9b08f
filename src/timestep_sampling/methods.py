"""Named methods: a sampler and a weighting chosen together under one name, so switching method is
one argument (`make_method("speed", schedule)`), while the two halves stay separate objects.

Any other pairing is written "sampler+weighting", each half a spec string:
`make_method("speed+min-snr:gamma=5", schedule)`; so SpeeD with another λ is "speed+speed:lam=0.5".

Methods whose names start with "flow-" are for rectified flow (continuous t ∈ (0, 1)); a pairing must
keep both halves of one kind: "flow-logit-normal:shift=3+flow-min-snr".
"""
from __future__ import annotations

import re

from .errors import UserError, require, unknown_choice
from .samplers import TimestepSampler, make_sampler
from .samplers.base import explain_unknown_sampler
from .schedule import NoiseSchedule
from .weighting import LossWeighting, make_weighting

# name -> (sampler spec, weighting spec): the methods a user should consider (available_methods()).
PRESETS: dict[str, tuple[str, str]] = {
    "uniform": ("uniform", "none"),
    "p2": ("uniform", "p2"),
    "min-snr": ("uniform", "min-snr"),
    "logit-normal": ("logit-normal", "none"),
    "lognormal-edm": ("lognormal-edm", "none"),
    "speed": ("speed", "speed"),
    "speed-2024": ("speed-2024", "speed-2024"),
    "variance": ("variance", "none"),
    "loss-second-moment": ("loss-second-moment", "none"),
    # The learned sampler: a global Beta trained on the exact first-order credit (samplers/credit.py).
    "adaptive": ("adaptive", "none"),
    "adaptive-mix": ("adaptive:uniform_mix=0.3", "none"),  # with a 30% uniform floor: keeps large t trained
    # trained with Min-SNR-5 weighting, its credit taken against that weighted objective (the paper's Tab. 3 pairing)
    "adaptive-min-snr": ("adaptive:credit_target=objective", "min-snr"),
    # an importance sampler: the training objective stays the uniform-t loss (weights 1/(T p_t), floored at
    # 30 % uniform so no weight exceeds 3.3), the sampler only changes how fast it is lowered
    "adaptive-unbiased": ("adaptive:unbiased=True,uniform_mix=0.3,credit_target=objective", "none"),
    # an importance sampler whose Beta learns to lower the variance of the loss estimate (fixed point p_t ∝
    # RMS of the loss at t, loss-second-moment's rule, as a smooth Beta), with a 5 % floor (weights at most 20)
    "adaptive-variance": ("adaptive:reward=variance,unbiased=True,uniform_mix=0.05", "none"),
    # the same Beta, never updated: the control (K = 20 as when its records began; K changes nothing it trains)
    "adaptive-frozen": ("adaptive:lr=0,update_every=20", "none"),
    # The paper's estimator as published (eq. 14, a policy conditioned on x0), kept as the faithful control.
    "adaptive-paper": ("adaptive:reward=paper,conditioned=True", "none"),
    # rectified flow: continuous t in (0, 1), weights on the velocity MSE
    "flow-uniform": ("flow-uniform", "flow-none"),
    "flow-logit-normal": ("flow-logit-normal", "flow-none"),  # SD3's default
    "flow-mode": ("flow-mode", "flow-none"),
    "flow-cosmap": ("flow-cosmap", "flow-none"),
    "flow-min-snr": ("flow-uniform", "flow-min-snr"),
    # the learned Beta on t for flows (samplers/flow_adaptive.py), its floored variant, its objective-credit
    # variant and its frozen control
    "flow-adaptive": ("flow-adaptive", "flow-none"),
    "flow-adaptive-mix": ("flow-adaptive:uniform_mix=0.3", "flow-none"),
    "flow-adaptive-min-snr": ("flow-adaptive:credit_target=objective", "flow-min-snr"),
    "flow-adaptive-frozen": ("flow-adaptive:lr=0,update_every=20", "flow-none"),
}

# Ablations and superseded variants: reachable by name, so every record made with them still reports, but
# not offered (available_methods(ablations=True) lists them).
ABLATIONS: dict[str, tuple[str, str]] = {
    "beta-0.95": ("beta:a=0.95,b=0.95", "none"),  # the fixed Beta the learned sampler starts near
    # Beta(1, 1) rounded to t: uniform's distribution but for half mass at t = 0 and T − 1, drawn from another
    # random stream; the control for the unmoving Beta samplers' ancestral-FD offset (docs/benchmark.md#quad)
    "beta-1.0": ("beta:a=1,b=1", "none"),
    # the credit of the simple loss under uniform t instead of the bound (superseded by credit_target=objective)
    "adaptive-loss": ("adaptive:credit_target=loss,update_every=20,lr=0.03,direction_every=1", "none"),
    "adaptive-conditioned": ("adaptive:conditioned=True,update_every=20,lr=0.03,direction_every=1", "none"),  # one Beta per image, from a CNN on x0
    "credit-proportional": ("credit-proportional", "none"),  # the same credit without a policy gradient
    # the credit's central difference at δ = 1e-4 (close to exact, half the cost on the digits) and at
    # δ = 1e-3 (the default before the exact credit: a third off at initialisation, docs/changelog.md)
    "adaptive-fine": ("adaptive:credit_delta=1e-4,update_every=20,lr=0.03,direction_every=1", "none"),
    "credit-proportional-fine": ("credit-proportional:credit_delta=1e-4", "none"),
    "adaptive-coarse": ("adaptive:credit_delta=1e-3,update_every=20,lr=0.03,direction_every=1", "none"),
    "adaptive-mix-coarse": ("adaptive:uniform_mix=0.3,credit_delta=1e-3,update_every=20,lr=0.03,direction_every=1", "none"),
    "credit-proportional-coarse": ("credit-proportional:credit_delta=1e-3", "none"),
    # the same credit and policy gradient on a softmax over log-spaced bands of t (samplers/band_policy.py);
    # its frozen copy is the uniform sampler itself
    "adaptive-bands": ("adaptive-bands", "none"),
    "adaptive-bands-fine": ("adaptive-bands:credit_delta=1e-4", "none"),
    "adaptive-bands-coarse": ("adaptive-bands:credit_delta=1e-3", "none"),
    # ablations of adaptive-bands-coarse (measured with the δ = 1e-3 credit, which they keep):
    "adaptive-bands-reinforce": ("adaptive-bands:estimator=reinforce,credit_delta=1e-3", "none"),  # per-sample, Adam
    "adaptive-bands-unprobed": ("adaptive-bands:probe=False,smooth=2.0,credit_delta=1e-3", "none"),  # critic sees draws only
    # the bound probed on 10 % of the training images, kept out of training (the credit then scores what generalises)
    "adaptive-bands-heldout": ("adaptive-bands:holdout=0.1,credit_delta=1e-3", "none"),
    # a 4x higher temperature (the critic's fixed point θ = (V − V̄)/c_ent): a milder tilt, as credit-proportional's
    "adaptive-bands-mild": ("adaptive-bands:entropy_coef=2.0,credit_delta=1e-3", "none"),
    # a short memory and fast steps (critic decay 0.9, lr 0.5), as credit-proportional's: does committing early matter?
    "adaptive-bands-fast": ("adaptive-bands:decay=0.9,lr=0.5,credit_delta=1e-3", "none"),
    "adaptive-full-scan": ("adaptive:reward=paper,conditioned=True,scan=None", "none"),  # adaptive-paper + a scan of all T
    # The learned samplers' update before 2026-12-07 (K = 20, Adam 3e-2, a fresh bound probe every update): every
    # record made with the presets below until then was renamed to these names (docs/changelog.md), and the
    # ablations above that were measured with it are pinned to it.
    "adaptive-k20": ("adaptive:update_every=20,lr=0.03,direction_every=1", "none"),
    "adaptive-mix-k20": ("adaptive:uniform_mix=0.3,update_every=20,lr=0.03,direction_every=1", "none"),
    "adaptive-min-snr-k20": ("adaptive:credit_target=objective,update_every=20,lr=0.03,direction_every=1", "min-snr"),
    "adaptive-unbiased-k20": ("adaptive:unbiased=True,uniform_mix=0.3,credit_target=objective,update_every=20,lr=0.03,direction_every=1", "none"),
    "flow-adaptive-k20": ("flow-adaptive:update_every=20,lr=0.03,direction_every=1", "flow-none"),
    "flow-adaptive-mix-k20": ("flow-adaptive:uniform_mix=0.3,update_every=20,lr=0.03,direction_every=1", "flow-none"),
    "flow-adaptive-min-snr-k20": ("flow-adaptive:credit_target=objective,update_every=20,lr=0.03,direction_every=1", "flow-min-snr"),
    # the update that replaced it (issue 42) keeps the bound probe's gradient for 2 updates (the default). Its
    # ablations on credit3k: the probe kept for 4 updates (level), and a fresh probe every 80 steps with no
    # update between (worse on one seed of two: the kept-probe updates between are not pure noise)
    "adaptive-k40-d4": ("adaptive:update_every=40,lr=0.06,direction_every=4", "none"),
    "adaptive-k80": ("adaptive:update_every=80,lr=0.06,direction_every=1", "none"),
    "flow-elbo": ("flow-uniform", "flow-elbo"),
    "flow-sigma-sqrt": ("flow-uniform", "flow-sigma-sqrt"),
    "flow-beta-0.95": ("flow-beta:a=0.95,b=0.95", "flow-none"),
    "flow-adaptive-coarse": ("flow-adaptive:credit_delta=1e-3,update_every=20,lr=0.03,direction_every=1", "flow-none"),  # as adaptive-coarse
    # the importance sampler that learns to lower the variance of the velocity loss, as adaptive-variance (not
    # offered until measured on a flow grid)
    "flow-adaptive-variance": ("flow-adaptive:reward=variance,unbiased=True,uniform_mix=0.05", "flow-none"),
    # adaptive-variance with each sample's preconditioned gradient norm in place of its loss: the variance of
    # the optimiser's step rather than of the loss estimate (not offered until measured)
    "adaptive-grad-variance": ("adaptive:reward=grad-variance,unbiased=True,uniform_mix=0.05", "none"),
    "flow-adaptive-grad-variance": ("flow-adaptive:reward=grad-variance,unbiased=True,uniform_mix=0.05", "flow-none"),
}

METHODS: dict[str, tuple[str, str]] = {**PRESETS, **ABLATIONS}  # every name make_method reads

# "+" joins the two halves only where a name follows it, so an option value like 1e+3 stays whole.
_JOIN = re.compile(r"\+(?=[A-Za-z])")


@explain_unknown_sampler
def _refuse_method_name(name: str) -> None:
    """A method's name ("adaptive-unbiased", "p2": a sampler with a weighting) given to make_sampler: say which
    call takes it, instead of listing samplers that merely look alike. Installed in the samplers' registry
    (samplers/base.py) from here, so that the samplers need not know the methods above them."""
    if name in METHODS:
        sampler, weighting = METHODS[name]
        raise UserError(f"{name!r} is a method (the sampler {sampler!r} with the weighting {weighting!r}), not a "
                        f"sampler: make_method({name!r}, schedule) returns (sampler, weighting), or "
                        f"make_sampler({sampler!r}, schedule) builds its sampler alone")


def available_methods(ablations: bool = False) -> list[str]:
    """The methods a user should consider; with ablations=True, the ablations and superseded variants
    instead (kept by name so that the records made with them still report)."""
    return sorted(ABLATIONS if ablations else PRESETS)


def method_specs(name: str) -> tuple[str, str]:
    """(sampler spec, weighting spec) of a preset name or of a "sampler+weighting" composition."""
    name = name.strip()
    if name in METHODS:
        return METHODS[name]
    parts = _JOIN.split(name, maxsplit=1)
    if len(parts) == 2:
        require(all(p.strip() for p in parts), f"cannot read method {name!r}; expected 'sampler+weighting'")
        return parts[0].strip(), parts[1].strip()
    preset = name.partition(":")[0].strip()
    if preset in METHODS:  # "adaptive:lr=0.1": a preset is a fixed pair; options belong to its sampler's spec
        sampler, weighting = METHODS[preset]
        sampler += ("," if ":" in sampler else ":") + name.partition(":")[2].strip()
        raise UserError(f"method {preset!r} is a preset and takes no options; give them to its sampler: "
                        f"'{sampler}+{weighting}' (on the command line: --method {preset} --sampler '{sampler}')")
    error = unknown_choice("method", name, PRESETS)
    raise UserError(f"{error}; or pair any sampler and weighting as 'sampler+weighting', e.g. 'speed+min-snr:gamma=5'")


def effective_specs(method: str, sampler: str | None = None, weighting: str | None = None) -> tuple[str, str]:
    """(sampler spec, weighting spec) that a run with this method and these overrides trains with: the
    preset's halves, each replaced by its override when one is given (as the trainer builds them)."""
    preset_sampler, preset_weighting = method_specs(method)
    return ((sampler or "").strip() or preset_sampler, (weighting or "").strip() or preset_weighting)


def method_label(method: str, sampler: str | None = None, weighting: str | None = None) -> str:
    """The one name of what a run trains, for everything that names a run (the trainer's header, its
    config.json, plots, bench records): the preset whose pair it is, else "sampler+weighting". A preset
    overridden part by part is NOT that preset (`uniform` with `--sampler adaptive` trains `adaptive`),
    so the label is derived from the pair actually used, never taken from the preset's name."""
    pair = effective_specs(method, sampler, weighting)
    for name, specs in METHODS.items():
        if specs == pair:
            return name
    return "+".join(pair)


def make_method(name: str, schedule: NoiseSchedule | None = None, prediction: str | None = None,
                **sampler_options) -> tuple[TimestepSampler, LossWeighting]:
    """(sampler, weighting) for a method name. Keyword options go to the sampler (they override those
    in its spec); `prediction` (epsilon, v, x0) goes to a discrete weighting (a flow's weights are always
    on the velocity MSE). A flow method needs no schedule."""
    sampler_spec, weighting_spec = method_specs(name)
    sampler = make_sampler(sampler_spec, schedule, **sampler_options)
    weighting = make_weighting(weighting_spec, schedule, **(
        {} if prediction is None or sampler.continuous else {"prediction": prediction}))
    check_pair(name, sampler, weighting)
    sampler.pair_weighting(weighting)  # a credit that targets the loop's objective needs its weighting
    return sampler, weighting


def check_pair(name: str, sampler: TimestepSampler, weighting: LossWeighting) -> None:
    """A sampler and a weighting of the same kind of time: discrete timesteps, or rectified flow's t in (0, 1)."""
    if sampler.continuous != weighting.continuous:
        kinds = {True: "continuous times t in (0, 1) (rectified flow)", False: "discrete timesteps"}
        raise UserError(f"method {name!r} pairs a sampler of {kinds[sampler.continuous]} with a weighting of "
                        f"{kinds[weighting.continuous]}; pair flow-... with flow-...")


def is_flow_method(name: str) -> bool:
    """Whether a method (preset or "sampler+weighting") draws continuous times, without building it."""
    from .samplers.base import SAMPLERS, _load_all
    from .registry import parse_spec

    _load_all()
    sampler_name, _ = parse_spec(method_specs(name)[0])
    return getattr(SAMPLERS._entries.get(sampler_name), "continuous", False)
