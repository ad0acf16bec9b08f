"""How much of the adaptive sampler's reward is sampling noise, with and without common random numbers.

    python studies/adaptive_reward_noise.py            # about 1.5 minutes on 2 shared CPU cores

A tiny UNet is trained for a while on the digits (uniform t), then ONE training update θ_k → θ_{k+1} is
fixed. The same update is scored R times, each with fresh probe noise (the sampler's seed), by the
reward of every sample of a batch of 128:

    reward_b = Σ_{t∈S} [L_t(x0_b; θ_k) − L_t(x0_b; θ_{k+1})]

with common_noise=True (the same t, ε and x_t before and after: the improvement) and with
common_noise=False (fresh ε after, as the reference implementation). Both estimate the same expected
change; the table gives their spread over the R repetitions, per sample and for the batch mean,
for the initial S = {0, 1, 2} and for a spread-out S = {10, 100, 500}.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from timestep_sampling import NoiseSchedule, make_sampler, mse_per_sample
from timestep_sampling.models import make_unet


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    return torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1


def trained_model_and_update(schedule, data, pretrain: int, batch_size: int):
    """A trained-ish model, and its state before and after one more Adam step on a fixed batch."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = make_unet(8, 1, "tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x0):
        t = torch.randint(schedule.T, (len(x0),), generator=gen)
        loss = mse_per_sample(model, schedule, x0, t, torch.randn(x0.shape, generator=gen)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    for _ in range(pretrain):
        loss = step(data[torch.randint(len(data), (batch_size,), generator=gen)])
    x0 = data[torch.randint(len(data), (batch_size,), generator=gen)]
    before = copy.deepcopy(model.state_dict())
    step(x0)
    after = copy.deepcopy(model.state_dict())
    return model, x0, before, after, loss


def rewards(model, schedule, x0, before, after, subset, common_noise: bool, seed: int) -> torch.Tensor:
    """Per-sample rewards of the fixed update, as the sampler measures them with probe seed `seed`."""
    sampler = make_sampler("adaptive", schedule, bins=17, update_every=1, lr=0.0, seed=seed,
                           common_noise=common_noise)
    sampler.subset = list(subset)  # full scan: feature indices are timesteps
    model.load_state_dict(before)
    sampler.sample(len(x0), x0=x0)
    with sampler.observe(model, x0):
        model.load_state_dict(after)  # the update being scored
    return sampler.last_rewards


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pretrain", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    schedule = NoiseSchedule("linear", T=1000)
    model, x0, before, after, loss = trained_model_and_update(schedule, digits(), args.pretrain, 128)
    print(f"model: make_unet(8, 1, 'tiny') after {args.pretrain} Adam steps (training MSE {loss:.4f}); "
          f"one more step scored {args.repeats} times on a batch of {len(x0)}\n")
    print("| S | common noise | mean reward | sd per sample | sd of batch mean | "
          "variance ratio fresh/common (per sample, batch mean) |")
    print("|---|---|---|---|---|---|")
    for subset in ([0, 1, 2], [10, 100, 500]):
        spread = {}
        for common_noise in (True, False):
            r = torch.stack([rewards(model, schedule, x0, before, after, subset, common_noise, seed)
                             for seed in range(args.repeats)]).double()  # (R, B)
            per_sample_var = r.var(0).mean().item()
            mean_var = r.mean(1).var().item()
            spread[common_noise] = (per_sample_var, mean_var)
            ratio = ""
            if not common_noise:
                ratio = (f"{per_sample_var / spread[True][0]:.1f}x, {mean_var / spread[True][1]:.1f}x")
            print(f"| {subset} | {common_noise} | {r.mean().item():+.3e} | {np.sqrt(per_sample_var):.3e} | "
                  f"{np.sqrt(mean_var):.3e} | {ratio} |")
    print(f"\n(total {time.perf_counter() - start:.0f} s, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
