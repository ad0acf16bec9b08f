"""timestep_sampling: choose which diffusion timesteps to train on, and how to weight them.

The library core (this namespace) needs only torch and numpy; the trainer, data loaders and
command line live in submodules that import it, never the other way round.
"""
from .bound import estimate_bpd, exact_bpd
from .diffusion import mse_per_sample, q_sample, vlb_terms
from .errors import UserError
from .samplers import TimestepSampler, available_samplers, make_sampler
from .schedule import NoiseSchedule

__all__ = [
    "NoiseSchedule", "TimestepSampler", "UserError", "available_samplers", "estimate_bpd", "exact_bpd",
    "make_sampler", "mse_per_sample", "q_sample", "vlb_terms",
]
__version__ = "0.1.0"
