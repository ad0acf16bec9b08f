"""Drawing images from a trained ε-model: DDPM ancestral sampling (the model whose bound we report)
and DDIM through diffusers' scheduler; and saving a grid as PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .diffusion import p_mean_variance, predict_eps
from .errors import UserError, require
from .schedule import NoiseSchedule


@torch.no_grad()
def ddpm_sample(model, schedule: NoiseSchedule, shape, *, device="cpu", generator: torch.Generator | None = None,
                variance: str = "fixed-large", clip: bool = True, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling through all T steps of p_θ(x_{t-1} | x_t), the same reverse process the
    bound scores. Noise comes from `generator` on the CPU, so a seed fixes the images on any device."""
    x = torch.randn(shape, generator=generator).to(device)
    for step in tqdm(range(schedule.T - 1, -1, -1), desc="sampling (DDPM)", disable=not progress, leave=False):
        t = torch.full((shape[0],), step, device=device, dtype=torch.long)
        mean, log_var, _ = p_mean_variance(schedule, predict_eps(model, x, t), x, t, variance, clip)
        if step == 0:
            return mean  # at t = 0 the mean is x̂_0 itself; the decoder's mode, no noise added
        x = mean + (0.5 * log_var).exp() * torch.randn(shape, generator=generator).to(device)
    return x


@torch.no_grad()
def ddim_sample(model, schedule: NoiseSchedule, shape, *, steps: int = 50, eta: float = 0.0, device="cpu",
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM (Song et al.) in `steps` steps, with diffusers' DDIMScheduler on our betas."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy(),
                              clip_sample=True, set_alpha_to_one=True, prediction_type="epsilon")
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator).to(device)
    for t in tqdm(scheduler.timesteps, desc="sampling (DDIM)", disable=not progress, leave=False):
        eps = predict_eps(model, x, torch.full((shape[0],), int(t), device=device, dtype=torch.long))
        x = scheduler.step(eps, int(t), x, eta=eta, generator=generator).prev_sample
    return x.clamp(-1, 1)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def write_image_file(path: str | Path, save) -> Path:
    """save(path) after making path's folder: a folder given as the path, or an unwritable one, is a UserError."""
    path = Path(path)
    require(not path.is_dir(), f"{str(path)!r} is a folder; give an image file, e.g. {path / 'grid.png'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path)
    except OSError as e:
        raise UserError(f"cannot write {str(path)!r} ({e.strerror or e})") from None
    return path


def check_image_path(path: str | Path) -> None:
    """Refuse, before any sampling, an output that cannot be an image file: a folder, or no image suffix."""
    path = Path(path)
    require(not path.is_dir(), f"{str(path)!r} is a folder; give an image file, e.g. {path / 'grid.png'}")
    require(path.suffix.lower() in IMAGE_SUFFIXES,
            f"{str(path)!r} needs an image suffix ({', '.join(IMAGE_SUFFIXES)}), e.g. grid.png")


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, min_size: int = 256) -> Path:
    """Write images in [-1, 1] (N, C, H, W) as one PNG grid, upscaled by whole pixels so that an 8x8
    digit is visible. An unwritable path is a UserError."""
    from PIL import Image

    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    pad = 1
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    scale = max(1, min_size // grid.shape[1])
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    check_image_path(path)
    return write_image_file(path, Image.fromarray(grid[..., 0] if c == 1 else grid).save)
