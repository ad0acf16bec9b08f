"""Is a rising test bound overfitting? The variational bound of a checkpoint on its test split and on as many
training images, in total and by bands of t, for one or more checkpoints of a run. A test bound that rises
while the training images' falls, in the same bands of t, is the model fitting its training images.

    python studies/train_test_gap.py runs/x/checkpoints/step_00005000 runs/x/checkpoints/step_00010000

Checkpoints of bench runs are removed once scored; `timestep-sampling bench --keep-checkpoints` keeps them.
Prints one block per checkpoint; --json writes the figures. The stratified estimate by default (the
trainer's: the same timesteps and noise for both splits), --exact for the sum over all T terms.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from timestep_sampling.bound import estimate_bpd, exact_bpd, stratified_timesteps
from timestep_sampling.data import load_data
from timestep_sampling.errors import UserError
from timestep_sampling.evaluate import load_model

BANDS = (0, 1, 20, 100, 300)  # band edges in t; the last band runs to T


def band_sums(terms: torch.Tensor, timesteps: torch.Tensor, weights: torch.Tensor, edges, T: int) -> dict[str, float]:
    """The bound's terms summed (with their stratum weights) within each band [lo, hi) of t."""
    bounds = [*edges, T]
    return {f"[{lo},{hi})": float((terms * weights)[(timesteps >= lo) & (timesteps < hi)].sum())
            for lo, hi in zip(bounds[:-1], bounds[1:])}


def gap(checkpoint: str, exact: bool = False, images: int | None = None, edges=BANDS) -> dict:
    """Bits/dim of a checkpoint's EMA model on its test split and on as many training images (the first
    `images` of each, if given)."""
    model, schedule, cfg, meta = load_model(checkpoint)
    if cfg.objective.split(":")[0] != "ddpm":
        raise UserError(f"{checkpoint}: the bound by bands of t is for DDPM checkpoints; this one is {cfg.objective!r}")
    data = load_data(cfg.data)
    if exact:
        timesteps, weights = torch.arange(schedule.T), torch.ones(schedule.T, dtype=torch.float64)
    else:
        timesteps, weights = stratified_timesteps(schedule.T)
    n = min(images or len(data.test), len(data.test))
    result = {"checkpoint": checkpoint, "step": meta.get("step"), "method": cfg.method, "exact": exact, "images": n}
    for split, subset in (("test", data.test[:n]), ("train", data.train[:n])):
        bound = (exact_bpd if exact else estimate_bpd)(model, schedule, subset, bins=data.bins,
                                                       variance=cfg.variance, progress=False)
        result[split] = {"bpd": bound.total, "prior": bound.prior,
                         "bands": band_sums(bound.terms, bound.timesteps, weights, edges, schedule.T)}
    return result


def lines(r: dict) -> list[str]:
    out = [f"{r['checkpoint']} (step {r['step']}, {r['method']}, {'exact' if r['exact'] else 'estimate'}): "
           f"{r['images']} images each: test {r['test']['bpd']:.3f}, train {r['train']['bpd']:.3f}, "
           f"gap {r['test']['bpd'] - r['train']['bpd']:+.3f}"]
    for band in r["test"]["bands"]:
        test, train = r["test"]["bands"][band], r["train"]["bands"][band]
        out.append(f"  t in {band:<11} test {test:.3f}  train {train:.3f}  gap {test - train:+.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (or run folders: their latest)")
    parser.add_argument("--exact", action="store_true", help="all T terms instead of the stratified estimate")
    parser.add_argument("--images", type=int, help="the first N images of each split (default: the whole test split)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if args.images is not None and args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    try:
        results = [gap(path, args.exact, args.images) for path in args.checkpoints]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for r in results:
        print("\n".join(lines(r)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
