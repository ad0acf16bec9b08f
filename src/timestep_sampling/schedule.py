"""Discrete DDPM noise schedules (METHOD.md section 1).

All quantities are kept in float64 on the CPU, where they are exact enough for the bound's small
terms, and handed out on the caller's device and dtype by `at()`.
"""
from __future__ import annotations

import math

import torch

from .errors import UserError, require, unknown_choice

# diffusers' names for the same schedules, so a user can copy a scheduler config verbatim.
ALIASES = {"scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
SCHEDULES = ("linear", "quad", "cosine")


def _cosine_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:
    s = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(name: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    name = ALIASES.get(name, name)
    if name == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if name == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        return _cosine_betas(T)
    raise unknown_choice("noise schedule", name, SCHEDULES + tuple(ALIASES))


class NoiseSchedule:
    """β_t, ᾱ_t and SNR_t for t = 0 … T-1 (code indices; the paper counts from 1).

    Build it from a name (`NoiseSchedule("linear", T=1000)`), from explicit betas, or from a diffusers
    scheduler (`NoiseSchedule.from_diffusers(DDPMScheduler(...))`).
    """

    def __init__(self, name: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 betas: torch.Tensor | None = None):
        if isinstance(T, bool) or not isinstance(T, int) or T <= 1:
            raise UserError(f"the number of timesteps T must be an integer > 1, got {T!r}")
        if betas is None:
            require(0 < beta_start < beta_end < 1,
                    f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
            betas = make_betas(name, T, beta_start, beta_end)
            name = ALIASES.get(name, name)
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        require(len(betas) == T, f"got {len(betas)} betas for T={T}")
        require(bool(((betas > 0) & (betas < 1)).all()), "every beta must lie in (0, 1)")
        self.name, self.T = name, T
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.snr = self.alphas_cumprod / (1 - self.alphas_cumprod)
        self.log_snr = self.snr.log()
        # EDM's noise level of x_t / √ᾱ_t, used by the EDM log-normal sampler.
        self.sigmas = self.snr.rsqrt()
        # Posterior q(x_{t-1} | x_t, x_0): variance and the two mean coefficients (on x_0 and on x_t).
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef_x0 = betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = self.alphas.sqrt() * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_diffusers(cls, scheduler) -> "NoiseSchedule":
        """Adopt the betas of a diffusers scheduler (DDPMScheduler, DDIMScheduler, ...)."""
        config = scheduler.config
        name = ALIASES.get(config.beta_schedule, config.beta_schedule)
        return cls(name, T=int(config.num_train_timesteps), beta_start=config.beta_start,
                   beta_end=config.beta_end, betas=scheduler.betas.double())

    def to_config(self) -> dict:
        return {"name": self.name, "T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end}

    def tensor(self, quantity: str, device=None, dtype=torch.float32) -> torch.Tensor:
        """The whole length-T array `quantity` (e.g. "snr") on the given device and dtype, cached."""
        device = torch.device(device or "cpu")
        key = (quantity, device, dtype)
        if key not in self._cache:
            values = getattr(self, quantity, None) if isinstance(quantity, str) else None
            if not isinstance(values, torch.Tensor):
                valid = sorted(name for name, value in vars(self).items() if isinstance(value, torch.Tensor))
                raise UserError(f"unknown schedule quantity {quantity!r}; valid: {', '.join(valid)}")
            self._cache[key] = values.to(device=device, dtype=dtype)
        return self._cache[key]

    def at(self, quantity: str, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """`quantity[t]`, shaped to broadcast against `like` (batch first) and on its device and dtype."""
        device = like.device if like is not None else t.device
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
        values = self.tensor(quantity, device, dtype)[t.to(device)]
        if like is not None:
            values = values.reshape(values.shape + (1,) * (like.ndim - values.ndim))
        return values

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name!r}, T={self.T})"

    def __eq__(self, other) -> bool:
        return isinstance(other, NoiseSchedule) and self.T == other.T and torch.equal(self.betas, other.betas)

    __hash__ = None
