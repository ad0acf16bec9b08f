"""The adaptive timestep sampler in your own training loop: a small diffusion model on the 8x8 digits.

    python examples/custom_loop.py --steps 300

`sampler.sample` picks each image's timestep; `sampler.observe` wraps the optimiser step, and every
`update_every`-th step credits each sample with how much its own gradient step lowers the bound (given
the optimiser's preconditioner) and moves the sampler's Beta toward the timesteps with most credit.
"""
import argparse

import torch
from sklearn.datasets import load_digits

from timestep_sampling import NoiseSchedule, make_sampler, mse_per_sample
from timestep_sampling.models import make_unet


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-every", type=int, help="steps between sampler updates (default: the sampler's)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1  # (1797, 1, 8, 8) in [-1, 1]
    schedule = NoiseSchedule("linear", T=1000)
    model = make_unet(8, 1, "tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    options = {} if args.update_every is None else {"update_every": args.update_every}
    sampler = make_sampler("adaptive", schedule, bins=17, **options)  # the digits have 17 grey levels
    gen = torch.Generator().manual_seed(args.seed)

    losses = []
    for step in range(1, args.steps + 1):
        x0 = data[torch.randint(len(data), (args.batch_size,), generator=gen)]
        t, w = sampler.sample(len(x0), x0.device, generator=gen, x0=x0)
        with sampler.observe(model, x0, optimizer=opt):
            loss = (w * mse_per_sample(model, schedule, x0, t)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        losses.append(loss.item())
        if step % sampler.update_every == 1 % sampler.update_every:  # just after a sampler update
            s = sampler.last_stats
            print(f"step {step:4d}  loss {sum(losses[-40:]) / len(losses[-40:]):.4f}  "
                  f"sampler: alpha {s['alpha_mean']:.3f}±{s['alpha_std']:.3f}  "
                  f"beta {s['beta_mean']:.3f}±{s['beta_std']:.3f}  P(t<100) {sampler.probabilities()[:100].sum():.3f}  "
                  f"credit {s['reward_mean']:+.2e}")
    first, last = (sum(part) / len(part) for part in (losses[:10], losses[-10:]))
    print(f"done: {args.steps} steps, {sampler.updates} sampler updates, loss {first:.4f} -> {last:.4f}")


if __name__ == "__main__":
    main()
