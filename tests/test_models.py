"""The UNet presets: the `cifar` preset is DDPM's CIFAR-10 network."""
import pytest
import torch

from timestep_sampling.errors import UserError
from timestep_sampling.models import count_parameters, make_unet


def test_cifar_preset_is_ddpms_cifar10_network():
    """Ho et al. (2020), appendix B: 35.7M parameters; channels 128 x (1, 2, 2, 2), 2 residual blocks per
    level, one-head self-attention at 16x16 and in the middle, GroupNorm(32), dropout 0.1."""
    model = make_unet(32, 3, "cifar")
    assert count_parameters(model) == 35_746_307
    unet = model.unet
    assert unet.config.block_out_channels == (128, 256, 256, 256) and unet.config.layers_per_block == 2
    assert unet.config.norm_num_groups == 32
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                            "DownBlock2D"]
    # the attention of the down path sees 16x16 maps, and every attention layer has one head
    seen = []
    hooks = [b.attentions[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
             for b in (unet.down_blocks[1], unet.up_blocks[2])]
    attentions = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert len(attentions) == 2 + 3 + 1 and all(a.heads == 1 for a in attentions)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 32), torch.tensor([10]))
    assert out.shape == (1, 3, 32, 32) and seen == [(16, 16), (16, 16)]
    for h in hooks:
        h.remove()


def test_cifar_preset_rejects_sizes_it_cannot_halve_three_times():
    with pytest.raises(UserError, match="divisible by 8"):
        make_unet(12, 3, "cifar")
