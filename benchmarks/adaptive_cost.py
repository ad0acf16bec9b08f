"""What the adaptive sampler costs in wall-clock time against uniform sampling, measured in the same run,
and how well a cheaper scan picks the probe set S.

    python benchmarks/adaptive_cost.py              # about 2.5 minutes on one idle core
    python benchmarks/adaptive_cost.py --pairs 20 --reps 2 --rounds 1 --rows 30 --skip cifar   # quick

1. Cost per step, on the digits (make_unet(8, 1, "tiny"), batch 128, T = 1000) and at 32x32
   (make_unet(32, 3, "small"), batch 32, random images: the cost does not depend on content). One
   adaptive step in K does the sampler update; the other K − 1 only draw t from the policy. An update
   with the credit (the default) is one backward pass of a 64-strata bound estimate and one forward pass
   of the batch carrying tangents (a central difference: two plain forward passes); with the paper's reward, probes of B·|S| images and the scan before and after. Both kinds
   are timed one step at a time, interleaved with uniform steps so that slow and fast periods of a
   shared machine hit every kind alike (medians over many repetitions), and
       ratio(K) = (t_update + (K − 1) t_plain) / (K t_uniform).
   An update step is timed with update_every=1 (every step updates), a plain step after the first
   update of a sampler with update_every=10⁹.
2. On the digits, a direct check of the defaults: blocks of 80 steps (two updates at K = 40, one of them
   probing the bound) against uniform blocks of 80, interleaved, median of the per-round ratios.
   A kept probe gradient (direction_every) makes update steps alternate between probing and not: their mean
   over whole probe cycles is the update's cost. --callable hands observe() a lambda around the network.
3. Agreement of the stratified scan with the full scan. Full-T change rows are collected from real
   digits training (one row per sampler update). Over sliding queues of 20 rows, S is chosen from all
   T features, and from the n-strata features a scan of n would have seen (one random t per stratum,
   drawn 20 times per queue). Reported: how many of the full scan's |S| timesteps fall in the strata
   the cheaper scan chose (chance: |S|/n), and how well each S's proxy Σ_{t∈S} Δ_t on the NEXT row
   tracks that row's total change Σ_t Δ_t (Pearson r over queues), next to the initial S = {0, 1, 2}.

Timings use one thread (--threads) because the machine is shared: two threads fighting a neighbour's
job give noisier, not faster, numbers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from timestep_sampling import NoiseSchedule, make_sampler, mse_per_sample
from timestep_sampling.models import make_unet
from timestep_sampling.samplers.feature_selection import f_statistic, top_k


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    return torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1


class Trainer:
    """A plain training step around any sampler: sample, weighted MSE, observe(optimiser step)."""

    def __init__(self, model, schedule, data, batch_size, seed=0, as_callable=False):
        self.model, self.schedule, self.data, self.batch_size = model, schedule, data, batch_size
        # --callable: observe() sees `lambda x, t: model(x, t)` (with optimizer=), as a loop whose model needs
        # more arguments than (x_t, t) hands it
        self.observed = (lambda x, t: model(x, t)) if as_callable else model
        self.opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        self.gen = torch.Generator().manual_seed(seed)

    def step(self, sampler) -> None:
        x0 = self.data[torch.randint(len(self.data), (self.batch_size,), generator=self.gen)]
        t, w = sampler.sample(len(x0), x0.device, generator=self.gen, x0=x0)
        with sampler.observe(self.observed, x0, optimizer=self.opt):
            loss = (w * mse_per_sample(self.model, self.schedule, x0, t)).mean()
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()

    def timed(self, sampler, steps: int) -> float:
        """Seconds per step over `steps` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step(sampler)
        return (time.perf_counter() - start) / steps


# ----------------------------------------------------------------------------------------------------


PAPER = {"reward": "paper", "conditioned": True}
UPDATE_CONFIGS = {  # what an update step does (the plain steps between are the same for all)
    "credit, exact, probe gradient kept for 2 updates (default since 2026-12-07)": {"direction_every": 2},
    "credit, exact, a fresh probe every update (the K = 20 default's)": {"direction_every": 1},
    "credit by central difference, delta 1e-4": {"credit_delta": 1e-4, "direction_every": 1},
    "credit, 32 probe strata": {"credit_strata": 32, "direction_every": 1},
    "credit, probe gradient kept for 4 updates": {"direction_every": 4},
    "credit, 128 probe strata": {"credit_strata": 128, "direction_every": 1},
    "paper: |S|=3, scan=50": PAPER,
    "paper: |S|=1, scan=50": {**PAPER, "subset_size": 1},
    "paper: |S|=10, scan=50": {**PAPER, "subset_size": 10},
    "paper: |S|=3, scan=100": {**PAPER, "scan": 100},
    "paper: |S|=3, full scan (as published)": {**PAPER, "scan": None},
    "paper: |S|=3, scan=50, one probe pass": {**PAPER, "probe_batch": 10**6},
}
CIFAR_CONFIGS = ("credit, exact, probe gradient kept for 2 updates (default since 2026-12-07)",
                 "credit, exact, a fresh probe every update (the K = 20 default's)",
                 "credit by central difference, delta 1e-4", "credit, probe gradient kept for 4 updates",
                 "paper: |S|=3, scan=50", "paper: |S|=3, full scan (as published)")
KS = (10, 20, 40, 80)


def decomposed_cost(title: str, trainer: Trainer, schedule, pairs: int, reps: int, configs: dict, **options):
    """Time uniform steps, plain adaptive steps (conditioned and not) and update steps, interleaved."""
    uniform = make_sampler("uniform", schedule)
    plain = {c: make_sampler("adaptive", schedule, update_every=10**9, conditioned=c, **options)
             for c in (True, False)}
    updating = {name: make_sampler("adaptive", schedule, update_every=1, **options, **extra)
                for name, extra in configs.items()}
    for sampler in [uniform, *plain.values()]:  # warm-up; builds the policies (an update step needs none)
        trainer.step(sampler)
    t_uniform, t_plain, t_update = [], {c: [] for c in plain}, {name: [] for name in updating}
    for _ in range(pairs):
        for c, sampler in plain.items():
            t_uniform.append(trainer.timed(uniform, 1))
            t_plain[c].append(trainer.timed(sampler, 1))
    rounds = max(-(-reps // extra.get("direction_every", 1)) * extra.get("direction_every", 1)
                 for extra in configs.values())
    for r in range(rounds):
        for name, sampler in updating.items():
            every = configs[name].get("direction_every", 1)
            if r >= -(-reps // every) * every:  # whole probe cycles only, so that the mean is the cycle's
                continue
            t_uniform.append(trainer.timed(uniform, 1))
            t_update[name].append(trainer.timed(sampler, 1))
    tu = statistics.median(t_uniform)
    tp = {c: statistics.median(v) for c, v in t_plain.items()}
    print(f"\n## {title}")
    print(f"uniform step {1e3 * tu:.1f} ms; plain adaptive step {1e3 * tp[True]:.1f} ms conditioned "
          f"({tp[True] / tu:.3f}x), {1e3 * tp[False]:.1f} ms unconditioned ({tp[False] / tu:.3f}x); "
          f"medians of {len(t_uniform)}, {pairs} and {pairs} single steps\n")
    print("| update step does | update step ms | " + " | ".join(f"ratio K={k}" for k in KS) + " |")
    print("|---|---|" + "---|" * len(KS))
    for name, times in t_update.items():
        # a kept probe gradient makes updates alternate between probing and not: their mean is the cost
        tup = statistics.mean(times) if configs[name].get("direction_every", 1) > 1 else statistics.median(times)
        plain_step = tp[configs[name].get("conditioned", False)]  # the policy this configuration draws t with
        cells = [f"{(tup + (k - 1) * plain_step) / (k * tu):.3f}x" for k in KS]
        print(f"| {name} | {1e3 * tup:.0f} | " + " | ".join(cells) + " |")
    print("(each row's plain steps are those of its own policy: global Beta for the credit, conditioned for the paper)")


def digits_cost(pairs: int, reps: int, rounds: int, as_callable: bool = False) -> None:
    schedule = NoiseSchedule("linear", T=1000)
    torch.manual_seed(0)
    trainer = Trainer(make_unet(8, 1, "tiny"), schedule, digits(), batch_size=128, as_callable=as_callable)
    decomposed_cost("Digits 8x8, make_unet(8, 1, 'tiny'), batch 128, T=1000", trainer, schedule, pairs, reps,
                    UPDATE_CONFIGS, bins=17)
    uniform, adaptive = make_sampler("uniform", schedule), make_sampler("adaptive", schedule, bins=17)
    trainer.timed(adaptive, 80)  # warm-up; the counter stays a multiple of a whole cycle (K = 40, probe every 2nd)
    ratios = []
    for _ in range(rounds):
        base = trainer.timed(uniform, 80)
        ratios.append(trainer.timed(adaptive, 80) / base)
    print(f"\nDirect check at the defaults (blocks of 80 steps, {rounds} rounds): median ratio "
          f"{statistics.median(ratios):.3f}x (per round: {', '.join(f'{r:.3f}' for r in ratios)})")


def cifar_cost(pairs: int, reps: int, as_callable: bool = False) -> None:
    schedule = NoiseSchedule("linear", T=1000)
    torch.manual_seed(0)
    trainer = Trainer(make_unet(32, 3, "small"), schedule, torch.rand(256, 3, 32, 32) * 2 - 1, batch_size=32,
                      as_callable=as_callable)
    configs = {k: UPDATE_CONFIGS[k] for k in CIFAR_CONFIGS}
    decomposed_cost("32x32, make_unet(32, 3, 'small'), batch 32, T=1000", trainer, schedule, pairs, reps, configs)


# ----------------------------------------------------------------------------------------------------


def collect_scan_rows(rows: int, K: int = 5, batch_size: int = 32, pretrain: int = 100):
    """Full-T change rows (features, target) from real digits training, one per sampler update."""
    schedule = NoiseSchedule("linear", T=1000)
    torch.manual_seed(1)
    trainer = Trainer(make_unet(8, 1, "tiny"), schedule, digits(), batch_size=batch_size, seed=1)
    trainer.opt.param_groups[0]["lr"] = 1e-3
    uniform = make_sampler("uniform", schedule)
    for _ in range(pretrain):
        trainer.step(uniform)
    sampler = make_sampler("adaptive", schedule, bins=17, update_every=K, scan=None)
    features, targets = [], []
    while len(features) < rows:
        trainer.step(sampler)
        if (sampler.step - 1) % K == 0:
            f, y = sampler.queue.rows[-1]
            features.append(f.numpy())
            targets.append(y)
    return np.stack(features), np.array(targets)


def strata_edges(T: int, n: int) -> np.ndarray:
    return np.round(np.linspace(0, T, n + 1)).astype(int)  # as AdaptiveSampler.edges


def scan_agreement(X: np.ndarray, y: np.ndarray, queue: int = 20, k: int = 3, draws: int = 20) -> None:
    T = X.shape[1]
    rng = np.random.default_rng(0)
    windows = range(len(X) - queue)
    total = np.array([y[i + queue] for i in windows])
    proxies = {"full scan": [], "initial S={0,1,2}": []}
    overlap = {}
    for n in (100, 50):
        edges = strata_edges(T, n)
        lo, width = edges[:-1], np.diff(edges)
        proxies[f"scan={n}"], overlap[n] = [], []
        for i in windows:
            S_full = top_k(f_statistic(X[i:i + queue], y[i:i + queue]), k)
            strata_of_full = set(np.searchsorted(edges, S_full, side="right") - 1)
            proxy = []
            for _ in range(draws):
                picks = lo + (rng.random((queue, n)) * width).astype(int)  # one t per stratum per row
                Xs = np.take_along_axis(X[i:i + queue], picks, axis=1)
                S_n = top_k(f_statistic(Xs, (Xs * width).sum(1)), k)
                overlap[n].append(len(strata_of_full & set(S_n)) / k)
                next_t = lo[S_n] + (rng.random(k) * width[S_n]).astype(int)
                proxy.append(X[i + queue, next_t].sum())
            proxies[f"scan={n}"].append(np.mean(proxy))
    for i in windows:
        S_full = top_k(f_statistic(X[i:i + queue], y[i:i + queue]), k)
        proxies["full scan"].append(X[i + queue, S_full].sum())
        proxies["initial S={0,1,2}"].append(X[i + queue, :k].sum())
    print(f"\n## Scan agreement: {len(X)} full-T change rows from digits training, {len(windows)} queues of {queue}")
    print("\n| scan | strata of the full scan's S that the cheaper scan also chose | chance |")
    print("|---|---|---|")
    for n in (100, 50):
        print(f"| {n} strata | {np.mean(overlap[n]):.2f} | {k / n:.2f} |")
    print("\n| S chosen by | Pearson r of Σ_{t∈S} Δ_t with the total Δ on the next row |")
    print("|---|---|")
    for name, values in proxies.items():
        print(f"| {name} | {np.corrcoef(values, total)[0, 1]:.3f} |")
    print(f"(share of the total change carried by t < 20 on these rows: "
          f"{np.median(X[:, :20].sum(1) / y):.2f} median)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=60, help="single plain steps of each kind (digits)")
    parser.add_argument("--reps", type=int, default=5, help="update steps per configuration (digits)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the direct 40-step check")
    parser.add_argument("--rows", type=int, default=45, help="full-scan rows to collect for the agreement study")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["digits", "cifar", "agreement"])
    parser.add_argument("--callable", action="store_true", help="observe() gets a plain callable, not the network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if "digits" not in args.skip:
        digits_cost(args.pairs, args.reps, args.rounds, args.callable)
    if "cifar" not in args.skip:
        cifar_cost(max(args.pairs // 6, 2), max(args.reps // 5, 1), args.callable)  # a full-scan update: ~17 s
    if "agreement" not in args.skip:
        scan_agreement(*collect_scan_rows(args.rows))
    print(f"\n(total {time.perf_counter() - start:.0f} s, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
