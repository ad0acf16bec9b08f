"""timestep_sampling: choose which diffusion timesteps to train on, and how to weight them.

The library core (this namespace) needs only torch, numpy and scipy; the trainer, data loaders, plots and
command line live in submodules that import it, never the other way round.
"""
from .bound import estimate_bpd, exact_bpd
from .diffusion import mse_per_sample, q_sample, vlb_terms
from .errors import UserError
from .flow import RectifiedFlow, flow_elbo_terms, flow_mse_per_sample, ode_likelihood
from .methods import available_methods, make_method
from .samplers import AdaptiveSampler, TimestepSampler, available_samplers, make_sampler
from .schedule import NoiseSchedule
from .weighting import LossWeighting, available_weightings, make_weighting

__all__ = [
    "AdaptiveSampler", "LossWeighting", "NoiseSchedule", "TimestepSampler", "UserError", "available_methods",
    "available_samplers", "available_weightings", "estimate_bpd", "exact_bpd", "make_method", "make_sampler",
    "make_weighting", "mse_per_sample", "q_sample", "vlb_terms",
    # continuous time (rectified flow)
    "RectifiedFlow", "flow_elbo_terms", "flow_mse_per_sample", "ode_likelihood",
]
__version__ = "0.1.0"
