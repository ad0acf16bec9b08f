"""Timestep samplers: which timesteps a diffusion model trains on."""
from .adaptive import AdaptiveSampler
from .band_policy import BandPolicySampler
from .credit_proportional import CreditProportionalSampler
from .base import TimestepSampler, UniformSampler, available_samplers, make_sampler
from .continuous import (ContinuousTimeSampler, FlowBetaSampler, FlowCosmapSampler, FlowLogitNormalSampler,
                         FlowModeSampler, FlowUniformSampler)
from .fixed import BetaSampler, LogitNormalSampler, LognormalEDMSampler, Speed2024Sampler, SpeedCurrentSampler
from .loss_aware import LossSecondMomentSampler, VarianceSampler

__all__ = [
    "AdaptiveSampler", "BandPolicySampler", "BetaSampler", "ContinuousTimeSampler", "CreditProportionalSampler", "FlowBetaSampler",
    "FlowCosmapSampler", "FlowLogitNormalSampler", "FlowModeSampler", "FlowUniformSampler", "LogitNormalSampler",
    "LognormalEDMSampler", "LossSecondMomentSampler",
    "Speed2024Sampler", "SpeedCurrentSampler", "TimestepSampler", "UniformSampler", "VarianceSampler",
    "available_samplers", "make_sampler",
]
