"""The README's table of measured methods, built from the committed records rather than typed: for each method,
the final test bits/dim and the FD under both image samplers, mean over the recorded seeds, on the 10,000-step
linear grid and the 3000-step grids of the three schedules (and the flow grid for the flow methods).

    python benchmarks/readme_table.py           # print the tables
    python benchmarks/readme_table.py --write   # replace them in README.md, between their markers
    python benchmarks/readme_table.py --check   # exit 1 if README.md's tables differ from the records

tests/test_readme.py runs the check, so a record that changes a mean the README shows fails the tests until
`--write` is run (and the prose beside the table is read again). Spreads, per-seed differences and verdicts
are in each grid's report; the table gives means only, to stay readable at 3 numbers a cell.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile

import numpy as np

from timestep_sampling import bench
from timestep_sampling.bench.tracks import current_records

from grids import DOCS_BENCH, GRIDS  # benchmarks/grids.py: each grid's settings

README = DOCS_BENCH.parents[1] / "README.md"
BEGIN, END = "<!-- readme_table.py: begin -->", "<!-- readme_table.py: end -->"

# (grids, schedule, column title) for each column, the grids in order of preference: long10k trained the same
# runs as ancestral10k (the same bits/dim to the last digit where both have a method) without the ancestral FD.
DDPM_COLUMNS = [(("ancestral10k", "long10k"), "linear", "linear, 10k steps"), (("ancestral3k",), "linear", "linear, 3k"),
                (("ancestral3k",), "cosine", "cosine, 3k"), (("ancestral3k",), "quad", "quad, 3k")]
DDPM_SCORES = ("test_bpd", "fd_ddpm", "fd_ddim")
FLOW_COLUMNS = [(("flow3k",), "flow", "rectified flow, 3k steps")]
FLOW_SCORES = ("test_bpd", "fd_euler", "fd_heun")

DDPM_METHODS = {
    "uniform": "t ~ U{0..T−1} (DDPM): the baseline",
    "p2": "P2 weighting",
    "min-snr": "Min-SNR-γ weighting (the paper's strongest heuristic)",
    "logit-normal": "t/T = sigmoid(n), n ~ N(mean, std)",
    "lognormal-edm": "EDM's log-normal σ, mapped to t",
    "speed": "SpeeD, current version",
    "loss-second-moment": "improved DDPM's importance sampling",
    # the learned samplers' rows were recorded with the K = 20 update (their names until 2026-12-07, without -k20)
    "adaptive-k20": "the learned Beta, credit of the bound (`adaptive` with the K = 20 update)",
    "adaptive-mix-k20": "the same with a 30 % uniform floor (`adaptive-mix`, K = 20)",
    "adaptive-min-snr-k20": "the learned Beta with Min-SNR weighting, crediting that objective (the paper's Tab. 3; "
                            "`adaptive-min-snr`, K = 20)",
    "adaptive-unbiased-k20": "the learned Beta as an importance sampler (weights 1/(T·p_t)), 30 % floor "
                             "(`adaptive-unbiased`, K = 20)",
    "adaptive-variance": "importance sampler whose reward is the loss estimate's variance, 5 % floor",
    "adaptive-frozen": "control: the learned sampler's starting Beta, never updated",
    "adaptive-paper": "control: the paper's estimator (eq. 14)",
}
FLOW_METHODS = {
    "flow-uniform": "t ~ U(0, 1): the flow baseline",
    "flow-logit-normal": "SD3's default",
    "flow-mode": "SD3's mode sampling (scale 1.29)",
    "flow-cosmap": "SD3's CosMap",
    "flow-min-snr": "Min-SNR-γ on the velocity loss",
    "flow-adaptive-k20": "the learned Beta over t in (0, 1) (`flow-adaptive` with the K = 20 update)",
    "flow-adaptive-mix-k20": "the same with a 30 % uniform floor (`flow-adaptive-mix`, K = 20)",
    "flow-adaptive-min-snr-k20": "the learned flow Beta with `flow-min-snr`, crediting that objective (K = 20)",
    "flow-adaptive-variance": "ablation: the flow importance sampler (loss-variance reward)",
    "flow-adaptive-frozen": "control: the same Beta, never updated",
}


def grid_records(grid: str) -> list[dict]:
    """The grid's current records (tracks.current_records: none made when its method meant something else)."""
    options = dict(GRIDS[grid])
    flow = options.get("objective") == "flow"
    with tempfile.TemporaryDirectory() as scratch:
        settings = bench.make_settings(scratch, methods="uniform" if not flow else "flow-uniform",
                                       records=str(DOCS_BENCH / grid), report_only=True, progress=False, **options)
        return current_records(settings)


def final_means(records: list[dict], method: str, schedule: str, scores) -> tuple[list[float | None], int]:
    """The mean over seeds of each score at the run's last checkpoint, and the number of seeds."""
    finals = [r["evals"][-1] for r in records if r["method"] == method and r["schedule"] == schedule]
    means = []
    for score in scores:
        values = [e[score] for e in finals if e.get(score) is not None]
        means.append(float(np.mean(values)) if values else None)
    return means, len(finals)


def cell(means: list[float | None], seeds: int) -> str:
    text = " / ".join("–" if m is None else f"{m:.3f}" if i == 0 else f"{m:.1f}" for i, m in enumerate(means))
    return text + (f" (n = {seeds})" if seeds != 3 else "")


def first_recorded(records: dict[str, list[dict]], grids, method: str, schedule: str, scores) -> str:
    """The cell of the first grid that recorded this method on this schedule."""
    for grid in grids:
        means, seeds = final_means(records[grid], method, schedule, scores)
        if seeds:
            return cell(means, seeds)
    return "–"


def table(columns, scores, methods: dict[str, str]) -> str:
    records = {grid: grid_records(grid) for grids, _, _ in columns for grid in grids}
    lines = ["| method | what it is | " + " | ".join(title for _, _, title in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for method, what in methods.items():
        cells = [first_recorded(records, grids, method, schedule, scores) for grids, schedule, _ in columns]
        lines.append(f"| `{method}` | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables() -> str:
    return (table(DDPM_COLUMNS, DDPM_SCORES, DDPM_METHODS) + "\n\n"
            "Rectified flow, each cell ODE bits/dim / FD Euler-50 / FD Heun-50:\n\n"
            + table(FLOW_COLUMNS, FLOW_SCORES, FLOW_METHODS))


def readme_span(text: str) -> re.Match:
    """The README's tables: everything between the two markers."""
    match = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    if match is None:
        sys.exit(f"README.md lacks the markers {BEGIN} ... {END}")
    return match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="replace the tables in README.md")
    action.add_argument("--check", action="store_true", help="exit 1 if README.md's tables differ")
    args = parser.parse_args()
    built = tables()
    if args.write:
        text = README.read_text()
        span = readme_span(text)
        README.write_text(text[:span.start(1)] + built + "\n" + text[span.end(1):])
        print("README.md: tables rewritten from the records")
    elif args.check:
        if readme_span(README.read_text()).group(1) != built + "\n":
            sys.exit("README.md's tables differ from the records: run python benchmarks/readme_table.py --write")
        print("README.md's tables match the records")
    else:
        print(built)


if __name__ == "__main__":
    main()
