"""Does a reward know which timestep it rewards? The diagnostic behind the learned sampler (METHOD.md §7).

A likelihood-ratio gradient can only move the policy toward good timesteps if the per-sample reward
depends on the sample's own timestep. From a checkpoint of a run, this trains on for `updates` steps
(t from the adaptive sampler's starting Beta, the run's batch size and Adam state) and, around every
step, scores the batch with each reward estimator on the SAME timesteps and the same step:

    paper    eq. 14: the drop of the sample's own image's bound terms on S after the whole batch's update
    credit   first order: the sample's gradient against the preconditioned gradient of the bound (credit.py)
    kept     the same credit with the bound probe's gradient kept for `kept` steps (direction_every): what a
             stale direction costs the signal (`kept`=0 leaves it out)

Each update's mean is removed (a REINFORCE baseline removes it too), then the rewards are grouped by the
decile of t: per-decile mean ± standard error, the share of the variance the decile explains, and the
one-way ANOVA F and p. Writes OUT/reward_signal.{json,png}. Outer ring: it uses the trainer's checkpoints.
"""
from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
from scipy import stats as scipy_stats

from .analysis import _write, checkpoint_to_train_on
from .diffusion import mse_per_sample
from .errors import require
from .samplers.adaptive import AdaptiveSampler

ESTIMATORS = ("paper", "credit", "kept")


def t_dependence(t, reward, update, groups: int = 10) -> dict:
    """How much of the reward's within-update variance the group (quantile of t) explains.

    t, reward, update: equal-length 1-D arrays; `update` labels which update each reward came from.
    Returns per-group mean and standard error of the centred reward, the explained share
    (between-group / total sum of squares), and the one-way ANOVA F and p."""
    t, reward, update = (np.asarray(a) for a in (t, reward, update))
    require(len(t) == len(reward) == len(update) and len(t) > groups,
            f"need more samples than groups ({groups}), with one t and one update per reward")
    centred = reward.astype(np.float64).copy()
    for u in np.unique(update):
        centred[update == u] -= centred[update == u].mean()
    edges = np.quantile(t, np.linspace(0, 1, groups + 1))
    group = np.clip(np.searchsorted(edges[1:-1], t, side="right"), 0, groups - 1)
    members = [centred[group == g] for g in range(groups) if (group == g).sum() > 1]
    f, p = scipy_stats.f_oneway(*members)
    total = ((centred - centred.mean()) ** 2).sum()
    between = sum(len(m) * (m.mean() - centred.mean()) ** 2 for m in members)
    return {"group_edges": edges.tolist(),
            "mean": [float(m.mean()) for m in members],
            "stderr": [float(m.std(ddof=1) / math.sqrt(len(m))) for m in members],
            "count": [len(m) for m in members],
            "explained": float(between / total) if total > 0 else 0.0,
            "F": float(f), "p": float(p), "samples": len(t)}


def _rewarders(schedule, bins: int, variance: str, seed: int, kept: int = 0) -> dict[str, AdaptiveSampler]:
    """One frozen, unconditioned sampler per estimator, all with the same seed: they draw the same t."""
    options = {"paper": {"reward": "paper"}, "credit": {"reward": "credit", "direction_every": 1},  # a fresh probe
               "kept": {"reward": "credit", "direction_every": kept}}
    return {name: AdaptiveSampler(schedule, conditioned=False, lr=0.0, update_every=1, bins=bins, variance=variance,
                                  seed=seed, **options[name]) for name in ESTIMATORS if name != "kept" or kept}


def reward_signal(run, out, *, step: int | None = None, updates: int = 20, groups: int = 10, seed: int = 0,
                  kept: int = 0, data: str | None = None, device: str = "cpu", progress: bool = True) -> dict:
    """Score `updates` training steps from the checkpoint at `step` (default the latest) with every estimator;
    `kept` > 0 adds the credit whose bound-probe gradient is kept for that many steps."""
    require(isinstance(updates, int) and updates >= 2, f"--updates must be >= 2, got {updates!r}")
    require(isinstance(kept, int) and kept >= 0, f"--kept must be an integer >= 0, got {kept!r}")
    require(isinstance(groups, int) and groups >= 2, f"--groups must be >= 2 (an F-test compares groups of t), "
                                                     f"got {groups!r}")
    ckpt_step, model, schedule, ckpt_cfg, state, dataset = checkpoint_to_train_on(run, step, data, device)
    dev = next(model.parameters()).device
    train_x = dataset.train.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=ckpt_cfg.lr)
    opt.load_state_dict(copy.deepcopy(state["optimizer"]))
    rewarders = _rewarders(schedule, dataset.bins, ckpt_cfg.variance, seed, kept)
    gen = torch.Generator().manual_seed(seed)
    ts, rewards, labels = [], {name: [] for name in rewarders}, []
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # dropout in the training steps
        model.train()
        for k in _progress(range(updates), progress):
            x0 = train_x[torch.randint(len(train_x), (ckpt_cfg.batch_size,), generator=gen).to(dev)]
            draws = [r.sample(len(x0), dev, generator=torch.Generator().manual_seed(seed * 7919 + k), x0=x0)[0]
                     for r in rewarders.values()]
            t = draws[0]
            require(all(torch.equal(t, d) for d in draws), "the estimators drew different timesteps")
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            with contextlib.ExitStack() as scoring:
                for r in rewarders.values():
                    scoring.enter_context(r.observe(model, x0, optimizer=opt))
                mse_per_sample(model, schedule, x0, t, noise).mean().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), ckpt_cfg.grad_clip or math.inf)
                opt.step()
                opt.zero_grad(set_to_none=True)
            ts.append(t.cpu().numpy())
            labels.append(np.full(len(t), k))
            for name, r in rewarders.items():
                rewards[name].append(r.last_rewards.numpy())
    t, labels = np.concatenate(ts), np.concatenate(labels)
    results = {name: t_dependence(t, np.concatenate(v), labels, groups) for name, v in rewards.items()}
    record = {"analysis": "reward_signal", "run": str(run), "step": ckpt_step, "schedule": schedule.to_config(),
              "updates": updates, "batch_size": ckpt_cfg.batch_size, "seed": seed, "estimators": results}
    if kept:
        record["kept"] = kept
    title = f"reward vs timestep: {run} at step {ckpt_step} ({schedule.name}), {updates} updates"
    return _write(out, "reward_signal", record, lambda p: _plot(p, results, title))


def _progress(iterable, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(iterable, desc="reward signal", disable=not enabled, dynamic_ncols=True)


def _plot(path, results: dict, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        edges = r["group_edges"]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])][:len(r["mean"])]
        ax.errorbar(centres, r["mean"], yerr=r["stderr"], fmt="o-", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("timestep t (centre of its decile)")
        ax.set_ylabel("reward − update mean")
        ax.set_title(f"{name}: explains {100 * r['explained']:.1f}%, F={r['F']:.1f}, p={r['p']:.1e}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
