"""Is the credit's central difference the derivative it stands for? Against autograd, on a real checkpoint.

    python studies/credit_exactness.py --run runs/u1k_s2 [--deltas 1e-2,1e-3,1e-4]

The credit c_b = d/dδ loss_b(θ + δ·d) at δ = 0 (credit.py) is computed by a central difference of the
batch's losses at θ ± δ·d. Here the same c_b is computed exactly (per-sample autograd: g_b · d) for 16
images at t from 0 to 999, with the same probe draws and noise, and printed beside the difference at each
δ. On a digits model after 1000 uniform steps (seed 2) the default δ = 1e-3 had the wrong sign at several
t < 20 (the loss is far from linear over one Adam-sized step there) and δ = 1e-4 matched autograd.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from timestep_sampling.analysis import checkpoint_to_train_on
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.samplers.credit import bound_probe, directional_credit, eval_mode, preconditioner

T_SHOWN = [0, 1, 2, 3, 5, 8, 12, 18, 40, 80, 150, 300, 500, 700, 900, 999]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--deltas", default="1e-2,1e-3,1e-4")
    args = parser.parse_args()
    step, model, schedule, cfg, state, data = checkpoint_to_train_on(args.run, None, None, "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt.load_state_dict(copy.deepcopy(state["optimizer"]))
    gen = torch.Generator().manual_seed(0)
    x0 = data.train[torch.randint(len(data.train), (len(T_SHOWN),), generator=gen)]
    t, noise = torch.tensor(T_SHOWN), torch.randn(x0.shape, generator=gen)

    def probe():  # the same probe draws every call
        return bound_probe(model, schedule, x0, 64, torch.Generator().manual_seed(123), bins=data.bins,
                           variance=cfg.variance)

    print(f"{args.run} step {step}; t: {T_SHOWN}")
    for delta in map(float, args.deltas.split(",")):
        c = directional_credit(model, probe, lambda net: mse_per_sample(net, schedule, x0, t, noise), opt, delta=delta)
        print(f"central difference, delta {delta:g}: {np.round(c.numpy(), 1).tolist()}")
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        scales = [preconditioner(opt, p) for p in params]  # None: the identity
        direction = [g if s is None else g * s for g, s in zip(torch.autograd.grad(probe(), params), scales)]
        rms = torch.sqrt(sum((d.double() ** 2).sum() for d in direction) / sum(d.numel() for d in direction))
        exact = []
        for b in range(len(t)):
            loss = mse_per_sample(model, schedule, x0[b:b + 1], t[b:b + 1], noise[b:b + 1]).sum()
            grads = torch.autograd.grad(loss, params)
            exact.append(float(sum((g.double() * d.double()).sum() for g, d in zip(grads, direction)) / rms))
    print(f"autograd (exact):             {np.round(exact, 1).tolist()}")


if __name__ == "__main__":
    main()
