"""The README's headline figure: time to quality, uniform against the learned sampler, from committed records.

    python benchmarks/headline_figure.py [--records docs/bench/long10k] [--out docs/headline.png]

Reads the bench's run records (`<method>__<schedule>__s<seed>.json`, one per finished run: `evals` holds one
entry per checkpoint with `step`, `test_bpd_estimate`, `test_bpd` and `bpd_method`) directly with json, so it
depends on nothing in the package; EDM's log-normal, the fixed control, comes from docs/bench/ancestral10k,
made under the same grid settings. For each method it plots the stratified estimate of test bits/dim against
training steps, the mean over seeds with the min..max band, as the bench's own curves do, and a dashed line
at uniform's final estimate (mean over seeds): where a curve first reaches it is the time to uniform's final
quality, compared at the checkpoints (estimate with estimate; the bench adds the estimate at the final
checkpoint, where `test_bpd` is the exact bound). It prints the numbers it drew.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # method -> (label, colour)
    "uniform": ("uniform (DDPM)", "0.35"),
    "adaptive-k20": ("adaptive (learned Beta, credit; K = 20 update)", "C3"),
    "adaptive-mix-k20": ("adaptive-mix (the same, 30 % uniform floor; K = 20)", "C0"),
    "lognormal-edm": ("lognormal-edm (fixed, small t: the control)", "C2"),
}
# Methods recorded in another grid folder. The records are used only where their grid settings equal
# uniform's (the grid key a record carries: the ancestral FD is not part of it), checked in load_runs.
ELSEWHERE = {"lognormal-edm": ROOT / "docs" / "bench" / "ancestral10k"}


def load_runs(records: Path, method: str, schedule: str) -> list[dict]:
    """Every seed's record of `method` on `schedule`, in seed order."""
    runs = []
    for path in sorted(records.glob(f"{method}__{schedule}__s*.json")):
        record = json.loads(path.read_text())
        if record["method"] == method and record["schedule"] == schedule:
            runs.append(record)
    if not runs:
        raise SystemExit(f"error: no records for {method} on {schedule} in {records}")
    return sorted(runs, key=lambda r: r["seed"])


def curves(runs: list[dict], metric: str = "test_bpd_estimate"):
    """(steps, values[seed, step]) at the checkpoints every seed has."""
    per_seed = [{e["step"]: e[metric] for e in r["evals"] if e.get(metric) is not None} for r in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    return np.array(steps), np.array([[p[s] for s in steps] for p in per_seed], dtype=np.float64)


def final_exact(runs: list[dict]) -> np.ndarray:
    """Each seed's exact bound at its last checkpoint."""
    finals = []
    for r in runs:
        last = max(r["evals"], key=lambda e: e["step"])
        assert last["bpd_method"] == "exact", f"{r['method']} seed {r['seed']}: the last evaluation is not exact"
        finals.append(last["test_bpd"])
    return np.array(finals)


def first_reach(steps: np.ndarray, mean: np.ndarray, target: float):
    hit = np.nonzero(mean <= target + 1e-12 * abs(target))[0]
    return int(steps[hit[0]]) if len(hit) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=ROOT / "docs" / "bench" / "long10k")
    parser.add_argument("--schedule", default="linear")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "headline.png")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {m: load_runs(ELSEWHERE.get(m, args.records), m, args.schedule) for m in METHODS}
    for method, runs in data.items():  # a curve from another grid is comparable only under the same settings
        if any(r["grid"] != data["uniform"][0]["grid"] for r in runs):
            raise SystemExit(f"error: {method}'s records were made under other grid settings than uniform's")
    steps_u, values_u = curves(data["uniform"])
    target = float(values_u[:, -1].mean())
    base_steps = first_reach(steps_u, values_u.mean(0), target)
    n_steps = data["uniform"][0]["grid"]["steps"]
    seeds = sorted({r["seed"] for runs in data.values() for r in runs})

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110, layout="constrained")
    print(f"records {args.records}, {args.schedule} schedule, seeds {seeds}; "
          f"target: uniform's final estimate {target:.3f} (reached at step {base_steps})")
    reached: dict[int, list[str]] = {}
    for method, (label, colour) in METHODS.items():
        runs = data[method]
        steps, values = curves(runs)
        mean, lo, hi = values.mean(0), values.min(0), values.max(0)
        exact = final_exact(runs)
        reach = first_reach(steps, mean, target)
        speedup = f", {base_steps / reach:.2f}× fewer steps" if reach and method != "uniform" else ""
        at_3000 = f"; estimate at step 3000: {mean[list(steps).index(3000)]:.3f}" if 3000 in steps else ""
        print(f"{method:13s} final exact {exact.mean():.3f} ± {exact.std(ddof=1):.3f} (seeds "
              f"{', '.join(f'{v:.3f}' for v in exact)}); reaches {target:.3f} at step {reach}{speedup}{at_3000}")
        lowest = int(steps[mean.argmin()])
        turns = f"; lowest at step {lowest:,}, then rising" if mean[-1] - mean.min() > 0.005 else ""
        ax.plot(steps, mean, color=colour, lw=2, marker="o", ms=3,
                label=f"{label}: {exact.mean():.3f} ± {exact.std(ddof=1):.3f} at step {n_steps:,}{turns}")
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, lw=0)
        if reach is not None and method != "uniform":
            reached.setdefault(reach, []).append(method)
    for i, (reach, methods) in enumerate(sorted(reached.items(), reverse=True)):  # one note per step, earliest on top
        verb = "reach" if len(methods) > 1 else "reaches"
        ax.annotate(f"{' and '.join(methods)} {verb} it at step {reach:,}:\n"
                    f"{base_steps / reach:.2f}× fewer steps than uniform ({base_steps:,})",
                    xy=(reach, target), xytext=(reach + 700, target + 0.2 + 0.1 * i), fontsize=9,
                    arrowprops={"arrowstyle": "->", "color": "0.2", "relpos": (0, 0)})
    ax.axhline(target, color="0.35", ls="--", lw=1)
    ax.text(150, target - 0.008, f"uniform's final estimate {target:.3f}", ha="left", va="top",
            fontsize=9, color="0.25")
    ax.set_xlim(0, n_steps * 1.01)
    ax.set_ylim(2.6, 3.5)
    ax.set_xlabel("training step (batch 128)")
    ax.set_ylabel("test bits/dim (stratified estimate; lower is better)")
    ax.set_title(f"Time to quality: 8×8 digits, tiny UNet, {args.schedule} schedule, {n_steps:,} steps; "
                 f"mean of {len(seeds)} seeds, band = min..max", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9, title="method: exact bits/dim at the end (mean ± sd)",
              title_fontsize=9)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
