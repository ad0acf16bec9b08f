"""The benchmark's statistics over run records (one dict per run and checkpoint): mean and spread over
seeds, time to reach the baseline's final score, and paired comparisons with a verdict that weighs a
difference against the seed spread. Plain functions of the records, so a report can be rebuilt from
records alone (records.py)."""
from __future__ import annotations

import math

import numpy as np

from .settings import FINAL_SUFFIX

BASELINE = "uniform"
FLOW_BASELINE = "flow-uniform"
# The paper's strongest heuristic (its Table 1, on linear and cosine): every DDPM method is also compared with it.
STRONGEST_HEURISTIC = "min-snr"
# For rectified flow, SD3's default sampler (logit-normal, best overall in SD3's own comparison of samplers).
FLOW_STRONGEST_HEURISTIC = "flow-logit-normal"
HEURISTIC_WORDS = {STRONGEST_HEURISTIC: "the paper's strongest heuristic", FLOW_STRONGEST_HEURISTIC: "SD3's default"}


def references(flow: bool) -> tuple[str, str]:
    """The methods a grid compares every method with: its baseline and its strongest heuristic."""
    return (FLOW_BASELINE, FLOW_STRONGEST_HEURISTIC) if flow else (BASELINE, STRONGEST_HEURISTIC)


def _mean_std(values) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


# The sample-quality scores: a Fréchet distance in a classifier's features (fd) or a TorchScript network's
# (fid), and the kernel inception distance in the same features (kid, kidfid), of the images of one sampler
# each. Records made before the KID hold none: the report shows what the records hold.
QUALITY_METRICS = tuple(f"{name}_{sampler}" for name in ("fd", "kid", "fid", "kidfid")
                        for sampler in ("ddim", "ddpm", "euler", "heun"))


def metrics_in(records: list[dict]) -> list[str]:
    """The score fields that hold at least one value, in a fixed order."""
    return [m for m in ("test_bpd", "test_bpd_estimate") + QUALITY_METRICS
            if any(r.get(m) is not None for r in records)]


def summarize(records: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds, per (method, schedule, step)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["schedule"], r["step"]), []).append(r)
    rows = []
    for (method, schedule, step), rs in groups.items():
        row = {"method": method, "schedule": schedule, "step": step, "seeds": len(rs),
               "bpd_method": rs[0]["bpd_method"]}
        for metric in ("train_seconds",) + tuple(metrics_in(records)):
            mean, std, n = _mean_std([r.get(metric) for r in rs])
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            if metric in QUALITY_METRICS:  # a score computed at some checkpoints, or missing from older records
                row[f"{metric}_n"] = n
        rows.append(row)
    return rows


def time_to_target(steps, seconds, values, target: float):
    """(step, seconds) of the first checkpoint whose value is at or below `target` (lower is better);
    None if the curve never gets there. Missing values (None) never count as reached."""
    for step, sec, value in zip(steps, seconds, values):
        if value is not None and value <= target + 1e-12 * abs(target):
            return step, sec
    return None


def mean_curve(records: list[dict], method: str, schedule: str, metric: str):
    """(steps, mean train_seconds, mean metric) over seeds; a step missing the metric for any seed is None."""
    by_step: dict[int, list[dict]] = {}
    for r in records:
        if r["method"] == method and r["schedule"] == schedule:
            by_step.setdefault(r["step"], []).append(r)
    steps = sorted(by_step)
    seconds = [float(np.mean([r["train_seconds"] for r in by_step[s]])) for s in steps]
    values = []
    for s in steps:
        vals = [r.get(metric) for r in by_step[s]]
        values.append(None if any(v is None for v in vals) else float(np.mean(vals)))
    return steps, seconds, values


def time_to_quality(records: list[dict], metric: str, baseline: str = BASELINE,
                    step_cost: dict[str, float] | None = None) -> list[dict]:
    """Per schedule: the target is the baseline's final score (mean over seeds); for every method, the
    first checkpoint at which its mean curve reaches it, in steps and in training seconds, and the
    speed-up over the baseline's own time to that target (baseline steps / method steps). A method that
    never reaches the target gets reached=False and no speed-up.

    `step_cost` (method → seconds per training step / the baseline's, measured in one run on one machine:
    benchmarks/step_cost.py) adds the speed-up in compute, baseline steps / (method steps × its cost): the
    recorded seconds of runs made in different sessions carry each session's machine speed."""
    rows = []
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        methods = list(dict.fromkeys(r["method"] for r in records if r["schedule"] == schedule))
        if baseline not in methods:
            continue
        b_steps, b_seconds, b_values = mean_curve(records, baseline, schedule, metric)
        if not b_values or b_values[-1] is None:
            continue
        target = b_values[-1]
        b_hit = time_to_target(b_steps, b_seconds, b_values, target)
        for method in methods:
            steps, seconds, values = mean_curve(records, method, schedule, metric)
            hit = time_to_target(steps, seconds, values, target)
            row = {"schedule": schedule, "method": method, "metric": metric, "target": target,
                   "final": values[-1] if values else None, "reached": hit is not None,
                   "steps": None, "seconds": None, "speedup_steps": None, "speedup_seconds": None,
                   "step_cost": (step_cost or {}).get(method), "speedup_compute": None}
            if hit is not None:
                row["steps"], row["seconds"] = hit
                row["speedup_steps"] = b_hit[0] / hit[0] if hit[0] > 0 else None
                row["speedup_seconds"] = b_hit[1] / hit[1] if hit[1] > 0 else None
                if row["speedup_steps"] and row["step_cost"]:
                    row["speedup_compute"] = row["speedup_steps"] / row["step_cost"]
            rows.append(row)
    return rows


def verdict(diffs: list[float], spread: float) -> str:
    """Words for paired differences method − baseline (lower is better) against the seed spread (the
    larger standard deviation over seeds of the two methods alone).

    "consistent": every seed's difference has the same sign and the mean exceeds twice its standard
    error. Consistent and larger than the spread: "better/worse beyond seed spread"; consistent but
    smaller: "better/worse on every seed (paired), within seed spread"; otherwise "no consistent difference"."""
    if len(diffs) < 2:
        return "one seed: no spread to compare with"
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    same_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    if not (same_sign and abs(mean) > 2 * sd / math.sqrt(len(diffs))):
        return "no consistent difference"
    word = "better" if mean < 0 else "worse"
    return f"{word} beyond seed spread" if abs(mean) > spread else f"{word} on every seed (paired), within seed spread"


def paired_comparison(records: list[dict], metric: str, baseline: str = BASELINE) -> list[dict]:
    """At each run's final checkpoint, per schedule and method: the per-seed difference method − baseline
    (same seed: same initial weights and batches), its mean, the seeds on which the method is better
    (lower), a paired t-test, and a `verdict`."""
    final = {}
    for r in records:
        key = (r["method"], r["schedule"], r["seed"])
        if key not in final or r["step"] > final[key]["step"]:
            final[key] = r
    rows = []
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        methods = list(dict.fromkeys(r["method"] for r in records if r["schedule"] == schedule))
        if baseline not in methods:
            continue
        base = {seed: r[metric] for (m, s, seed), r in final.items()
                if m == baseline and s == schedule and r.get(metric) is not None}
        for method in methods:
            if method == baseline:
                continue
            mine = {seed: r[metric] for (m, s, seed), r in final.items()
                    if m == method and s == schedule and r.get(metric) is not None}
            rows.append({"schedule": schedule, "method": method, "baseline": baseline, "metric": metric,
                         **paired_numbers(mine, base)})
    return rows


def paired_numbers(mine: dict, base: dict) -> dict:
    """seed → score of a method and of its baseline → the seeds both have, the differences mine − base,
    their mean and sd, the seeds on which mine is lower, a paired t-test, the seed spread and a `verdict`."""
    from scipy import stats

    seeds = sorted(set(mine) & set(base))
    diffs = [mine[s] - base[s] for s in seeds]
    row = {"seeds": len(seeds), "diffs": diffs, "mean_diff": None, "sd_diff": None,
           "better_seeds": sum(d < 0 for d in diffs), "p_value": None, "spread": None, "verdict": "no paired seeds"}
    if diffs:
        row["mean_diff"] = float(np.mean(diffs))
        row["verdict"] = "one seed: no spread to compare with"
    if len(diffs) >= 2:
        sd = float(np.std(diffs, ddof=1))
        spread = max(float(np.std([mine[s] for s in seeds], ddof=1)),
                     float(np.std([base[s] for s in seeds], ddof=1)))
        row.update(sd_diff=sd, spread=spread)
        if sd > 0:
            row["p_value"] = float(stats.ttest_rel([mine[s] for s in seeds], [base[s] for s in seeds]).pvalue)
        row["verdict"] = verdict(diffs, spread)
    return row


def rising_curves(records: list[dict], metric: str = "test_bpd_estimate", tolerance: float = 0.005) -> list[dict]:
    """Methods whose score turns back up: on every seed the last checkpoint is worse than the seed's best
    earlier one by more than `tolerance` (lower is better). A test bound that rises while training goes on
    means the last checkpoint is not the method's best, and a comparison at the end alone undersells it.
    One row per (schedule, method): per seed the best step, best and final value."""
    runs: dict[tuple, dict[int, float]] = {}
    for r in records:
        if r.get(metric) is not None:
            runs.setdefault((r["schedule"], r["method"], r["seed"]), {})[r["step"]] = float(r[metric])
    by_cell: dict[tuple, list[tuple]] = {}
    for (schedule, method, seed), curve in runs.items():
        final_step = max(curve)
        best_step = min(curve, key=lambda step: (curve[step], step))
        by_cell.setdefault((schedule, method), []).append((seed, best_step, curve[best_step], curve[final_step]))
    rows = []
    for (schedule, method), seeds in by_cell.items():
        if all(final - best > tolerance for _, _, best, final in seeds):
            seeds.sort()
            rows.append({"schedule": schedule, "method": method, "metric": metric,
                         "seeds": [s for s, *_ in seeds], "best_steps": [b for _, b, _, _ in seeds],
                         "best": [v for *_, v, _ in seeds], "final": [f for *_, f in seeds]})
    return rows


def train_test_gaps(records: list[dict]) -> list[dict]:
    """The test bound's estimate minus the same estimate on as many training images, at each run's last
    checkpoint where both were measured: one row per (schedule, method) with the per-seed train and test
    values and gaps. A gap that grows from one grid to a longer one is the model fitting its training images;
    a method whose gap is larger than uniform's at the same step overfits sooner."""
    by_cell: dict[tuple, list[tuple]] = {}
    for r in records:
        if r.get("train_bpd_estimate") is not None and r.get("test_bpd_estimate") is not None:
            by_cell.setdefault((r["schedule"], r["method"]), []).append(
                (r["seed"], float(r["train_bpd_estimate"]), float(r["test_bpd_estimate"]), r["step"]))
    rows = []
    for (schedule, method), seeds in by_cell.items():
        seeds.sort()
        gaps = [test - train for _, train, test, _ in seeds]
        rows.append({"schedule": schedule, "method": method, "seeds": [s for s, *_ in seeds],
                     "steps": [step for *_, step in seeds], "train": [t for _, t, _, _ in seeds],
                     "test": [t for _, _, t, _ in seeds], "gaps": gaps, "mean_gap": float(np.mean(gaps)),
                     "sd_gap": float(np.std(gaps, ddof=1)) if len(gaps) > 1 else None})
    return rows


def half_budget_comparison(records: list[dict], metric: str, baseline: str = BASELINE) -> list[dict]:
    """Does a method reach the baseline's final score in at most half the baseline's steps? Per schedule and
    method, paired by seed: the method's score at the last checkpoint at or before half the baseline's final
    step, where it has the metric, against the baseline's at its final step. A verdict of "better" (or "no
    consistent difference") answers with the spread in view; time_to_quality answers for the mean alone."""
    rows = []
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        here = [r for r in records if r["schedule"] == schedule and r.get(metric) is not None]
        base_runs = [r for r in here if r["method"] == baseline]
        if not base_runs:
            continue
        final_step = max(r["step"] for r in base_runs)
        base = {r["seed"]: r[metric] for r in base_runs if r["step"] == final_step}
        for method in dict.fromkeys(r["method"] for r in here):
            steps = [r["step"] for r in here if r["method"] == method and 0 < r["step"] <= final_step / 2]
            if not steps:
                continue
            step = max(steps)
            mine = {r["seed"]: r[metric] for r in here if r["method"] == method and r["step"] == step}
            rows.append({"schedule": schedule, "method": method, "baseline": baseline, "metric": metric,
                         "step": step, "baseline_step": final_step, "mean": float(np.mean(list(mine.values()))),
                         "baseline_mean": float(np.mean(list(base.values()))), **paired_numbers(mine, base)})
    return rows


# Each learned sampler is judged against what could explain its gain without learning: its own policy
# frozen at the start, a fixed Beta, its final distribution fixed from step 0, the credit without a policy,
# the paper's reward. adaptive-bands starts uniform, so its frozen copy IS uniform.
LEARNED = "adaptive"
CONTROLS = ("adaptive-frozen", "beta-0.95", "adaptive-final", "credit-proportional", "adaptive-paper")
BANDS_CONTROLS = ("uniform", "beta-0.95", "adaptive-bands-final", "credit-proportional", "adaptive-paper", "adaptive")

# The same for rectified flow: the learned Beta on t against its frozen start, a fixed Beta and its own end.
FLOW_LEARNED = "flow-adaptive"
FLOW_CONTROLS = ("flow-adaptive-frozen", "flow-beta-0.95", "flow-adaptive-final")

# The importance sampler trains uniform's objective; frozen at its start it would draw from a proposal close
# to uniform (weights 0.91-1.01 except at t = 0 and T-1, 1.77 there), so adaptive-frozen and uniform stand for
# it; its final Beta fixed from step 0 (still importance-weighted) asks whether learning online beats knowing
# where it ends.
UNBIASED_CONTROLS = ("adaptive-frozen", "uniform", "adaptive-unbiased-final")

# The importance sampler that learns to lower the loss estimate's variance starts near uniform too (Beta(0.974,
# 0.974) with a 5 % floor, weights near 1), so uniform stands for its frozen copy; loss-second-moment is the
# fixed-table rule whose optimum it learns as a Beta, and adaptive-unbiased the credit-driven importance sampler.
VARIANCE_CONTROLS = ("uniform", "loss-second-moment", "adaptive-unbiased")

# A sampler that credits the objective it trains (Min-SNR weighting) is judged against that weighting with
# uniform t, which stands for its frozen copy: both Betas start near uniform (the flow's at Beta(0.974, 0.974);
# the DDPM's frozen copy ends level with uniform).
LEARNED_CONTROLS = {LEARNED: CONTROLS, "adaptive-bands": BANDS_CONTROLS, "adaptive-unbiased": UNBIASED_CONTROLS,
                    "adaptive-min-snr": ("min-snr",), "adaptive-variance": VARIANCE_CONTROLS,
                    FLOW_LEARNED: FLOW_CONTROLS, "flow-adaptive-min-snr": ("flow-min-snr",),
                    "flow-adaptive-variance": ("flow-uniform",),
                    "adaptive-grad-variance": ("uniform", "adaptive-variance", "loss-second-moment"),
                    "flow-adaptive-grad-variance": ("flow-uniform", "flow-adaptive-variance")}


def learned_vs_controls(records: list[dict], metric: str) -> list[dict]:
    """Paired rows of each learned sampler present against each of its controls present (Δ = learned −
    control)."""
    return [row for learned, controls in LEARNED_CONTROLS.items()
            for control in controls for row in paired_comparison(records, metric, baseline=control)
            if row["method"] == learned]


def is_learned(method: str) -> bool:
    """A configuration whose sampler learns during the run: adaptive... or flow-adaptive..., not a control
    that never moves (its start frozen, or its final distribution fixed from step 0)."""
    return method.startswith(("adaptive", "flow-adaptive")) and not method.endswith(("-frozen", FINAL_SUFFIX))


def schedule_answers(half: list[dict], heuristic: list[dict], paired: list[dict], metrics: list[str],
                     baseline: str = BASELINE) -> list[dict]:
    """The two questions a user asks of the learned sampler, per schedule and then per score: does a learned
    configuration reach the baseline's final score in at most half its steps, beyond the seed spread, with
    final bits/dim no worse than the baseline's (`half_yes`)? Does one beat the strongest heuristic at the
    final checkpoint beyond the seed spread (`heuristic_yes`)? Each answer keeps its closest candidate (the
    learned row with the lowest mean Δ) so that a "no" can say how far off it is. `plateau` is the baseline's
    own half-steps row when it is NOT worse than its final score: the score had stopped improving by half the
    steps, so no method can show a speed-up against that final score, and a "no" then says nothing.
    `baseline_beats_heuristic` is the baseline's own row against the heuristic when it too is better (on every
    seed at least): then a learned "yes" there does not set the learned sampler apart from the baseline.
    `heuristic_yes_not_better` holds, for each "yes" configuration that is not itself better than the baseline
    on that score, its row against the baseline: with 3 seeds a run that ties the baseline can pass the
    heuristic test where the baseline narrowly fails it, and the "yes" then shows no gain from learning."""
    def closest(rows):
        rows = [r for r in rows if r["mean_diff"] is not None]
        return min(rows, key=lambda r: r["mean_diff"]) if rows else None

    def keyed(rows):  # each comparison has one row per (schedule, method, metric)
        return {(r["schedule"], r["method"], r["metric"]): r for r in rows}

    worse_bpd = {(r["schedule"], r["method"]) for r in paired
                 if r["metric"] == "test_bpd" and r["verdict"].startswith("worse")}
    half_by, heuristic_by, vs_baseline = keyed(half), keyed(heuristic), keyed(paired)
    answers = []
    for schedule in dict.fromkeys(r["schedule"] for r in [*half, *heuristic]):
        for metric in metrics:
            mine, versus = ([r for r in rows if r["schedule"] == schedule and r["metric"] == metric
                             and is_learned(r["method"])] for rows in (half, heuristic))
            if not mine and not versus:
                continue
            fast = [r for r in mine if r["verdict"] == "better beyond seed spread"]
            beats = [r for r in versus if r["verdict"] == "better beyond seed spread"]
            own_rows = [vs_baseline.get((schedule, r["method"], metric)) for r in beats]
            own, own_vs_heuristic = (rows.get((schedule, baseline, metric)) for rows in (half_by, heuristic_by))
            answers.append({
                "schedule": schedule, "metric": metric,
                "half_yes": [r for r in fast if (schedule, r["method"]) not in worse_bpd],
                "half_worse_bpd": sorted(r["method"] for r in fast if (schedule, r["method"]) in worse_bpd),
                "half_closest": closest(mine),
                "heuristic_yes": beats,
                "heuristic_yes_not_better": [r for r in own_rows if r and not r["verdict"].startswith("better")],
                "heuristic_closest": closest(versus), "has_heuristic": bool(versus),
                "baseline_beats_heuristic": (own_vs_heuristic if own_vs_heuristic
                                             and own_vs_heuristic["verdict"].startswith("better") else None),
                "plateau": own if own and own["mean_diff"] is not None and not own["verdict"].startswith("worse") else None})
    return answers
