"""What one training step of each benchmark method costs against uniform's, measured in one run on one machine,
so that time-to-quality in compute can be read from records made in different sessions.

The records' `train_seconds` come from many sessions whose machines ran at 5 to 14 steps/s for the same
method, so a seconds speed-up computed across records is mostly the machine. This measures the other factor
alone: each method's training step (the reference trainer's `train_step`: sampler draw, loss, backward, clip,
Adam, EMA and the sampler's own update) in blocks of whole update cycles, interleaved with uniform's blocks so
that a slow or fast period of a shared machine hits both alike:

    ratio(method) = median over rounds of  (seconds per step of its block)
                                          / (mean seconds per step of the uniform blocks either side of it)

The report (`bench --step-cost`, which rebuild_reports.py passes) then gives the speed-up in compute as
uniform's steps to the target / (the method's steps × its ratio). `-final` controls are fixed samplers and are
left out (their cost is their fixed sampler's).

    python benchmarks/step_cost.py                       # the grids' recorded methods: about 8 minutes idle
    python benchmarks/step_cost.py --methods uniform,adaptive,adaptive-variance --rounds 2   # a look
    python benchmarks/step_cost.py --callable --out docs/bench/step_cost_callable.json       # model as a lambda

--callable hands the learned samplers' observe() a plain callable, `lambda x, t: net(x, t)` (with optimizer=),
instead of the network: the path a loop takes when its model needs more arguments than (x_t, t).

Run it on an idle machine (nothing else training): two jobs side by side share memory bandwidth unevenly.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from timestep_sampling import bench
from timestep_sampling.bench.jsonfiles import write_json
from timestep_sampling.bench.records import provenance
from timestep_sampling.bench.runner import run_config
from timestep_sampling.bench.settings import FINAL_SUFFIX
from timestep_sampling.data import load_data
from timestep_sampling.train import Trainer

from grids import DOCS_BENCH, GRIDS
from rebuild_reports import recorded_cells

OUT = DOCS_BENCH / "step_cost.json"
BLOCK_STEPS = 60  # at least this many steps a block, rounded up to whole update cycles of the method's sampler
UNIFORM_EVERY = 4  # a uniform block after every this many method blocks


def grid_methods(grid: str) -> list[str]:
    """The methods recorded under a grid, without the `-final` controls."""
    methods, _, _ = recorded_cells(DOCS_BENCH / grid)
    return [m for m in methods if not m.endswith(FINAL_SUFFIX)]


def block_steps(trainer: Trainer) -> int:
    """Whole update cycles (K steps each) of the trainer's sampler, at least BLOCK_STEPS steps."""
    k = getattr(trainer.sampler, "update_every", 1) or 1
    return k * math.ceil(BLOCK_STEPS / k)


def seconds_per_step(trainer: Trainer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1
    return (time.perf_counter() - start) / steps


def observe_a_callable(trainer: Trainer) -> None:
    """Make the trainer hand its sampler's observe() `lambda x, t: net(x, t)` instead of the network."""
    observe, net = trainer.sampler.observe, trainer.net
    trainer.sampler.observe = lambda model, x0, **options: observe(lambda x, t: net(x, t), x0, **options)


def measure(grid: str, methods: list[str], rounds: int, scratch: str, say=print, as_callable: bool = False) -> dict:
    """{method: {"ratio", "ratios", "seconds_per_step", "block_steps"}} for one grid's setting; ratios are
    against the grid's baseline (uniform, or flow-uniform for a flow grid)."""
    options = dict(GRIDS[grid])
    settings = bench.make_settings(scratch, methods=methods, progress=False, **options)
    baseline = "flow-uniform" if settings.flow else "uniform"
    schedule = settings.schedules[0] if settings.flow else "linear"
    data = load_data(settings.data)
    trainers = {m: Trainer(run_config(settings, m, schedule, 0), progress=False, data=data)
                for m in dict.fromkeys([baseline, *methods])}
    if as_callable:
        for trainer in trainers.values():
            observe_a_callable(trainer)
    for trainer in trainers.values():  # warm: first allocations, and each sampler past its first update
        seconds_per_step(trainer, block_steps(trainer))
    others = [m for m in trainers if m != baseline]
    times: dict[str, list[float]] = {m: [] for m in trainers}
    ratios: dict[str, list[float]] = {m: [] for m in others}
    base = trainers[baseline]
    for r in range(rounds):
        order = others if r % 2 == 0 else others[::-1]  # no method always right after a uniform block
        before = seconds_per_step(base, block_steps(base))
        times[baseline].append(before)
        for start in range(0, len(order), UNIFORM_EVERY):
            group = order[start:start + UNIFORM_EVERY]
            timed = {m: seconds_per_step(trainers[m], block_steps(trainers[m])) for m in group}
            after = seconds_per_step(base, block_steps(base))
            times[baseline].append(after)
            for m, sec in timed.items():
                times[m].append(sec)
                ratios[m].append(sec / ((before + after) / 2))
            before = after
        say(f"{grid} round {r + 1}/{rounds}: " + ", ".join(f"{m} {ratios[m][-1]:.3f}" for m in others))
    rows = {baseline: {"ratio": 1.0, "ratios": [], "seconds_per_step": statistics.median(times[baseline]),
                       "block_steps": block_steps(base)}}
    for m in others:
        rows[m] = {"ratio": statistics.median(ratios[m]), "ratios": ratios[m],
                   "seconds_per_step": statistics.median(times[m]), "block_steps": block_steps(trainers[m])}
    return {"baseline": baseline, "model": settings.model, "batch_size": settings.batch_size, "T": settings.T,
            "methods": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default="ancestral3k,ancestral10k,long10k,flow3k",
                        help="grids whose recorded methods are measured (one setting per objective)")
    parser.add_argument("--methods", help="measure these instead (comma-separated; flow-... ones under the flow grid)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the cells' own: 1)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--callable", action="store_true", help="observe() gets a plain callable, not the network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    by_objective: dict[str, tuple[str, list[str]]] = {}  # every ddpm grid shares one setting, so does every flow one
    for grid in args.grids.split(","):
        if grid not in GRIDS:
            parser.error(f"unknown grid {grid}; valid: {', '.join(GRIDS)}")
        flow = GRIDS[grid].get("objective") == "flow"
        chosen = ([m for m in args.methods.split(",") if m.startswith("flow-") == flow] if args.methods
                  else grid_methods(grid))
        key = "flow" if flow else "ddpm"
        first, known = by_objective.get(key, (grid, []))
        by_objective[key] = (first, list(dict.fromkeys(known + chosen)))
    result = {"what": "seconds per training step of each method / its baseline's, interleaved blocks, one machine",
              "threads": args.threads, "rounds": args.rounds, "model_as": "callable" if args.callable else "module",
              "objectives": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for key, (grid, methods) in by_objective.items():
            if methods:
                result["objectives"][key] = measure(grid, methods, args.rounds, scratch, as_callable=args.callable)
    result["provenance"] = provenance()
    write_json(args.out, result)
    for key, part in result["objectives"].items():
        print(f"{key} (vs {part['baseline']}): " + ", ".join(f"{m} {row['ratio']:.3f}"
                                                             for m, row in part["methods"].items()))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
