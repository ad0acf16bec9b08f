"""Does the credit keep its sign and ranking when the training loop runs under bf16 autocast?

    python studies/credit_autocast.py [--train-steps 200] [--samples 512] [--seeds 0,1]

The digits UNet (channels 32, 64) is trained for --train-steps Adam steps with uniform t, then the credit
(credit.first_order_credit: c_b = g_b · P∇L̂, exact) of --samples images at t spread evenly over [0, T) is
taken with the same weights, the same probe draws and the same noise: in fp32 (forward mode: the reference);
in fp32 by reverse mode through an opaque callable (a check: the same numbers); by reverse mode with every
pass of the model (the probe's backward, the batch's derivative) under bf16 autocast, which is what a credit
that followed the user's autocast would be; and as observe() takes it inside a user's
torch.autocast("cpu", dtype=torch.bfloat16) region. Printed: Pearson and Spearman correlation with the fp32
credit, the share of samples whose sign agrees, and the same for the credit averaged within 20 bands of t
(what the policy step sees, over many draws).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import UNet2DModel
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_digits

from timestep_sampling import NoiseSchedule
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.samplers.credit import first_order_credit


def trained_model(seed: int, steps: int):
    torch.manual_seed(seed)
    schedule = NoiseSchedule("linear", T=1000)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      layers_per_block=1, norm_num_groups=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    model = lambda x, t: net(x, t).sample  # noqa: E731
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (64,))]
        mse_per_sample(model, schedule, x0, torch.randint(1000, (64,))).mean().backward()
        opt.step()
        opt.zero_grad()
    return net, opt, schedule, data


class Opaque:
    """model(x_t, t) -> ε with the module out of the credit's sight (an object's attribute is not searched), so
    that the credit differentiates it as a black box, by two reverse passes; with `bf16`, every pass runs under
    bf16 autocast, as a model whose forward enters autocast itself (Accelerate's mixed_precision="bf16")."""

    def __init__(self, net, bf16: bool):
        self.held = {"net": net}
        self.bf16 = bf16

    def __call__(self, x, t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.held["net"](x, t).sample.float()


def compare(name, reference, other, t):
    bands = np.array_split(np.argsort(t), 20)
    ref_band, other_band = (np.array([c[b].mean() for b in bands]) for c in (reference, other))
    print(f"  {name:28s} Pearson {pearsonr(reference, other)[0]:.4f}  Spearman {spearmanr(reference, other)[0]:.4f}  "
          f"sign agrees {np.mean(np.sign(reference) == np.sign(other)):.3f}   20 bands of t: Pearson "
          f"{pearsonr(ref_band, other_band)[0]:.4f}  Spearman {spearmanr(ref_band, other_band)[0]:.4f}  sign agrees "
          f"{np.mean(np.sign(ref_band) == np.sign(other_band)):.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in (int(s) for s in args.seeds.split(",")):
        net, opt, schedule, data = trained_model(seed, args.train_steps)
        g = torch.Generator().manual_seed(10 + seed)
        x0 = data[torch.randint(len(data), (args.samples,), generator=g)]
        t = torch.linspace(0, 999, args.samples).round().long()
        options = dict(strata=64, bins=17)

        def credit(model):
            return first_order_credit(model, schedule, x0, t, opt, generator=torch.Generator().manual_seed(seed),
                                      **options).numpy()

        fp32 = credit(net)
        fp32_reverse = credit(Opaque(net, bf16=False))
        bf16_reverse = credit(Opaque(net, bf16=True))
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                in_region = credit(net)  # what observe() does inside the user's autocast region
        except RuntimeError as error:
            in_region = f"fails: {str(error).splitlines()[0][:90]}"
        print(f"seed {seed}: {args.train_steps} Adam steps, {args.samples} samples, fp32 credit: mean {fp32.mean():+.2e}, "
              f"share > 0 {np.mean(fp32 > 0):.3f}")
        compare("fp32, reverse mode", fp32, fp32_reverse, t.numpy())
        compare("bf16, reverse mode", fp32, bf16_reverse, t.numpy())
        if isinstance(in_region, str):
            print(f"  {'module in an autocast region':28s} {in_region}")
        else:
            compare("module in an autocast region", fp32, in_region, t.numpy())


if __name__ == "__main__":
    main()
