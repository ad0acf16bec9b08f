"""Loss weightings: HOW MUCH each sampled timestep's per-sample MSE counts (METHOD.md section 4).

Which timesteps are trained is the sampler's business (`samplers/`); the two compose freely:

    t, w_sampler = sampler.sample(batch, device)
    loss = (w_sampler * weighting.weights(t) * mse_per_sample).mean()

Every rule except `none` is defined, as in its paper, as a weight on the ε-prediction MSE. For a
model that predicts v or x0 the weight is converted so that the objective stays the same function of
the model: with x_t fixed, ‖x̂0 − x0‖² = ‖ε̂ − ε‖²/SNR_t and ‖v̂ − v‖² = ‖ε̂ − ε‖²/ᾱ_t, hence
w^x0 = w^ε·SNR_t and w^v = w^ε·SNR_t/(1 + SNR_t). For Min-SNR this gives exactly its published
v and x0 forms. `none` is the plain MSE of whatever the model predicts.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .diffusion import VARIANCES, model_log_variance
from .errors import require, unknown_choice
from .registry import Registry
from .samplers.fixed import check_tau
from .schedule import NoiseSchedule

WEIGHTINGS = Registry("weighting")
PREDICTIONS = ("epsilon", "v", "x0")
# diffusers' prediction_type names, so a scheduler's config can be passed through unchanged.
PREDICTION_ALIASES = {"v_prediction": "v", "sample": "x0"}


def make_weighting(spec: str, schedule: NoiseSchedule, **options) -> "LossWeighting":
    """Build a weighting from a name or spec string, e.g. make_weighting("min-snr:gamma=5", schedule)."""
    return WEIGHTINGS.make(spec, schedule, **options)


def available_weightings() -> list[str]:
    return WEIGHTINGS.names()


def check_prediction(prediction) -> str:
    name = PREDICTION_ALIASES.get(prediction, prediction)
    if name not in PREDICTIONS:
        raise unknown_choice("prediction type", str(prediction), PREDICTIONS + tuple(PREDICTION_ALIASES))
    return name


def check_real(name: str, value, low: float = -math.inf, low_open: bool = False, high: float = math.inf) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    bounds = f"{'>' if low_open else '>='} {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
    require(ok, f"option {name} must be a number {bounds}, got {value!r}")
    return float(value)


class LossWeighting:
    """Per-timestep weights w_t of the per-sample MSE, from the schedule's SNR.

    Subclasses give `epsilon_weights()` (float64, length T); the table for the chosen prediction type
    is computed once, and `weights(t)` looks it up on t's device."""

    name = "base"

    def __init__(self, schedule: NoiseSchedule, prediction: str = "epsilon"):
        require(isinstance(schedule, NoiseSchedule), f"expected a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.T = schedule.T
        self.prediction = check_prediction(prediction)
        table = self.table()
        require(bool(torch.isfinite(table).all() and (table >= 0).all()),
                f"weighting {self.name!r} gives non-finite or negative weights with these options")
        self._table = table
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def epsilon_weights(self) -> torch.Tensor:
        """w_t on the ε-prediction MSE, float64, length T."""
        raise NotImplementedError

    def table(self) -> torch.Tensor:
        """w_t for every t (float64, CPU), converted to the prediction type (module docstring)."""
        snr = self.schedule.snr
        factor = {"epsilon": torch.ones_like(snr), "x0": snr, "v": snr / (1 + snr)}[self.prediction]
        return self.epsilon_weights() * factor

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """w_t for a batch of timesteps: float32, on t's device."""
        require(isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex(),
                "weights(t) needs an integer tensor of timesteps")
        require(t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < self.T),
                f"weights(t) got timesteps outside [0, {self.T - 1}]")
        if t.device not in self._on_device:
            self._on_device[t.device] = self._table.to(device=t.device, dtype=torch.float32)
        return self._on_device[t.device][t]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, prediction={self.prediction!r})"


@WEIGHTINGS.register("none")
class NoWeighting(LossWeighting):
    """w_t = 1 for every prediction type: the plain ("simple") MSE."""

    name = "none"

    def table(self):
        return torch.ones(self.T, dtype=torch.float64)


@WEIGHTINGS.register("p2")
class P2Weighting(LossWeighting):
    """P2 (Choi et al. 2022): w_t = 1 / (k + SNR_t)^γ on the ε-MSE.

    k and γ are both settings to choose: the P2 paper recommends k = 1, γ = 1 (the defaults). The
    seed paper's appendix says "γ = 0, k = 1", which makes every w_t = 1, i.e. uniform weighting."""

    name = "p2"

    def __init__(self, schedule, prediction: str = "epsilon", k: float = 1.0, gamma: float = 1.0):
        self.k = check_real("k", k, low=0)
        self.gamma = check_real("gamma", gamma, low=0)
        super().__init__(schedule, prediction)

    def epsilon_weights(self):
        return (self.k + self.schedule.snr) ** -self.gamma


@WEIGHTINGS.register("min-snr")
class MinSNRWeighting(LossWeighting):
    """Min-SNR-γ (Hang et al. 2023): w_t = min(SNR_t, γ)/SNR_t on the ε-MSE; that is
    min(SNR_t, γ)/(SNR_t + 1) for v-prediction and min(SNR_t, γ) for x0-prediction. γ = 5."""

    name = "min-snr"

    def __init__(self, schedule, prediction: str = "epsilon", gamma: float = 5.0):
        self.gamma = check_real("gamma", gamma, low=0, low_open=True)
        super().__init__(schedule, prediction)

    def epsilon_weights(self):
        snr = self.schedule.snr
        return snr.clamp(max=self.gamma) / snr


@WEIGHTINGS.register("speed")
class SpeedWeighting(LossWeighting):
    """SpeeD, current version: with d_t the central-difference gradient of (1 − ᾱ_t) min-max
    normalised to [0, 1] over all t, and k' = 1 − λ,
    w_t = k' + (1 − 2k')·d_t for t < τ, w_t = 1 for t ≥ τ.
    λ = 0.6 (SpeeD's configs; `lam` here, since lambda is a Python keyword); τ = 700 at T = 1000
    (round(0.7·T) when not given), the same τ as the `speed` sampler."""

    name = "speed"

    def __init__(self, schedule, prediction: str = "epsilon", tau: int | None = None, lam: float = 0.6):
        self.tau = tau
        self.lam = check_real("lam", lam, low=0, high=1)
        super().__init__(schedule, prediction)

    def epsilon_weights(self):
        self.tau = check_tau(self.tau, self.T)
        d = np.gradient(1 - self.schedule.alphas_cumprod.numpy())
        d = (d - d.min()) / (d.max() - d.min())
        k = 1 - self.lam
        w = np.where(np.arange(self.T) < self.tau, k + (1 - 2 * k) * d, 1.0)
        return torch.as_tensor(w, dtype=torch.float64)


@WEIGHTINGS.register("speed-2024")
class Speed2024Weighting(LossWeighting):
    """SpeeD, 2024 code (the version the seed paper compared against): P2 with k = 1, γ = 1,
    w_t = 1/(1 + SNR_t)."""

    name = "speed-2024"

    def epsilon_weights(self):
        return 1 / (1 + self.schedule.snr)


@WEIGHTINGS.register("debiased")
class DebiasedWeighting(LossWeighting):
    """Debiased estimation (Yu et al. 2024): w_t = 1/√SNR_t. Unbounded as SNR_t → 0: about 157 at
    the last step of the linear schedule, about 10⁴ on the cosine schedule."""

    name = "debiased"

    def epsilon_weights(self):
        return self.schedule.snr.rsqrt()


@WEIGHTINGS.register("vlb")
class VLBWeighting(LossWeighting):
    """The variational bound's own weights (METHOD.md section 2): L_{t-1} = λ_t‖ε − ε_θ‖² + const with
    λ_t = β_t² / (2σ_t² α_t (1 − ᾱ_t)); σ_t² = β_t ("fixed-large") or β̃_t ("fixed-small").

    t = 0: β̃_0 = 0 would make λ_0 infinite, so σ_0² = β̃_1 in both modes, as diffusion.py does for
    the decoder (Ho et al.'s code). λ_0 is then the ε-weight of the Gaussian part of the decoder
    term −log p(x_0|x_1), about 0.9 on the linear schedule; the discretized decoder itself is not a
    weighted MSE, so this is the closest MSE weight, not the exact L_0."""

    name = "vlb"

    def __init__(self, schedule, prediction: str = "epsilon", variance: str = "fixed-large"):
        if variance not in VARIANCES:
            raise unknown_choice("value for option variance", str(variance), VARIANCES)
        self.variance = variance
        super().__init__(schedule, prediction)

    def epsilon_weights(self):
        s = self.schedule
        t = torch.arange(s.T)
        sigma2 = model_log_variance(s, t, torch.zeros(s.T, dtype=torch.float64), self.variance).exp()
        return s.betas**2 / (2 * sigma2 * s.alphas * (1 - s.alphas_cumprod))
