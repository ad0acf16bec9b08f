"""Timestep samplers: which timesteps a diffusion model trains on."""
from .base import TimestepSampler, UniformSampler, available_samplers, make_sampler

__all__ = ["TimestepSampler", "UniformSampler", "available_samplers", "make_sampler"]
