"""Does the first-order credit predict what training on a region of t actually does a few steps later?

    python studies/credit_vs_lookahead.py --run runs/g3k/runs/adaptive-bands__linear__s2 [--steps 40]
        [--reps 6] [--batches 10] [--delta 1e-3] [--out F.json]      (--reps 0: the credit alone)

For each region R of t, on the run's latest checkpoint (training weights, its Adam state):
- credit: the mean standardised first-order credit of the samples in R (uniform batches, as the sampler sees it);
- lookahead: train `steps` steps with half of every batch uniform and half drawn from R (the other runs
  train all-uniform batches), then the change of the test bound (stratified estimate, fixed noise)
  minus that of the all-uniform runs: the marginal effect of training more on R. Negative is better.

If the credit is right, the regions it ranks high have the most negative lookahead. `reps` independent
runs per region give the spread (the data order and noise differ; the evaluation's noise is fixed).
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from timestep_sampling.analysis import checkpoint_to_train_on
from timestep_sampling.bound import estimate_bpd
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.samplers.credit import first_order_credit

REGIONS = {"0-3": (0, 3), "3-20": (3, 20), "20-100": (20, 100), "100-300": (100, 300), "300-1000": (300, 1000)}


def credit_by_region(model, schedule, cfg, state, data, batches: int, delta: float = 1e-3) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt.load_state_dict(copy.deepcopy(state["optimizer"]))
    gen = torch.Generator().manual_seed(0)
    ts, zs = [], []
    for k in range(batches):
        x0 = data.train[torch.randint(len(data.train), (128,), generator=gen)]
        t = torch.randint(schedule.T, (128,), generator=gen)
        c = first_order_credit(model, schedule, x0, t, opt, generator=torch.Generator().manual_seed(100 + k),
                               bins=data.bins, variance=cfg.variance, delta=delta)
        zs.append(((c - c.mean()) / c.std()).numpy())
        ts.append(t.numpy())
    t, z = np.concatenate(ts), np.concatenate(zs)
    return {name: float(z[(t >= lo) & (t < hi)].mean()) for name, (lo, hi) in REGIONS.items()}


def bound_after(model, schedule, cfg, state, data, region, steps: int, rep: int) -> float:
    """The test bound after `steps` steps whose batches are half uniform, half from `region` (None: all uniform)."""
    m = copy.deepcopy(model)
    opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)
    opt.load_state_dict(copy.deepcopy(state["optimizer"]))
    gen = torch.Generator().manual_seed(1000 * rep + 1)
    lo, hi = region or (0, schedule.T)
    m.train()
    for _ in range(steps):
        x0 = data.train[torch.randint(len(data.train), (128,), generator=gen)]
        t = torch.cat([torch.randint(schedule.T, (64,), generator=gen), torch.randint(lo, hi, (64,), generator=gen)])
        loss = mse_per_sample(m, schedule, x0, t, torch.randn(x0.shape, generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
    m.eval()
    return float(estimate_bpd(m, schedule, data.test, seed=7, bins=data.bins, variance=cfg.variance).total)


def compare(run: str, steps: int, reps: int, batches: int, delta: float = 1e-3) -> dict:
    step, model, schedule, cfg, state, data = checkpoint_to_train_on(run, None, None, "cpu")
    credit = credit_by_region(model, schedule, cfg, state, data, batches, delta)
    if reps == 0:  # the credit alone
        print(f"{run} step {step}, credit (delta {delta:g}) by region: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in credit.items()), flush=True)
        return {"run": run, "step": step, "delta": delta, "credit": credit}
    uniform = [bound_after(model, schedule, cfg, state, data, None, steps, r) for r in range(reps)]
    result = {"run": run, "step": step, "steps": steps, "reps": reps, "uniform_bpd": uniform, "regions": {}}
    print(f"{run} step {step}: {steps} steps, {reps} reps; uniform after: {np.mean(uniform):.4f} ± "
          f"{np.std(uniform, ddof=1):.4f}\n  region     credit   lookahead − uniform (bits/dim, mean ± se)")
    for name, region in REGIONS.items():
        after = [bound_after(model, schedule, cfg, state, data, region, steps, r) for r in range(reps)]
        diff = np.array(after) - np.array(uniform)  # paired: the same data order and noise as uniform's rep
        se = float(diff.std(ddof=1) / np.sqrt(reps))
        result["regions"][name] = {"credit": credit[name], "lookahead": float(diff.mean()), "se": se,
                                   "after": after}
        print(f"  {name:9s} {credit[name]:+7.2f}   {diff.mean():+.4f} ± {se:.4f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, action="append", help="a run folder (repeatable)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--delta", type=float, default=1e-3, help="the credit's central-difference step")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    results = [compare(run, args.steps, args.reps, args.batches, args.delta) for run in args.run]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
