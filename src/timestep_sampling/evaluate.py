"""Scoring a saved checkpoint: test bits/dim and image grids, rebuilt from the checkpoint alone."""
from __future__ import annotations

from pathlib import Path

import torch

from .bound import BoundResult, estimate_bpd, exact_bpd
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import make_config
from .data import load_data
from .errors import UserError
from .models import make_unet
from .sampling import ddim_sample, ddpm_sample, save_grid
from .schedule import NoiseSchedule


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder, a run's checkpoints/ folder, or a run folder (take the latest)."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if (root / "meta.json").exists():
            return root
        found = latest_checkpoint(root)
        if found:
            return found
    raise UserError(f"no checkpoint at {str(path)!r}; expected a run folder or a checkpoints/step_XXXXXXXX folder")


def load_model(path: str | Path, device="cpu", use_ema: bool = True):
    """(model, schedule, config, meta) from a checkpoint; the EMA weights by default."""
    path = resolve_checkpoint(path)
    weights, _, meta = load_checkpoint(path, map_location=device)
    cfg = make_config(**meta["config"])
    c, h, _ = meta["data_shape"]
    model = make_unet(h, c, preset=cfg.model, dropout=cfg.dropout)
    if use_ema:
        ema = {k.removeprefix("module."): v for k, v in weights["ema"].items() if k.startswith("module.")}
        model.load_state_dict(ema)
    else:
        model.load_state_dict(weights["model"])
    schedule = NoiseSchedule(cfg.schedule, T=cfg.T, beta_start=cfg.beta_start, beta_end=cfg.beta_end)
    return model.to(device).eval(), schedule, cfg, meta


def _require_ddpm(cfg) -> None:
    if cfg.objective != "ddpm":
        raise UserError(f"this checkpoint was trained with objective {cfg.objective!r}; evaluate and sample read DDPM "
                        f"checkpoints only (the run's metrics.jsonl and samples/ hold its bits/dim and samples)")


def evaluate_checkpoint(path, *, exact: bool = True, data: str | None = None, device="cpu",
                        progress: bool = True) -> BoundResult:
    """Test bits/dim of a checkpoint on its own data's test split (or on `data`)."""
    model, schedule, cfg, meta = load_model(path, device)
    _require_ddpm(cfg)
    dataset = load_data(data or cfg.data)
    if list(dataset.shape) != list(meta["data_shape"]):
        raise UserError(f"the checkpoint expects images of shape {meta['data_shape']}, the data has {list(dataset.shape)}")
    test = dataset.test.to(device)
    options = dict(bins=dataset.bins, variance=cfg.variance)
    if exact:
        return exact_bpd(model, schedule, test, progress=progress, **options)
    return estimate_bpd(model, schedule, test, progress=progress, **options)


def sample_checkpoint(path, out: str | Path, *, num: int = 64, method: str = "ddpm", steps: int = 50,
                      seed: int = 0, device="cpu", progress: bool = True) -> Path:
    """Write a PNG grid of `num` images drawn from a checkpoint's EMA model."""
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    model, schedule, cfg, meta = load_model(path, device)
    _require_ddpm(cfg)
    shape = (num,) + tuple(meta["data_shape"])
    gen = torch.Generator().manual_seed(seed)
    if method == "ddpm":
        images = ddpm_sample(model, schedule, shape, device=device, generator=gen, variance=cfg.variance,
                             progress=progress)
    elif method == "ddim":
        images = ddim_sample(model, schedule, shape, steps=steps, device=device, generator=gen, progress=progress)
    else:
        raise UserError(f"unknown sampling method {method!r}; valid choices: ddim, ddpm")
    try:
        return save_grid(images, out)
    except OSError as e:
        raise UserError(f"cannot write {str(out)!r} ({e.strerror or e})") from None
