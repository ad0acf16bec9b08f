"""The first-order credit by decile of t on a checkpoint, with the optimiser's preconditioner, without it
(P = I) and with a bigger bound probe: does the credit's shape come from the model itself, from Adam's
second moments, or from the probe's noise?

    python studies/credit_by_t.py --run runs/g3kA/runs/adaptive__linear__s2 [--batches 10] [--out F.json]

Each batch: 128 training images with t uniform on 0..T-1; the credits are standardised per batch (as the
sampler's advantages are), then averaged per decile of t. Prints one line per variant.
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from timestep_sampling.analysis import checkpoint_to_train_on
from timestep_sampling.samplers.credit import first_order_credit


def credit_by_decile(run: str, batches: int = 10, batch_size: int = 128, seed: int = 0) -> dict:
    step, model, schedule, cfg, state, data = checkpoint_to_train_on(run, None, None, "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt.load_state_dict(copy.deepcopy(state["optimizer"]))
    gen = torch.Generator().manual_seed(seed)
    work = [(data.train[torch.randint(len(data.train), (batch_size,), generator=gen)],
             torch.randint(schedule.T, (batch_size,), generator=gen)) for _ in range(batches)]
    result = {"run": run, "step": step, "batches": batches, "batch_size": batch_size, "variants": {}}
    for label, optimizer, strata in (("adam-P, 64 strata", opt, 64), ("identity, 64 strata", None, 64),
                                     ("adam-P, 512 strata", opt, 512)):
        ts, zs = [], []
        for k, (x0, t) in enumerate(work):
            c = first_order_credit(model, schedule, x0, t, optimizer, generator=torch.Generator().manual_seed(100 + k),
                                   strata=strata, bins=data.bins, variance=cfg.variance)
            zs.append(((c - c.mean()) / c.std()).numpy())
            ts.append(t.numpy())
        t, z = np.concatenate(ts), np.concatenate(zs)
        decile = np.minimum(t * 10 // schedule.T, 9)
        means = [float(z[decile == d].mean()) for d in range(10)]
        result["variants"][label] = means
        print(f"{run} step {step} [{label}]: standardised credit by decile of t "
              + " ".join(f"{m:+.2f}" for m in means), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, action="append", help="a run folder (repeatable)")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    results = [credit_by_decile(run, args.batches) for run in args.run]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
