"""What the band policy (adaptive-bands) costs per step against uniform sampling, measured in the same run.

    python studies/band_cost.py [--pairs 40] [--reps 6] [--threads 1]

A plain step draws t by inverse CDF over the bands (one searchsorted); an update step (one in K) scores
the credit of the batch plus one probe per band (43 at T = 1000: extra samples in the credit's forward pass)
and moves the logits. Steps are timed one at a time, interleaved with uniform steps (medians), on the
digits (tiny UNet, batch 128) and at 32x32 (small UNet, batch 32, random images), and
    ratio(K) = (t_update + (K − 1) t_plain) / (K t_uniform).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from timestep_sampling import NoiseSchedule, make_sampler
from timestep_sampling.models import make_unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # adaptive_cost.py, a tool, stays there
from adaptive_cost import KS, Trainer, digits  # noqa: E402

CONFIGS = {"critic + probes (default: exact credit)": {}, "critic + probes, credit by difference at 1e-4":
           {"credit_delta": 1e-4}, "critic, no probes": {"probe": False},
           "reinforce (Adam)": {"estimator": "reinforce"}}


def band_cost(title: str, trainer: Trainer, schedule, pairs: int, reps: int, bins: int) -> None:
    uniform = make_sampler("uniform", schedule)
    plain = make_sampler("adaptive-bands", schedule, update_every=10**9, bins=bins)
    updating = {name: make_sampler("adaptive-bands", schedule, update_every=1, bins=bins, **extra)
                for name, extra in CONFIGS.items()}
    for sampler in (uniform, plain):  # warm-up; the plain sampler's one update happens here
        trainer.step(sampler)
    t_uniform, t_plain, t_update = [], [], {name: [] for name in updating}
    for _ in range(pairs):
        t_uniform.append(trainer.timed(uniform, 1))
        t_plain.append(trainer.timed(plain, 1))
    for _ in range(reps):
        for name, sampler in updating.items():
            t_uniform.append(trainer.timed(uniform, 1))
            t_update[name].append(trainer.timed(sampler, 1))
    tu, tp = statistics.median(t_uniform), statistics.median(t_plain)
    print(f"\n## {title}\nuniform step {1e3 * tu:.1f} ms; plain band step {1e3 * tp:.1f} ms ({tp / tu:.3f}x); "
          f"medians of {len(t_uniform)} and {pairs} single steps\n")
    print("| update step does | update step ms | " + " | ".join(f"ratio K={k}" for k in KS) + " |")
    print("|---|---|" + "---|" * len(KS))
    for name, times in t_update.items():
        tup = statistics.median(times)
        print(f"| {name} | {1e3 * tup:.0f} | " + " | ".join(f"{(tup + (k - 1) * tp) / (k * tu):.3f}x" for k in KS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=40, help="single plain steps of each kind")
    parser.add_argument("--reps", type=int, default=6, help="update steps per configuration")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    schedule = NoiseSchedule("linear", T=1000)
    torch.manual_seed(0)
    band_cost("Digits 8x8, make_unet(8, 1, 'tiny'), batch 128, T=1000",
              Trainer(make_unet(8, 1, "tiny"), schedule, digits(), batch_size=128), schedule, args.pairs, args.reps, 17)
    images = torch.rand(256, 3, 32, 32) * 2 - 1
    band_cost("32x32 RGB, make_unet(32, 3, 'small'), batch 32, T=1000",
              Trainer(make_unet(32, 3, "small"), schedule, images, batch_size=32), schedule, args.pairs // 2,
              max(2, args.reps // 2), 256)


if __name__ == "__main__":
    main()
