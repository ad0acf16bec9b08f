"""The reference ε-prediction network: diffusers' UNet2DModel behind the `model(x_t, t) -> eps`
interface that the rest of the project uses. Any callable with that signature works in its place."""
from __future__ import annotations

import torch
from torch import nn

from .errors import require

# "tiny" is the digits default: 267k parameters, about 14.7 training steps/s at batch 128 on 2 idle CPU
# cores (measured with the trainer; README "Measured"), so a useful run takes minutes. "small" is for 16x16
# to 32x32 images on a CPU. "cifar" is DDPM's CIFAR-10 network (Ho et al. 2020, appendix B): channels 128,
# multipliers 1-2-2-2, 2 residual blocks per level, self-attention (one head) at the 16x16 level and in the
# middle, GroupNorm of 32 groups, dropout 0.1: 35,746,307 parameters for 3x32x32 (the paper's 35.7M).
# `attention` lists the levels (0 = full resolution) whose blocks attend.
PRESETS = {
    "tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, attention=(), norm_groups=8),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention=(), norm_groups=8),
    "cifar": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, attention=(1,), norm_groups=32,
                  single_head=True),
}


class EpsModel(nn.Module):
    """Wraps a diffusers UNet2DModel so that `model(x_t, t)` returns the predicted noise tensor."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def make_unet(image_size: int, channels: int, preset: str = "tiny", dropout: float = 0.1) -> EpsModel:
    """A UNet2DModel for images from 8x8 to 32x32 (any size divisible by 2^(levels-1))."""
    from diffusers import UNet2DModel  # imported here: diffusers is slow to import and only the trainer needs it

    require(preset in PRESETS, f"unknown model preset {preset!r}; valid choices: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    levels = len(cfg["block_out_channels"])
    require(image_size % 2 ** (levels - 1) == 0,
            f"model preset {preset!r} needs an image size divisible by {2 ** (levels - 1)}, got {image_size}")
    down, up = ["DownBlock2D"] * levels, ["UpBlock2D"] * levels
    for level in cfg["attention"]:  # the up path runs the levels in reverse
        down[level], up[levels - 1 - level] = "AttnDownBlock2D", "AttnUpBlock2D"
    # diffusers splits attention into heads of attention_head_dim channels (default 8); DDPM's has one head
    head_dim = max(cfg["block_out_channels"]) if cfg.get("single_head") else 8
    unet = UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=cfg["norm_groups"],
        dropout=dropout, attention_head_dim=head_dim,
    )
    return EpsModel(unet)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
