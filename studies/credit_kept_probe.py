"""Does the credit's dependence on t survive a kept probe gradient, and is it the probe sharing the batch's
images? From a run's latest checkpoint, trains on for N steps (its Adam state, uniform t) and, before each,
scores the batch three ways on the same timesteps: the fresh credit (probe on the batch's own images, the
default), the fresh credit with the probe on other training images, and the credit along the probe gradient
of the first step, kept (credit.StaleGradient). Prints the share of each one's variance that the decile of t
explains (reward_signal.t_dependence).

    python studies/credit_kept_probe.py --run runs/cells/credit3k/adaptive__linear__s0/runs/adaptive__linear__s0

2026-12-07, seed 0 of the K = 40 update's credit3k runs at step 3000, 40 steps: own 4.79 %, other images
4.13 %, kept 0.26 % (docs/learned-sampler.md#the-cheaper-update).
"""
import argparse
import copy
import math

import numpy as np
import torch

from timestep_sampling.analysis import checkpoint_to_train_on
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.reward_signal import t_dependence
from timestep_sampling.samplers.credit import StaleGradient, first_order_credit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, model, schedule, cfg, state, data = checkpoint_to_train_on(args.run, None, None, "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt.load_state_dict(copy.deepcopy(state["optimizer"]))
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    kept = StaleGradient(every=10**9)  # probed at the first step, kept after
    scores = {"own images": [], "other images": [], "kept": []}
    ts, steps = [], []
    for k in range(args.steps):
        x0 = data.train[torch.randint(len(data.train), (args.batch_size,), generator=gen)]
        other = data.train[torch.randint(len(data.train), (args.batch_size,), generator=gen)]
        t = torch.randint(schedule.T, (args.batch_size,), generator=gen)
        options = dict(strata=64, bins=data.bins, variance=cfg.variance)
        for name, extra in (("own images", {}), ("other images", {"probe_x0": other}), ("kept", {"stale": kept})):
            credit = first_order_credit(model, schedule, x0, t, opt, generator=torch.Generator().manual_seed(k),
                                        **options, **extra)
            scores[name].append(credit.numpy())
        ts.append(t.numpy())
        steps.append(np.full(args.batch_size, k))
        model.train()
        mse_per_sample(model, schedule, x0, t).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        opt.step()
        opt.zero_grad()
    t, steps = np.concatenate(ts), np.concatenate(steps)
    for name, values in scores.items():
        r = t_dependence(t, np.concatenate(values), steps, 10)
        print(f"{name}: t explains {100 * r['explained']:.2f}% (F {r['F']:.1f}, first decile's mean {r['mean'][0]:.2f})")


if __name__ == "__main__":
    main()
