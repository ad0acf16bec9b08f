"""Soak: a long adaptive-sampler run on the digits, watching resident memory and non-finite values.

    python benchmarks/soak.py                          # 20,000 steps: about 30-40 minutes on 2 CPU cores
    python benchmarks/soak.py --steps 2000 --every 200 # a quick look

Memory must stay flat once the run is warm: the sampler's queue is bounded, metrics go to disk, and no
autograd graph may outlive its step. The script samples the process's resident set size (VmRSS) every
--every steps and reports the peak, the final value, and the growth from the first sample after
--warm steps to the end, with the least-squares slope over that stretch (MB per 1,000 steps), plus the
skipped (non-finite) steps and sampler updates. Figures go to stdout and to OUT/soak.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from timestep_sampling.config import make_config
from timestep_sampling.train import Trainer


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; psutil elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil  # not a dependency: only needed off Linux

    return psutil.Process().memory_info().rss / 2**20


class SoakTrainer(Trainer):
    """The reference trainer, sampling memory every `every` steps."""

    def __init__(self, cfg, every: int):
        super().__init__(cfg, progress=True)
        self.every, self.samples = every, []

    def train_step(self):
        loss = super().train_step()
        if (self.step + 1) % self.every == 0:
            self.samples.append({"step": self.step + 1, "rss_mb": rss_mb(), "seconds": time.perf_counter()})
        return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=500, help="memory sample interval in steps")
    parser.add_argument("--warm", type=int, default=2_000, help="steps before growth is measured")
    parser.add_argument("--sampler", default="adaptive")
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = make_config(out=args.out, method="adaptive", sampler=args.sampler, steps=args.steps, eval_every=5_000,
                      checkpoint_every=5_000, final_exact=False, num_samples=16, log_every=100)
    start_rss = rss_mb()
    trainer = SoakTrainer(cfg, args.every)
    trainer.fit()

    steps = np.array([s["step"] for s in trainer.samples])
    rss = np.array([s["rss_mb"] for s in trainer.samples])
    warm = steps >= min(args.warm, steps[-1])
    slope = float(np.polyfit(steps[warm], rss[warm], 1)[0] * 1000) if warm.sum() >= 2 else float("nan")
    sampler = trainer.sampler
    report = {
        "steps": trainer.step, "sampler": repr(sampler), "rss_before_model_mb": start_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KB
        "final_rss_mb": float(rss[-1]), "rss_at_warm_mb": float(rss[warm][0]),
        "growth_after_warm_mb": float(rss[-1] - rss[warm][0]), "slope_mb_per_1000_steps": slope,
        "skipped_steps": trainer.skipped_total, "sampler_updates": getattr(sampler, "updates", None),
        "sampler_skipped_updates": getattr(sampler, "skipped_updates", None),
        "train_seconds": trainer.train_seconds, "samples": trainer.samples,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "soak.json").write_text(json.dumps(report, indent=1))
    print(f"\nsoak: {trainer.step} steps with {sampler!r} in {trainer.train_seconds:.0f} s of training")
    print(f"  resident memory: peak {report['peak_rss_mb']:.0f} MB, at step {int(steps[warm][0])} "
          f"{report['rss_at_warm_mb']:.0f} MB, final {report['final_rss_mb']:.0f} MB "
          f"(growth {report['growth_after_warm_mb']:+.1f} MB, slope {slope:+.2f} MB per 1,000 steps)")
    print(f"  non-finite: {trainer.skipped_total} skipped steps, {report['sampler_skipped_updates']} skipped "
          f"sampler updates of {report['sampler_updates']}")
    print(f"  wrote {Path(args.out) / 'soak.json'}")


if __name__ == "__main__":
    main()
