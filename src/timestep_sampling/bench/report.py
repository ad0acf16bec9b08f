"""The benchmark's report: curves and density heat maps (PNG), tables and the terminal headline (text), and
report.md, all from run records and the statistics of stats.py."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .records import run_name
from .settings import BenchSettings
from .stats import (BASELINE, HEURISTIC_WORDS, LEARNED_CONTROLS, QUALITY_METRICS, STRONGEST_HEURISTIC, metrics_in,
                    references, rising_curves, schedule_answers, train_test_gaps)

SAMPLER_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "euler": "Euler", "heun": "Heun"}
METRIC_LABELS = {"test_bpd": "test bits/dim", "test_bpd_estimate": "test bits/dim (stratified estimate)",
                 **{f"fd_{k}": f"FD of {v} samples (digit-classifier features)" for k, v in SAMPLER_NAMES.items()},
                 **{f"fid_{k}": f"FID of {v} samples (TorchScript features)" for k, v in SAMPLER_NAMES.items()},
                 **{f"kid_{k}": f"KID of {v} samples (classifier features)" for k, v in SAMPLER_NAMES.items()},
                 **{f"kidfid_{k}": f"KID of {v} samples (TorchScript features)" for k, v in SAMPLER_NAMES.items()}}
SCORE_NAMES = {"kidfid": "KID-Inception"}  # the KID in the FID network's features; the others are their upper case


def metric_label(metric: str) -> str:
    """A score's short name: "bits/dim", "FD DDIM", "FD DDPM", "FID Heun"..."""
    if metric.startswith("test_bpd"):
        return "bits/dim"
    name, _, sampler = metric.partition("_")
    return f"{SCORE_NAMES.get(name, name.upper())} {SAMPLER_NAMES.get(sampler, sampler)}"


def sampler_words(sampler: str, settings: BenchSettings) -> str:
    return {"ddim": f"DDIM, {settings.ddim_steps} steps, η = 0",
            "ddpm": f"DDPM ancestral sampling through all T = {settings.T} steps, the run's own variance",
            "euler": f"Euler, {settings.ddim_steps} steps",
            "heun": f"Heun, {settings.ddim_steps} steps of 2 model calls"}[sampler]


def computed_steps(records: list[dict], metric: str) -> list[int]:
    """The checkpoint steps at which some run has the score."""
    return sorted({r["step"] for r in records if r.get(metric) is not None})


def steps_words(steps: list[int]) -> str:
    """"steps 500, 1000, 1500" or, for a long even run of them, "every 500 steps from 500 to 10000"."""
    if len(steps) > 4 and len({b - a for a, b in zip(steps, steps[1:])}) == 1:
        return f"every {steps[1] - steps[0]} steps from {steps[0]} to {steps[-1]}"
    return f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}" if steps else "no step"


def plot_curves(records: list[dict], metric: str, out_path: Path) -> Path:
    """Rows: schedules; left: metric against training steps; right: against training seconds. A line is
    the mean over seeds, its band the range (min to max) over seeds."""
    from matplotlib.figure import Figure

    schedules = list(dict.fromkeys(r["schedule"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig = Figure(figsize=(12, 3.6 * len(schedules) + 0.8), dpi=100, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(schedules), 2, squeeze=False))
    for row, schedule in enumerate(schedules):
        for i, method in enumerate(methods):
            by_step: dict[int, list[dict]] = {}
            for r in records:
                if r["method"] == method and r["schedule"] == schedule and r.get(metric) is not None:
                    by_step.setdefault(r["step"], []).append(r)
            if not by_step:
                continue
            steps = sorted(by_step)
            vals = [[r[metric] for r in by_step[s]] for s in steps]
            mean = np.array([np.mean(v) for v in vals])
            lo, hi = np.array([min(v) for v in vals]), np.array([max(v) for v in vals])
            secs = np.array([np.mean([r["train_seconds"] for r in by_step[s]]) for s in steps])
            style = {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--", "marker": "o", "ms": 3, "lw": 1.5}
            for col, x in enumerate((np.array(steps), secs)):
                axes[row, col].plot(x, mean, label=method if row == 0 and col == 0 else None, **style)
                axes[row, col].fill_between(x, lo, hi, color=style["color"], alpha=0.15, lw=0)
        axes[row, 0].set_xlabel("training step")
        axes[row, 1].set_xlabel("training seconds (steps only, no evaluation)")
        for ax in axes[row]:
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(f"{schedule} schedule")
            ax.grid(alpha=0.3)
            if metric.startswith(("fd_", "fid_")):
                ax.set_yscale("log")
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)}: mean over seeds, band = min..max over seeds")
    fig.legend(loc="outside lower center", ncols=min(5, max(1, len(methods))), fontsize="small")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path


def plot_densities(out: Path, tracks: dict) -> list[Path]:
    """DIR/density_<method>__<schedule>.png for every method whose sampler density changed during training
    (the learned samplers), from the lowest seed that has a track."""
    try:
        from ..plotting import plot_density_over_training
    except ImportError:
        return []
    written = []
    for (method, schedule), (seed, summary) in sorted(tracks.items()):
        dens = np.asarray(summary["density"], dtype=np.float64)
        name = f"density_{run_name(method, schedule, seed).rsplit('__s', 1)[0]}.png"
        written.append(plot_density_over_training(
            summary["steps"], dens / dens.sum(1, keepdims=True), out / name,
            continuous=bool(summary.get("continuous")),
            title=f"{method}, {schedule} schedule, seed {seed}: timestep density over training "
                  f"(total variation from the start {summary['tv_from_start']:.2f})"))
    return written



def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _digits(metric: str) -> int:
    if metric.startswith("kid"):  # in Inception's features a few thousandths; in the classifiers' a few units
        return 4 if metric.startswith("kidfid") else 2
    return 3 if metric.startswith("test_bpd") else 1


def table1(summary: list[dict], metric: str, settings: BenchSettings) -> str:
    """Rows: methods; columns: schedule × checkpoint; cells: mean ± std over seeds; best mean in bold."""
    steps = sorted({r["step"] for r in summary if r[f"{metric}_mean"] is not None and r["step"] > 0})
    if not steps:
        return "(no values)\n"
    cols = [(s, st) for s in settings.schedules for st in steps]
    cell = {(r["method"], r["schedule"], r["step"]): r for r in summary}
    head = []
    for s, st in cols:
        exact = metric == "test_bpd" and st == settings.steps and settings.final_exact
        head.append(f"{s} {st}{' (exact)' if exact else ''}")
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    best = {}
    for s, st in cols:
        means = [cell[(m, s, st)][f"{metric}_mean"] for m in settings.methods
                 if (m, s, st) in cell and cell[(m, s, st)][f"{metric}_mean"] is not None]
        best[(s, st)] = min(means) if means else None
    d = _digits(metric)
    for m in settings.methods:
        cells = []
        for s, st in cols:
            r = cell.get((m, s, st))
            if r is None or r[f"{metric}_mean"] is None:
                cells.append("–")
                continue
            text = f"{r[f'{metric}_mean']:.{d}f} ± {r[f'{metric}_std']:.{d}f}"
            cells.append(f"**{text}**" if r[f"{metric}_mean"] == best[(s, st)] and len(settings.methods) > 1 else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def checkpoint_table(summary: list[dict], records: list[dict], quality: list[str], settings: BenchSettings,
                     most: int = 4) -> str:
    """The paper's Table 1 in shape: per schedule, rows methods, and for each of a few checkpoints (those at
    which every sample-quality score was computed, at most `most` of them, the last always) the bits/dim and
    each FD, mean ± std over seeds (n = the seeds behind a cell where some lack it); best mean in bold."""
    common = set.intersection(*(set(computed_steps(records, m)) for m in quality)) if quality else set()
    steps = sorted(common or {st for m in quality for st in computed_steps(records, m)})
    if not steps:
        return "(no values)\n"
    if len(steps) > most:
        steps = [steps[round(i * (len(steps) - 1) / (most - 1))] for i in range(most)]
    cell = {(r["method"], r["schedule"], r["step"]): r for r in summary}
    metrics = ["test_bpd"] + quality
    out = []
    for schedule in settings.schedules:
        cols = [(st, m) for st in steps for m in metrics]
        head = [f"{metric_label(m)} @{st}" + (" (exact)" if m == "test_bpd" and st == settings.steps and
                                                settings.final_exact else "") for st, m in cols]
        lines = [f"**{schedule}**", "", "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
        best = {}
        for st, m in cols:
            means = [cell[(k, schedule, st)].get(f"{m}_mean") for k in settings.methods if (k, schedule, st) in cell]
            means = [v for v in means if v is not None]
            best[(st, m)] = min(means) if means else None
        for method in settings.methods:
            if not any((method, schedule, st) in cell for st in steps):
                continue  # a method this schedule's grid did not run: no row of dashes
            cells = []
            for st, m in cols:
                r = cell.get((method, schedule, st))
                if r is None or r.get(f"{m}_mean") is None:
                    cells.append("–")
                    continue
                d = _digits(m)
                text = f"{r[f'{m}_mean']:.{d}f} ± {r[f'{m}_std']:.{d}f}"
                if r.get(f"{m}_n", r["seeds"]) < r["seeds"]:
                    text += f" (n = {r[f'{m}_n']})"
                cells.append(f"**{text}**" if r[f"{m}_mean"] == best[(st, m)] and len(settings.methods) > 1
                             else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        out += lines + [""]
    return "\n".join(out)


def ttq_table(rows: list[dict], metric: str, baseline: str = BASELINE) -> str:
    rows = [r for r in rows if r["metric"] == metric]
    if not rows:
        return f"(needs `{baseline}` in --methods)\n"
    d = _digits(metric)
    compute = any(r.get("step_cost") for r in rows)  # a step-cost file was given
    lines = ["| schedule | method | target | final | steps to target | speed-up (steps) | seconds to target | "
             "speed-up (seconds) |" + (" step cost | speed-up (compute) |" if compute else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if compute else "")]
    for r in rows:
        cost = f" {_fmt(r.get('step_cost'), 2)} |" if compute else ""
        if r["reached"]:
            sp = _fmt(r["speedup_steps"], 2) + "×" if r["speedup_steps"] else "–"
            ss = _fmt(r["speedup_seconds"], 2) + "×" if r["speedup_seconds"] else "–"
            sc = (f" {_fmt(r['speedup_compute'], 2)}×" if r.get("speedup_compute") else " –") + " |" if compute else ""
            lines.append(f"| {r['schedule']} | {r['method']} | {r['target']:.{d}f} | {_fmt(r['final'], d)} | "
                         f"{r['steps']} | {sp} | {r['seconds']:.1f} | {ss} |{cost}{sc}")
        else:
            lines.append(f"| {r['schedule']} | {r['method']} | {r['target']:.{d}f} | {_fmt(r['final'], d)} | "
                         f"not reached | – | not reached | – |{cost}" + (" – |" if compute else ""))
    return "\n".join(lines) + "\n"


# The columns of a paired comparison (stats.paired_numbers) after each table's own.
PAIRED_HEADER = "mean Δ | per-seed Δ | seeds better | sd of Δ | seed spread | paired t p | verdict |"


def rising_table(rows: list[dict]) -> str:
    lines = ["| schedule | method | best step per seed | best per seed | last per seed | rise per seed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        rise = [f - b for b, f in zip(r["best"], r["final"])]
        lines.append(f"| {r['schedule']} | {r['method']} | {', '.join(map(str, r['best_steps']))} | "
                     f"{', '.join(_fmt(v, 3) for v in r['best'])} | {', '.join(_fmt(v, 3) for v in r['final'])} | "
                     f"{', '.join(f'+{v:.3f}' for v in rise)} |")
    return "\n".join(lines) + "\n"


def gap_table(rows: list[dict]) -> str:
    lines = ["| schedule | method | step | train images per seed | test split per seed | test − train per seed | "
             "mean ± std |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = sorted(set(r["steps"]))
        lines.append(f"| {r['schedule']} | {r['method']} | {', '.join(map(str, steps))} | "
                     f"{', '.join(_fmt(v, 3) for v in r['train'])} | {', '.join(_fmt(v, 3) for v in r['test'])} | "
                     f"{', '.join(f'{v:+.3f}' for v in r['gaps'])} | "
                     f"{_fmt(r['mean_gap'], 3)} ± {_fmt(r['sd_gap'], 3)} |")
    return "\n".join(lines) + "\n"


def _per_seed(row: dict, digits: int) -> str:
    return ", ".join(f"{x:+.{digits}f}" for x in row["diffs"])


def _paired_cells(row: dict, digits: int) -> str:
    per_seed = _per_seed(row, digits) or "–"
    mean = "–" if row["mean_diff"] is None else f"{row['mean_diff']:+.{digits}f}"
    return (f"{mean} | {per_seed} | {row['better_seeds']}/{row['seeds']} | {_fmt(row['sd_diff'], digits)} | "
            f"{_fmt(row['spread'], digits)} | {_fmt(row['p_value'], 3)} | {row['verdict']} |")


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def paired_table(rows: list[dict], metric: str, baseline: str = BASELINE) -> str:
    rows = [r for r in rows if r["metric"] == metric]
    if not rows:
        return f"(needs `{baseline}` in --methods)\n"
    d = _digits(metric)
    header = "| schedule | method | vs | " + PAIRED_HEADER
    lines = [header, _rule(header)]
    lines += [f"| {r['schedule']} | {r['method']} | {r['baseline']} | {_paired_cells(r, d)}" for r in rows]
    return "\n".join(lines) + "\n"


def _delta_words(row: dict, digits: int) -> str:
    return (f"`{row['method']}` Δ {row['mean_diff']:+.{digits}f} "
            f"({_per_seed(row, digits)}): {row['verdict']}")


def answer_lines(answers: list[dict], baseline: str = BASELINE, heuristic: str = STRONGEST_HEURISTIC) -> list[str]:
    """One sentence per schedule and score from stats.schedule_answers: the half-steps question and the
    strongest-heuristic question, each "yes" with the configurations that pass or "no" with the closest."""
    lines = []
    for a in answers:
        d = _digits(a["metric"])
        if a["half_yes"]:
            half = "**yes**: " + "; ".join(_delta_words(r, d) for r in a["half_yes"])
        elif a["half_closest"]:
            r = a["half_closest"]
            half = f"**no** (closest: {_delta_words(r, d)} at step {r['step']})"
        else:
            half = "not measured (no learned configuration scored at half the steps)"
        if a["half_worse_bpd"]:
            half += (f"; as fast but with final bits/dim worse than {baseline}'s, so not a yes: "
                     + ", ".join(f"`{m}`" for m in a["half_worse_bpd"]))
        if a.get("plateau"):
            r = a["plateau"]
            half += (f" (but {baseline} itself is level with its final score at step {r['step']}, Δ "
                     f"{r['mean_diff']:+.{d}f} ({_per_seed(r, d)}): this score had stopped improving by half the "
                     f"steps, so the test cannot show a speed-up here)")
        text = (f"- **{a['schedule']}**, {METRIC_LABELS[a['metric']]}: reaches {baseline}'s final score in half "
                f"its steps, beyond the seed spread, bits/dim no worse? {half}.")
        if a["has_heuristic"]:
            if a["heuristic_yes"]:
                versus = "**yes**: " + "; ".join(_delta_words(r, d) for r in a["heuristic_yes"])
            else:
                versus = f"**no** (closest: {_delta_words(a['heuristic_closest'], d)})"
            if a["heuristic_yes"] and a.get("baseline_beats_heuristic"):
                r = a["baseline_beats_heuristic"]
                versus += (f" (but {baseline} itself beats it too, Δ {r['mean_diff']:+.{d}f} ({_per_seed(r, d)}): "
                           f"{r['verdict']}; "
                           f"beating {heuristic} here does not set a learned configuration apart from {baseline})")
            elif a.get("heuristic_yes_not_better"):
                versus += (f" (but not better than {baseline} on this score: "
                           + "; ".join(_delta_words(r, d) for r in a["heuristic_yes_not_better"])
                           + f": a lead over {heuristic} that is not a lead over {baseline})")
            text += f" Beats {heuristic} at the final checkpoint? {versus}."
        lines.append(text)
    return lines


def half_budget_table(rows: list[dict], metric: str, baseline: str = BASELINE) -> str:
    rows = [r for r in rows if r["metric"] == metric]
    if not rows:
        return f"(needs `{baseline}` in --methods and a score at half its steps)\n"
    d = _digits(metric)
    header = f"| schedule | method | at step | mean | {baseline} final (step) | " + PAIRED_HEADER
    lines = [header, _rule(header)]
    lines += [f"| {r['schedule']} | {r['method']} | {r['step']} | {_fmt(r['mean'], d)} | "
              f"{_fmt(r['baseline_mean'], d)} ({r['baseline_step']}) | {_paired_cells(r, d)}" for r in rows]
    return "\n".join(lines) + "\n"


def density_lines(tracks: dict) -> list[str]:
    """One line per learned density: how far it moved from its start, and its mass where the bound's is."""
    lines = []
    for (method, schedule), (seed, t) in sorted(tracks.items()):
        where, mass = ("t < 0.1", t["mass_t_below_0.1"]) if t.get("continuous") else ("t < 20", t["mass_t_below_20"])
        lines.append(f"  {method} ({schedule}, seed {seed}): density moved by total variation {t['tv_from_start']:.2f} "
                     f"from its start; mass on {where} {mass[0]:.3f} -> {mass[-1]:.3f}")
    return lines


def headline(summary: list[dict], paired: list[dict], controls: list[dict] = (), tracks: dict | None = None) -> str:
    """The final checkpoint of every method, per schedule, as plain text for the terminal: mean ± std
    over seeds of each metric, and the paired verdict against the baseline; then the learned sampler
    against its controls, and how far each learned density moved."""
    verdicts = {(r["schedule"], r["method"], r["metric"]): r["verdict"] for r in paired}
    lines = []
    for schedule in dict.fromkeys(r["schedule"] for r in summary):
        rows = [r for r in summary if r["schedule"] == schedule]
        last = max(r["step"] for r in rows)
        lines.append(f"{schedule}, step {last} (mean ± std over seeds; lower is better):")
        for r in (r for r in rows if r["step"] == last):
            cells = []
            for metric in ("test_bpd",) + QUALITY_METRICS:
                label = metric_label(metric)
                if r.get(f"{metric}_mean") is not None:
                    d = _digits(metric)
                    v = verdicts.get((schedule, r["method"], metric))
                    cells.append(f"{label} {r[f'{metric}_mean']:.{d}f} ± {r[f'{metric}_std']:.{d}f}"
                                 + (f" ({v})" if v else ""))
            lines.append(f"  {r['method']:<18} " + "; ".join(cells))
    methods = {r["method"] for r in summary}
    if any(m.startswith("adaptive") for m in methods) and "adaptive-frozen" not in methods:
        lines.append("  (no adaptive-frozen control in this run: a gain of the adaptive sampler may come from its "
                     "starting distribution rather than from learning; add --methods ...,adaptive-frozen)")
    for r in controls:
        label = metric_label(r["metric"])
        d = _digits(r["metric"])
        per_seed = ", ".join(f"{x:+.{d}f}" for x in r["diffs"])
        lines.append(f"  {r['method']} vs {r['baseline']} ({r['schedule']}): {label} Δ per seed {per_seed} "
                     f"({r['verdict']})")
    lines += density_lines(tracks or {})
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})


def write_report(settings: BenchSettings, records, summary, ttq, paired, costs, classifier, plots, out: Path,
                 controls: list[dict] = (), tracks: dict | None = None, half: list[dict] = (),
                 heuristic: list[dict] = ()) -> Path:
    metrics = metrics_in(records)
    quality = [m for m in QUALITY_METRICS if m in metrics]
    s = settings
    flow = s.flow
    baseline, strongest = references(flow)
    learned_controls = sorted({c for learned, cs in LEARNED_CONTROLS.items() if learned.startswith("flow-") == flow
                               for c in cs})
    if flow:
        bpd_line = ("- **Test bits/dim**: the likelihood of the probability-flow ODE (RK4, Hutchinson's trace, data "
                    "dequantised over their levels) on the first test images at every checkpoint"
                    + ("; at the last step on the whole test split with more steps, marked (exact): the ODE's "
                       "likelihood, exact up to the trace estimator." if s.final_exact else "."))
    else:
        split = "test split" if s.eval_images is None else f"first {s.eval_images} test images"
        bpd_line = (f"- **Test bits/dim**: the trainer's stratified estimate of the variational bound on the {split} "
                    f"(every t < {s.eval_exact_below} exactly, one t from each of {s.eval_strata} log-spaced strata "
                    "above; the same timesteps and noise for every model) at every checkpoint"
                    + ("; at the last step the exact bound summed over all T terms, marked (exact)." if s.final_exact
                       else ", the last step included (no exact bound in this run)."))
    fd_samplers = [m.split("_", 1)[1] for m in quality if m.startswith("fd_")]
    computed = "; ".join(f"{metric_label(m)} ({sampler_words(m.split('_', 1)[1], s)}) at "
                         f"{steps_words(computed_steps(records, m))}" for m in quality)
    def n(count, word):
        return f"{count} {word}{'' if count == 1 else 's'}"

    # the seeds the records hold: with --records a report also takes seeds beyond --seeds
    seeds = sorted({r["seed"] for r in records if "seed" in r}) or list(s.seed_list)
    lines = [f"# Benchmark: {n(len(s.methods), 'method')} × {n(len(s.schedules), 'schedule')} × {n(len(seeds), 'seed')}"
             f"{' (--quick)' if s.quick else ''}", ""]
    lines += [f"Data `{s.data}`, model `{s.model}`, batch {s.batch_size}, T = {s.T}, {s.steps} steps per run "
              f"(learning-rate warm-up {s.warmup} steps, EMA decay {s.ema_decay}; bits/dim and samples use the EMA), "
              f"checkpoints every {s.eval_every} steps; seeds {', '.join(map(str, seeds))} (the same seed gives "
              f"every method the same initial weights and the same batches). Methods: {', '.join(s.methods)}. "
              f"Schedules: {', '.join(s.schedules)}. Objective: {s.objective}. Device: {costs.get('device')}.", ""]
    lines += ["## How it is measured", "", bpd_line,
              f"- **Time-to-quality**: the target is the {baseline} method's final score (mean over seeds) on each "
              "schedule; for every method the first checkpoint at which its mean curve reaches it, in steps and in "
              "training seconds (`train_seconds`: the time inside training steps, no evaluation), and the speed-up "
              f"= {baseline}'s steps (seconds) to that target / the method's. Resolution: one checkpoint interval. "
              "On bits/dim it compares stratified estimates throughout, the final step included, so target and "
              "curve are measured alike. No speed-up is given for a method that never reached the target. The "
              "runs are made one after another, so on a shared machine the seconds carry its changing load as "
              f"well as each method's own cost: where a method reaches the target at the same step as {baseline}, "
              "its seconds speed-up is load, not method; the cost table below shows the steps/s behind it."
              + (f" **Speed-up (compute)** = {baseline}'s steps to the target / (the method's steps × its step "
                 f"cost), where the step cost is the method's seconds per training step / {baseline}'s, measured "
                 f"in one run on one machine with the methods' blocks interleaved (`{Path(s.step_cost).name}`, "
                 "benchmarks/step_cost.py): the fair reading in time when runs come from different sessions."
                 if s.step_cost else ""),
              f"- **Honesty**: per seed, the difference method − {baseline} at the final checkpoint (same seed: same "
              "initial weights and data order). A difference is *consistent* when every seed's difference has the "
              "same sign and the mean exceeds twice its standard error; the verdict says *beyond seed spread* when "
              "it is consistent and also larger than the standard deviation over seeds of either method alone, "
              "*on every seed (paired), within seed spread* when it is consistent but smaller, and *no consistent "
              "difference* otherwise. With 2–3 seeds this is a coarse screen, not a significance test."]
    if fd_samplers:
        lines += [f"- **FD**: Fréchet distance between features of {s.fd_samples} generated images of each sampler "
                  f"({', '.join(sampler_words(x, s) for x in fd_samplers)}; EMA weights; starting noise from seed "
                  f"{s.sample_seed}, the same for every method, seed and checkpoint; images rounded to the data's grey "
                  f"levels) and of the {classifier.get('reference_images')} images of the **test split**. Features: "
                  + ("the 128-unit hidden layer of a small CNN classifier trained once on Fashion-MNIST's training "
                     "split" if classifier.get("name") == "fashion-classifier" else
                     "the 64-unit penultimate layer of a small CNN digit classifier trained once on the digits' "
                     "training split")
                  + f" (seed {classifier.get('seed')}, cached in `{classifier.get('cache')}`); its test accuracy: "
                  f"**{100 * classifier.get('test_accuracy', float('nan')):.1f}%** on "
                  f"{classifier.get('test_images')} images. **Floor** from sample size: the FD between "
                  f"{classifier.get('floor_images')} real training images and the test split (disjoint real sets, "
                  f"the generated set's size, the same features) is {_fmt(classifier.get('floor_fd'), 1)}; a perfect "
                  f"model scores about that. Every FD is given as mean ± std over seeds.",
                  f"- **Where each score was computed**: {computed}."
                  + (" A record made before the bench scored several samplers holds DDIM's (Euler's for a flow) "
                     "alone: its other FDs show as –, and a mean over fewer seeds than the row's says over how "
                     "many (n)." if costs.get("incomplete") else "")]
    if any(m.startswith("kid") for m in quality):
        floor_kid = classifier.get("floor_kid")
        lines += ["- **KID**: kernel inception distance (Bińkowski et al. 2018), in the same features and of the "
                  "same images as each FD: the unbiased MMD² under the kernel (xᵀy/d + 1)³, averaged over 100 random "
                  "subsets of min(1000, the set's size) images of each set (torch-fidelity's recipe). Unbiased, so "
                  "unlike the FD it has no floor from sample size: real against real scores about 0"
                  + (f" (here {_fmt(floor_kid, 4)} ± {_fmt(classifier.get('floor_kid_std'), 4)}, std over the "
                     f"subsets)" if floor_kid is not None else "")
                  + ", and can be slightly negative. Records made before the KID show it as –."]
    if not quality:
        lines += [f"- **No sample-quality score**: the classifiers score only the digits and fashion-mnist, and no "
                  f"`--inception` network was given for `{s.data}`."]
    if any(m.startswith("fid_") for m in quality):
        lines += [f"- **FID**: the same distance in the features of the TorchScript network `{s.inception}` "
                  f"(images as 0..255 floats, grey repeated to 3 channels, at their own size), for the same images."]
    lines += [""]
    lines += ["## Test bits/dim (mean ± std over seeds; lower is better; best per column in bold)", "",
              table1(summary, "test_bpd", s)]
    rising = rising_curves(records)
    if rising:
        lines += ["### Bounds that rise again", "",
                  "On every seed these methods' test bits/dim (the estimate made at every checkpoint) is lower at an "
                  "earlier checkpoint than at the last, by more than 0.005: their best model is not their last one, "
                  "and a comparison at the last checkpoint alone undersells them.", "", rising_table(rising)]
    gaps = train_test_gaps(records)
    if gaps:
        lines += ["### The bound on training images at the last checkpoint", "",
                  "The same estimate (same timesteps, noise and number of images) on training images: "
                  + ("the whole test split" if s.eval_images is None else f"the first {s.eval_images} test images")
                  + " against as many training images for a DDPM, the first `eval_images` of each for a "
                  "flow (64 by default). The model has seen those images: a test bound well above theirs is a "
                  "model fitting its training set, and a rising test bound with a wide gap is overfitting rather "
                  "than a worse sampler. Two sets of images differ by themselves too, the more so the fewer they "
                  "are: read a gap against uniform's at the same step, not against zero. "
                  "Records made before this was measured are not in the table.", "", gap_table(gaps)]
    if quality:
        lines += ["## Sample quality at checkpoints, beside bits/dim (the paper's Table 1 in shape)", "",
                  f"Mean ± std over seeds; lower is better; best per column in bold. FD floor (real against real, "
                  f"the same sizes): {_fmt(classifier.get('floor_fd'), 1)}.", "",
                  checkpoint_table(summary, records, quality, s)]
    answers = schedule_answers(half, heuristic, paired, quality, baseline)
    if answers:
        lines += ["## Does the learned sampler speed up samples? One sentence per schedule", "",
                  "For each sample-quality score, from the half-steps and paired tables below: a learned "
                  "configuration (adaptive…, not its frozen or final controls) answers *yes* only when its verdict "
                  "is *better beyond seed spread*; Δ is its score − the other's per seed.", ""]
        lines += answer_lines(answers, baseline, strongest) + [""]
    for metric in quality:
        lines += [f"## {METRIC_LABELS[metric]} (mean ± std over seeds; lower is better)", "",
                  table1(summary, metric, s)]
    lines += [f"## Time to reach {baseline}'s final score", ""]
    for metric in ["test_bpd_estimate"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "", ttq_table(ttq, metric, baseline)]
        if metric in quality:
            lines += [f"Measured at {steps_words(computed_steps(records, metric))}: the steps and seconds to "
                      f"the target have that resolution.", ""]
    lines += [f"## Half the steps: each method at half {baseline}'s steps against {baseline}'s final score", "",
              f"Paired by seed: Δ = the method's score at its last checkpoint at or before half of {baseline}'s "
              f"final step − {baseline}'s final score. *better* (Δ < 0, consistent) means the method is there in "
              f"half the steps beyond what the seeds' noise explains; *no consistent difference* means it is level "
              f"within the noise, which is not yet a 2× speed-up.", ""]
    for metric in ["test_bpd_estimate"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "", half_budget_table(half, metric, baseline)]
    lines += [f"## Paired comparison with {baseline} at the final checkpoint", ""]
    for metric in ["test_bpd"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "", paired_table(paired, metric, baseline)]
    if heuristic:
        lines += [f"## Paired comparison with {strongest}, {HEURISTIC_WORDS[strongest]} (final checkpoint)", ""]
        for metric in ["test_bpd"] + quality:
            lines += [f"### {METRIC_LABELS[metric]}", "", paired_table(heuristic, metric, strongest)]
    lines += ["## The learned sampler against its controls (paired, final checkpoint)", "",
              "Δ = learned sampler (method) − control (vs), same seed. A gain that a control shares is "
              "not learning.", ""]
    for metric in ["test_bpd"] + quality:
        lines += [f"### {METRIC_LABELS[metric]}", "",
                  paired_table([r for r in controls if r["metric"] == metric], metric, ", ".join(learned_controls))]
    lines += ["### Learned densities", ""] + [ln.strip() for ln in density_lines(tracks or {})] + [""]
    lines += ["## Cost (measured in this run)", ""]
    lines += ["| method | runs trained now | training steps/s | wall-clock s per run trained in one go (training + "
              "evaluations) | recorded steps/s (min–max over records) | step cost vs " + baseline + " (one run) |",
              "|---|---|---|---|---|---|"]
    for m in s.methods:
        c = costs["methods"].get(m, {})
        rates = c.get("recorded_steps_per_sec") or []
        recorded = f"{min(rates):.1f}–{max(rates):.1f} ({len(rates)})" if rates else "–"
        lines.append(f"| {m} | {c.get('trained', 0)} | {_fmt(c.get('steps_per_sec'), 1)} | "
                     f"{_fmt(c.get('run_seconds'), 1)} | {recorded} | {_fmt(c.get('step_cost'), 2)} |")
    lines += [""]
    if any(c.get("recorded_steps_per_sec") for c in costs["methods"].values()):
        lines += ["- Recorded steps/s: each record's own (one thread a run); records come from sessions on "
                  "machines of different speeds, so their range is mostly the machine's, and the step cost "
                  + (f"(`{Path(s.step_cost).name}`) is the method's own." if s.step_cost
                     else "needs `--step-cost` (benchmarks/step_cost.py) to be read apart from it."), ""]
    per_checkpoint = costs.get("score_seconds_per_checkpoint") or {}
    if isinstance(per_checkpoint, dict) and per_checkpoint:
        lines += [f"- Sampling {s.fd_samples} images of one checkpoint and scoring them, on average: "
                  + "; ".join(f"{metric_label(m)} ({sampler_words(m.split('_', 1)[1], s)}) {_fmt(v, 1)} s"
                              for m, v in per_checkpoint.items()) + " (scored in this invocation)."]
    if classifier:
        lines += [f"- Digit classifier: {'loaded from cache in' if classifier.get('cached') else 'trained in'} "
                  f"{_fmt(classifier.get('seconds'), 1)} s."]
    lines += [f"- This invocation: {costs['total_seconds']:.0f} s wall-clock; {costs['trained']} runs trained, "
              f"{costs['resumed']} resumed, {costs['skipped']} already finished"
              + (f", {costs['filled']} records given scores they lacked from their checkpoints" if costs.get("filled")
                 else "")
              + (f", {costs['incomplete']} records lacking a score these settings compute (no checkpoints to "
                 f"compute it from; shown as –)" if costs.get("incomplete") else "") + ".", ""]
    lines += ["## Plots", ""] + [f"- `{p.name}`" for p in plots] + [""]
    lines += ["Raw data: `results.json` / `results.csv` (one record per run and checkpoint), `summary.csv`, "
              "`time_to_quality.csv`, `paired.csv`; per run: `runs/<method>__<schedule>__s<seed>/`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
