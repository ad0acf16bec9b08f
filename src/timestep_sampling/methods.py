"""Named methods: a sampler and a weighting chosen together under one name, so switching method is
one argument (`make_method("speed", schedule)`), while the two halves stay separate objects.

Any other pairing is written "sampler+weighting", each half a spec string:
`make_method("speed+min-snr:gamma=5", schedule)`; so SpeeD with another λ is "speed+speed:lam=0.5".
"""
from __future__ import annotations

import re

from .errors import UserError, require, unknown_choice
from .samplers import TimestepSampler, make_sampler
from .schedule import NoiseSchedule
from .weighting import LossWeighting, make_weighting

# name -> (sampler spec, weighting spec)
METHODS: dict[str, tuple[str, str]] = {
    "uniform": ("uniform", "none"),
    "p2": ("uniform", "p2"),
    "min-snr": ("uniform", "min-snr"),
    "logit-normal": ("logit-normal", "none"),
    "lognormal-edm": ("lognormal-edm", "none"),
    "speed": ("speed", "speed"),
    "speed-2024": ("speed-2024", "speed-2024"),
    "variance": ("variance", "none"),
    "loss-second-moment": ("loss-second-moment", "none"),
    "beta-0.95": ("beta:a=0.95,b=0.95", "none"),
    # The learned sampler: a global Beta trained on the first-order credit (samplers/credit.py).
    "adaptive": ("adaptive", "none"),
    "adaptive-min-snr": ("adaptive", "min-snr"),
    "adaptive-frozen": ("adaptive:lr=0", "none"),          # the same Beta, never updated: the control
    "adaptive-conditioned": ("adaptive:conditioned=True", "none"),  # one Beta per image, from a CNN on x0
    "credit-proportional": ("credit-proportional", "none"),  # the same credit without a policy gradient
    # The paper's estimator as published (eq. 14, a policy conditioned on x0), kept as the faithful control.
    "adaptive-paper": ("adaptive:reward=paper,conditioned=True", "none"),
    "adaptive-full-scan": ("adaptive:reward=paper,conditioned=True,scan=None", "none"),  # + its scan of all T
}

# "+" joins the two halves only where a name follows it, so an option value like 1e+3 stays whole.
_JOIN = re.compile(r"\+(?=[A-Za-z])")


def available_methods() -> list[str]:
    return sorted(METHODS)


def method_specs(name: str) -> tuple[str, str]:
    """(sampler spec, weighting spec) of a preset name or of a "sampler+weighting" composition."""
    name = name.strip()
    if name in METHODS:
        return METHODS[name]
    parts = _JOIN.split(name, maxsplit=1)
    if len(parts) == 2:
        require(all(p.strip() for p in parts), f"cannot read method {name!r}; expected 'sampler+weighting'")
        return parts[0].strip(), parts[1].strip()
    error = unknown_choice("method", name, METHODS)
    raise UserError(f"{error}; or pair any sampler and weighting as 'sampler+weighting', e.g. 'speed+min-snr:gamma=5'")


def make_method(name: str, schedule: NoiseSchedule, prediction: str | None = None,
                **sampler_options) -> tuple[TimestepSampler, LossWeighting]:
    """(sampler, weighting) for a method name. Keyword options go to the sampler (they override those
    in its spec); `prediction` (epsilon, v, x0) goes to the weighting."""
    sampler_spec, weighting_spec = method_specs(name)
    sampler = make_sampler(sampler_spec, schedule, **sampler_options)
    weighting_options = {} if prediction is None else {"prediction": prediction}
    return sampler, make_weighting(weighting_spec, schedule, **weighting_options)
