"""The benchmark: a grid of methods × noise schedules × seeds on one data set, one model and one budget,
each cell a run of the reference trainer, then the tables and plots that compare them.

    DIR/runs/<method>__<schedule>__s<seed>/   one trainer run each (config.json, metrics.jsonl, checkpoints/,
                                              train.log, bench.json: the scores this module adds)
    DIR/results.json, DIR/results.csv         one record per run and checkpoint
    DIR/summary.csv                           mean and spread over seeds per method, schedule and step
    DIR/time_to_quality.csv, DIR/paired.csv   the derived comparisons
    DIR/report.md, DIR/*.png                  tables and plots
    DIR/classifier/                           the digit classifier behind the FD, trained once and cached

Rerunning the same command skips finished runs (metrics.jsonl holds the final record), resumes unfinished
ones from their last checkpoint, and recomputes only scores it does not have.

The modules, each one idea (none imports one that imports it back; tests/test_bench.py checks):
    settings.py   what a grid is: BenchSettings, the presets, validation, what a method name trains
    records.py    per-run records kept across invocations (`--records`), and which of them a report may use
    stats.py      mean and spread over seeds, time to quality, paired comparisons (plain functions of records)
    report.py     report.md, the CSV tables, the curves and density heat maps, the terminal headline
    scoring.py    samples of each checkpoint, their Fréchet distances, the final bits/dim estimate
    tracks.py     the learned samplers' density tracks, and the `-final` control (frozen at its final state)
    runner.py     each cell's configuration, training, scoring and record; the whole grid (`run_bench`)
    jsonfiles.py  the run folder's JSON files

What is measured, and how (report.md says it again):
- Test bits/dim: the trainer's stratified estimate (common timesteps and noise for every model) at each
  checkpoint; at the end the exact bound over all T when `final_exact`. Time-to-quality on bits/dim
  compares estimate with estimate (the bench adds the estimate at the final checkpoint when the trainer
  logged the exact bound there), so the target and the curves are measured alike.
- FD: the Fréchet distance between the digit classifier's features of `fd_samples` samples of the EMA model
  (fixed starting noise: the same for every method, seed and checkpoint) and of the test split, one per
  sampler (`fd_samplers`): fd_ddim (DDIM, every checkpoint) and fd_ddpm (ancestral sampling through all T
  steps, as the paper's FIDs, at a few checkpoints); fd_euler and fd_heun for rectified flow.
- Wall-clock: the trainer's `train_seconds`, the time spent in training steps only (no evaluation).
"""
from __future__ import annotations

from .records import all_records, load_record, read_record, run_name, write_record
from .runner import run_bench, run_config, run_records, run_state, train_run
from .scoring import Scorer, build_scorers, estimate_checkpoint, generate, score_run
from .settings import (DEFAULT_METHODS, DEFAULT_SCHEDULES, FINAL_SUFFIX, FLOW_METHODS, FULL, QUICK, BenchSettings,
                       make_settings, method_fingerprint, validate)
from .tracks import current_records, density_tracks, frozen_final_method, read_cell_record, sampler_summary

__all__ = ["BenchSettings", "DEFAULT_METHODS", "DEFAULT_SCHEDULES", "FINAL_SUFFIX", "FLOW_METHODS", "FULL", "QUICK",
           "Scorer", "all_records", "build_scorers", "current_records", "density_tracks", "estimate_checkpoint",
           "frozen_final_method", "generate", "load_record", "make_settings", "method_fingerprint", "read_cell_record",
           "read_record",
           "run_bench", "run_config", "run_name", "run_records", "run_state", "sampler_summary", "score_run",
           "train_run", "validate", "write_record"]
