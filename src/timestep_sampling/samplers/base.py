"""The timestep-sampler interface (improved-diffusion's `sample(batch_size, device) -> (t, weights)`)
and the registry behind `make_sampler`.

A sampler decides WHICH timesteps are trained. By default the returned weights are ones: a
non-uniform sampler deliberately changes the objective, as in the seed paper. With `unbiased=True`
an explicit-pmf sampler returns importance weights 1/(T·p_t) instead, so the expected weighted loss
equals the uniform one. HOW each timestep's loss is weighted is a separate concern (`weighting.py`).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..devices import check_device
from ..errors import UserError, require
from ..registry import Registry, parse_spec
from ..schedule import NoiseSchedule

SAMPLERS = Registry("sampler")


def check_batch_size(batch_size) -> None:
    require(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 0,
            f"batch_size must be an integer >= 0, got {batch_size!r}")


def check_observed_batch(drawn: torch.Tensor | None, x0, what: str = "timesteps") -> None:
    """The checks every learned sampler's observe() makes on an update step: sample() drew for this batch,
    x0 is a tensor of that many images, and not none (an empty batch has nothing to credit; DistributedSampler
    pads shards, so no rank's batch is empty)."""
    require(drawn is not None,
            f"observe() on an update step needs the {what} of this batch: call sampler.sample(...) first")
    size = len(x0) if isinstance(x0, torch.Tensor) and x0.dim() > 0 else type(x0).__name__
    require(size == len(drawn), f"observe() got a batch of {size} but the last sample() drew {len(drawn)} {what}")
    require(len(drawn) > 0, "observe() got an empty batch: an update step needs at least one image")


def with_uniform_floor(u: torch.Tensor, mix: float, generator: torch.Generator | None) -> torch.Tensor:
    """u (float64, CPU) with each entry replaced, with probability `mix`, by a fresh U(0, 1) draw: the uniform
    floor of the Beta samplers, learned and fixed alike. It takes two more uniforms per draw (pick, then
    value), and only when mix > 0, so that without a floor a generator's stream is what it always was."""
    if not mix:
        return u
    device = generator.device if generator is not None else "cpu"
    pick = torch.rand(len(u), generator=generator, device=device, dtype=torch.float64)
    flat = torch.rand(len(u), generator=generator, device=device, dtype=torch.float64)
    return torch.where(pick.cpu() < mix, flat.cpu(), u)


def check_state(state, keys, name: str, optional=()) -> None:
    """A saved state handed to `load_state_dict` has exactly the keys this sampler writes (those in `optional`
    may be absent), else a UserError rather than a KeyError from deep inside: another method's checkpoint,
    a discrete sampler's state given to a flow sampler, any other dict."""
    keys = set(keys)
    given = set(state) if isinstance(state, dict) else set()
    missing, extra = sorted(keys - set(optional) - given), sorted(given - keys)
    problems = []
    if missing:
        problems.append(f"it lacks {', '.join(map(repr, missing))}")
    if extra:
        problems.append(f"it has {', '.join(map(repr, extra))}, which this sampler does not write")
    require(isinstance(state, dict) and not problems,
            f"not a saved state of the {name!r} sampler: {'; '.join(problems) or 'expected a dict'}")


class TimestepSampler:
    """Base class. Subclasses with an explicit distribution override `probabilities()`; samplers
    that learn override `update()` (from losses) or `observe()` (from the model, as the adaptive
    sampler does) and `state_dict()` / `load_state_dict()`."""

    name = "base"
    continuous = False  # True for samplers of a continuous time t in (0, 1) (samplers/continuous.py)

    def __init__(self, schedule: NoiseSchedule, unbiased: bool = False):
        require(isinstance(schedule, NoiseSchedule),
                f"sampler {self.name!r} draws discrete timesteps and needs a NoiseSchedule, "
                f"got {type(schedule).__name__}")
        self.schedule = schedule
        self.T = schedule.T
        self.unbiased = bool(unbiased)
        if self.unbiased and not self.has_pmf:
            raise UserError(f"sampler {self.name!r} has no explicit distribution over t, so it cannot give "
                            f"unbiased importance weights; use unbiased=False")

    has_pmf = True  # False for samplers whose distribution over t is only implicit
    loss_weighting = None  # the weighting the loop trains with, where a learned sampler's credit needs it

    def pair_weighting(self, weighting) -> None:
        """Tell the sampler the loss weighting the loop trains with (make_method and the trainer do). Only a
        learned sampler whose credit targets the loop's objective (credit_target="objective") uses it."""
        self.loss_weighting = weighting

    def probabilities(self) -> torch.Tensor:
        """The length-T pmf over t (float64, CPU)."""
        raise NotImplementedError(f"sampler {self.name!r} has no explicit distribution over t")

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None,
               x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `batch_size` timesteps. Returns (t: LongTensor in [0, T-1], weights: float tensor).

        Draws happen on the CPU (with `generator` when given) and are moved to `device`, so a seed
        gives the same timesteps on every device."""
        check_batch_size(batch_size)
        device = check_device(device)
        p = self.probabilities()
        if batch_size == 0:  # torch.multinomial refuses n = 0; an empty shard is not a user error
            t = torch.zeros(0, dtype=torch.long)
        else:
            t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return t.to(device), self.importance_weights(t).to(device)

    def importance_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Ones, or 1/(T·p_t) in unbiased mode."""
        if not self.unbiased:
            return torch.ones(t.shape, dtype=torch.float32)
        p = self.probabilities()[t.cpu()]
        return (1.0 / (self.T * p)).float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Learn from the per-sample losses of the last step (no-op for fixed samplers). Under
        torch.distributed, implementations gather from every rank so all ranks stay identical."""

    def observe(self, model, x0: torch.Tensor, **kwargs):
        """Context manager around one optimiser step, for samplers that measure how the update changed
        the model. A no-op here."""
        return contextlib.nullcontext()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, unbiased={self.unbiased})"


def make_sampler(spec: str, schedule: NoiseSchedule | None = None, **options) -> TimestepSampler:
    """Build a sampler from a name or a spec string, e.g. make_sampler("speed:k=5", schedule).
    Continuous-time samplers ("flow-...") need no schedule: make_sampler("flow-logit-normal")."""
    _load_all()
    name, _ = parse_spec(spec)
    if name not in SAMPLERS.names():
        for explain in _UNKNOWN_NAME_HOOKS.values():
            explain(name)  # may raise a UserError that says what the name is instead
    return SAMPLERS.make(spec, schedule, **options)


# The hook point by which a layer above the samplers explains a name make_sampler does not know before it is
# refused as an unknown sampler: methods.py installs one that says "that is a method, use make_method". The
# samplers never import the layers above them (tests/test_imports.py).
_UNKNOWN_NAME_HOOKS: dict[str, Callable[[str], None]] = {}


def explain_unknown_sampler(hook: Callable[[str], None]) -> Callable[[str], None]:
    """Register hook(name), called with a name that is not a sampler's before make_sampler refuses it; a hook
    raises a UserError naming what the name is instead, or returns to leave the usual "unknown sampler" error.
    Keyed by the hook's module and name, so importing its module again replaces it rather than adding a copy."""
    _UNKNOWN_NAME_HOOKS[f"{hook.__module__}.{hook.__qualname__}"] = hook
    return hook


def available_samplers() -> list[str]:
    _load_all()
    return SAMPLERS.names()


def _load_all() -> None:
    """Import every sampler module so that each has registered itself."""
    import importlib
    import pkgutil
    from .. import samplers
    for module in pkgutil.iter_modules(samplers.__path__):
        importlib.import_module(f"{samplers.__name__}.{module.name}")


@SAMPLERS.register("uniform")
class UniformSampler(TimestepSampler):
    """t ~ U{0, …, T-1}: DDPM's default."""

    name = "uniform"

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)

    def sample(self, batch_size, device=None, generator=None, x0=None):
        check_batch_size(batch_size)
        device = check_device(device)
        t = torch.randint(0, self.T, (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)
