"""Under gradient accumulation, should the credit be taken on a micro-step whose optimiser step is skipped?

    python studies/accumulation_credit.py [--micro-steps 400] [--seeds 0,1] [--K 4]

The credit c_b = g_b · P∇L̂ is a derivative at the current weights; a micro-batch's gradient joins the next real
step, taken from the same weights. So the credit on a non-stepping micro-step should say the same as on the
stepping one. Four arms on the digits UNet (channels 32, 64; AdamW 1e-3), micro-batch 32, for --micro-steps
micro-steps, each arm from the same initial weights and with the same data and noise per micro-step:

  every   accumulation 2, observe() on every micro-step, K micro-steps between updates (K even: every update
          falls on a micro-step that does NOT step)
  sync    accumulation 2, observe() only on the stepping micro-steps, K/2 of them between updates (the same
          number of updates, every one on a micro-step that steps)
  sync-K  accumulation 2, observe() only on the stepping micro-steps, K of them between updates (half as many)
  big     no accumulation: batch 64, one step per pair of micro-batches, K/2 between updates (what accumulation
          stands for)

Printed per arm and seed: the sampler's updates, the total variation of its pmf from the start, its mass below
t = 100, and the Beta's (α, β); then the TV between the arms' final pmfs.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from diffusers import UNet2DModel
from sklearn.datasets import load_digits

from timestep_sampling import NoiseSchedule, make_sampler
from timestep_sampling.diffusion import mse_per_sample

ACCUMULATION, MICRO_BATCH = 2, 32


def run(arm: str, seed: int, micro_steps: int, K: int):
    torch.manual_seed(seed)
    schedule = NoiseSchedule("linear", T=1000)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      layers_per_block=1, norm_num_groups=8)
    model = lambda x, t: net(x, t).sample  # noqa: E731
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    every = {"every": K, "sync": K // 2, "sync-K": K, "big": K // 2}[arm]
    sampler = make_sampler("adaptive", schedule, bins=17, update_every=every, seed=seed)
    start = sampler.probabilities().clone()
    data = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    g = torch.Generator().manual_seed(1000 + seed)
    batches = [(data[torch.randint(len(data), (MICRO_BATCH,), generator=g)],
                torch.randn(MICRO_BATCH, 1, 8, 8, generator=g)) for _ in range(micro_steps)]
    if arm == "big":
        batches = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(batches[::2], batches[1::2])]
    for i, (x0, noise) in enumerate(batches):
        steps = arm == "big" or (i + 1) % ACCUMULATION == 0
        t, w = sampler.sample(len(x0), "cpu", x0=x0)
        observe = arm in ("every", "big") or steps
        with sampler.observe(model, x0, optimizer=opt) if observe else contextlib.nullcontext():
            scale = 1 if arm == "big" else 1 / ACCUMULATION
            (scale * (w * mse_per_sample(model, schedule, x0, t, noise)).mean()).backward()
            if steps:
                opt.step()
                opt.zero_grad()
    pmf = sampler.probabilities()
    alpha, beta = (float(v) for v in sampler.concentrations())
    return pmf, {"updates": sampler.updates, "tv": 0.5 * float((pmf - start).abs().sum()),
                 "below100": float(pmf[:100].sum()), "alpha": alpha, "beta": beta}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--K", type=int, default=4, help="micro-steps between updates in the 'every' arm (even)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    arms = ("every", "sync", "sync-K", "big")
    for seed in (int(s) for s in args.seeds.split(",")):
        pmfs = {}
        for arm in arms:
            began = time.perf_counter()
            pmfs[arm], r = run(arm, seed, args.micro_steps, args.K)
            print(f"seed {seed}  {arm:7s} updates {r['updates']:3d}  TV from start {r['tv']:.3f}  "
                  f"P(t<100) {r['below100']:.3f}  alpha {r['alpha']:.3f}  beta {r['beta']:.3f}  "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
        print(f"seed {seed}  TV between arms: " + "  ".join(
            f"{a}/{b} {0.5 * float((pmfs[a] - pmfs[b]).abs().sum()):.3f}"
            for i, a in enumerate(arms) for b in arms[i + 1:]), flush=True)


if __name__ == "__main__":
    main()
