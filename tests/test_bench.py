"""The benchmark: Fréchet distance, the digit classifier, time-to-quality and paired comparisons on
hand-made curves, and a tiny grid end to end (outputs, skipping finished runs, resuming, --inception)."""
import ast
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from timestep_sampling import bench, frechet
from timestep_sampling.bench import records as bench_records
from timestep_sampling.bench import report as bench_report
from timestep_sampling.bench import stats as bench_stats
from timestep_sampling.bench.tracks import final_is_current
from timestep_sampling import train as train_module
from timestep_sampling.cli import main
from timestep_sampling.data import load_data
from timestep_sampling.errors import UserError
from timestep_sampling.frechet import (TorchScriptFeatures, digits_with_labels, frechet_distance,
                                       frechet_distance_features, train_digit_classifier)
from timestep_sampling.methods import make_method, method_specs
from timestep_sampling.schedule import NoiseSchedule


# ----------------------------------------------------------------------------- Fréchet distance

def test_frechet_distance_of_one_dimensional_gaussians():
    # ‖μ1 − μ2‖² + σ1² + σ2² − 2σ1σ2 = (μ1 − μ2)² + (σ1 − σ2)²
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)


def test_frechet_distance_of_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_matches_the_sqrtm_formula_on_full_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # a rotated copy of the same Gaussian: only the mean moves it
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert frechet_distance(mu1, s1, mu1, q @ s1 @ q.T) > 0
    assert frechet_distance(mu1, s1, mu1 + 1, s1) == pytest.approx(5.0, abs=1e-9)


def test_identical_feature_sets_give_zero_even_when_rank_deficient():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(20, 64))  # 20 samples in 64 dimensions: a singular covariance
    assert frechet_distance_features(f, f.copy()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    f1 = rng.normal(loc=0.0, scale=1.0, size=(200_000, 2))
    f2 = rng.normal(loc=[1.0, 0.0], scale=[2.0, 1.0], size=(200_000, 2))
    assert frechet_distance_features(f1, f2) == pytest.approx(1 + 1, abs=0.05)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(UserError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------- digit classifier

@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    """The digit classifier trained once (the bench's default recipe) into a cache folder."""
    cache = tmp_path_factory.mktemp("classifier")
    frechet.load_or_train_digit_classifier(cache)
    return cache


def test_labelled_digits_are_the_trainers_split():
    x_train, y_train, x_test, y_test = digits_with_labels()
    data = load_data("digits")
    assert torch.equal(x_train, data.train) and torch.equal(x_test, data.test)
    assert len(y_train) == 1500 and len(y_test) == 297 and set(y_test.tolist()) == set(range(10))


def test_classifier_training_is_deterministic():
    a, _ = train_digit_classifier(seed=3, epochs=1)
    b, _ = train_digit_classifier(seed=3, epochs=1)
    c, _ = train_digit_classifier(seed=4, epochs=1)
    same = [torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())]
    assert all(same)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_classifier_is_accurate_and_cached(classifier_cache):
    model, info = frechet.load_or_train_digit_classifier(classifier_cache)
    assert info["cached"] and info["test_accuracy"] > 0.95  # measured: 99.0% on the 297 test digits
    _, _, x_test, y_test = digits_with_labels()
    assert frechet.accuracy(model, x_test, y_test) == pytest.approx(info["test_accuracy"])


def test_a_truncated_classifier_cache_is_trained_again(classifier_cache, tmp_path):
    cache = tmp_path / "classifier"
    shutil.copytree(classifier_cache, cache)
    weights = cache / "digit_classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a write cut short, its description intact
    model, info = frechet.load_or_train_digit_classifier(cache)
    assert not info["cached"] and info["test_accuracy"] > 0.95
    assert frechet.load_or_train_digit_classifier(cache)[1]["cached"]  # whole again, and no temporary left
    assert sorted(p.name for p in cache.iterdir()) == ["digit_classifier.json", "digit_classifier.safetensors"]


# ----------------------------------------------------------------------------- time-to-quality, paired comparison

def records_from(curves: dict, schedule="linear", seconds_per_step=0.1):
    """curves: {(method, seed): [values at steps 0, 100, 200, ...]} → bench records."""
    out = []
    for (method, seed), values in curves.items():
        for i, v in enumerate(values):
            out.append({"method": method, "schedule": schedule, "seed": seed, "step": 100 * i,
                        "train_seconds": 100 * i * seconds_per_step * (2 if method == "slow" else 1),
                        "test_bpd": v, "bpd_method": "estimate", "test_bpd_estimate": v, "fd_ddim": None})
    return out


def test_time_to_target_finds_the_first_checkpoint_at_or_below():
    assert bench_stats.time_to_target([0, 1, 2, 3], [0, 10, 20, 30], [5, 4, 3, 2], 3.0) == (2, 20)
    assert bench_stats.time_to_target([0, 1, 2], [0, 10, 20], [5, 4, 3.5], 3.0) is None
    assert bench_stats.time_to_target([0, 1, 2], [0, 10, 20], [5, None, 2], 3.0) == (2, 20)


def test_time_to_quality_reached_not_reached_and_ratio():
    records = records_from({
        ("uniform", 0): [6, 5, 4, 3, 2], ("uniform", 1): [6, 5, 4, 3, 2],  # target: 2 at step 400
        ("fast", 0): [6, 4, 2, 1.5, 1.0], ("fast", 1): [6, 4, 2.2, 1.5, 1.0],  # mean 2.1 at 200, 1.5 at 300
        ("never", 0): [6, 5, 4, 3, 2.5], ("never", 1): [6, 5, 4, 3, 1.9],  # mean 2.2 at the end
        ("slow", 0): [6, 5, 4, 3, 2], ("slow", 1): [6, 5, 4, 3, 2],  # same steps, twice the seconds
    })
    rows = {r["method"]: r for r in bench_stats.time_to_quality(records, "test_bpd_estimate")}
    assert rows["uniform"]["reached"] and rows["uniform"]["steps"] == 400 and rows["uniform"]["speedup_steps"] == 1
    assert rows["fast"]["steps"] == 300 and rows["fast"]["speedup_steps"] == pytest.approx(400 / 300)
    assert rows["fast"]["speedup_seconds"] == pytest.approx(40 / 30)
    assert not rows["never"]["reached"] and rows["never"]["speedup_steps"] is None and rows["never"]["steps"] is None
    assert rows["slow"]["speedup_steps"] == 1 and rows["slow"]["speedup_seconds"] == pytest.approx(0.5)
    table = bench_report.ttq_table(list(rows.values()), "test_bpd_estimate")
    never_line = next(line for line in table.splitlines() if "| never |" in line)
    assert "not reached" in never_line and "×" not in never_line  # never a speed-up for a method that missed


def test_time_to_quality_in_compute_divides_the_step_speed_up_by_the_step_cost():
    records = records_from({
        ("uniform", 0): [6, 5, 4, 3, 2],  # target 2 at step 400
        ("fast", 0): [6, 4, 2, 1.5, 1.0],  # there at step 200: 2x in steps
        ("never", 0): [6, 5, 4, 3, 2.5],
    })
    cost = {"uniform": 1.0, "fast": 1.25, "never": 0.9}  # fast's step costs 1.25 uniform steps
    rows = {r["method"]: r for r in bench_stats.time_to_quality(records, "test_bpd_estimate", step_cost=cost)}
    assert rows["fast"]["speedup_steps"] == pytest.approx(2.0)
    assert rows["fast"]["speedup_compute"] == pytest.approx(2.0 / 1.25)
    assert rows["uniform"]["speedup_compute"] == pytest.approx(1.0)
    assert rows["never"]["speedup_compute"] is None and rows["never"]["step_cost"] == 0.9
    table = bench_report.ttq_table(list(rows.values()), "test_bpd_estimate")
    assert "speed-up (compute)" in table and "| 1.25 | 1.60× |" in table
    # without a cost file: no compute column, and no compute speed-up for a method the file lacks
    assert "compute" not in bench_report.ttq_table(bench_stats.time_to_quality(records, "test_bpd_estimate"),
                                                   "test_bpd_estimate")
    rows = bench_stats.time_to_quality(records, "test_bpd_estimate", step_cost={"uniform": 1.0})
    assert next(r for r in rows if r["method"] == "fast")["speedup_compute"] is None


def test_time_to_quality_needs_the_baseline():
    records = records_from({("fast", 0): [6, 4, 2]})
    assert bench_stats.time_to_quality(records, "test_bpd_estimate") == []
    assert "needs" in bench_report.ttq_table([], "test_bpd_estimate")


def test_headline_warns_when_the_adaptive_sampler_runs_without_its_control():
    def row(method):
        return {"method": method, "schedule": "linear", "step": 10, "test_bpd_mean": 3.0, "test_bpd_std": 0.01}

    paired = [{"schedule": "linear", "method": "adaptive", "metric": "test_bpd", "verdict": "better beyond seed spread"}]
    text = bench_report.headline([row("uniform"), row("adaptive")], paired)
    assert "adaptive           bits/dim 3.000 ± 0.010 (better beyond seed spread)" in text
    assert "no adaptive-frozen control" in text
    assert "control" not in bench_report.headline([row("uniform"), row("adaptive"), row("adaptive-frozen")], paired)
    assert "control" not in bench_report.headline([row("uniform"), row("speed")], [])


def test_paired_verdicts():
    assert bench_stats.verdict([-1.0, -1.1, -0.9], spread=0.2) == "better beyond seed spread"
    assert bench_stats.verdict([-0.10, -0.11, -0.09], spread=0.5) == "better on every seed (paired), within seed spread"
    assert bench_stats.verdict([-1.0, 0.5, -0.2], spread=0.1) == "no consistent difference"
    assert bench_stats.verdict([0.5, 0.6], spread=0.1) == "worse beyond seed spread"
    assert bench_stats.verdict([-1.0], spread=0.0).startswith("one seed")


def test_paired_comparison_pairs_by_seed_at_the_final_step():
    records = records_from({("uniform", 0): [6, 3.0], ("uniform", 1): [6, 4.0],
                            ("better", 0): [6, 2.9], ("better", 1): [6, 3.9]})
    (row,) = bench_stats.paired_comparison(records, "test_bpd")
    assert row["diffs"] == pytest.approx([-0.1, -0.1]) and row["better_seeds"] == 2
    # consistent on both seeds, but the seeds themselves differ by 0.7: within seed spread
    assert row["verdict"] == "better on every seed (paired), within seed spread"


def test_each_learned_sampler_is_paired_with_its_own_controls_only():
    curves = {(m, seed): [6, v + seed] for seed in (0, 1) for m, v in
              [("uniform", 3.0), ("adaptive", 2.8), ("adaptive-unbiased", 2.9), ("adaptive-frozen", 3.0),
               ("adaptive-mix", 2.8), ("adaptive-unbiased-final", 2.95), ("min-snr", 3.5), ("adaptive-min-snr", 3.25)]}
    rows = bench_stats.learned_vs_controls(records_from(curves), "test_bpd")
    pairs = {(r["method"], r["baseline"]): r["mean_diff"] for r in rows}
    # the importance sampler against its frozen start, against uniform, whose objective it trains, and against
    # its own end fixed from step 0; adaptive against its frozen copy; the Min-SNR-credited sampler against
    # Min-SNR with uniform t, not against uniform's objective; adaptive-mix has no controls named
    assert pairs == pytest.approx({("adaptive", "adaptive-frozen"): -0.2, ("adaptive-unbiased", "adaptive-frozen"): -0.1,
                                   ("adaptive-unbiased", "uniform"): -0.1,
                                   ("adaptive-unbiased", "adaptive-unbiased-final"): -0.05,
                                   ("adaptive-min-snr", "min-snr"): -0.25})


def test_half_budget_compares_each_method_at_half_the_steps_with_the_baselines_final_score():
    """uniform ends (step 400) at 2.0 and 2.2 on its two seeds. `fast` is at 1.5 and 1.6 by step 200 (half):
    better on both seeds by more than the spread. `level` is at 2.1 and 2.05 there: one seed lower, one
    higher, no consistent difference. A checkpoint after half the steps (300) is never the one compared,
    and a step without the score (a sparse ancestral FD) is skipped for the last one that has it."""
    records = records_from({
        ("uniform", 0): [6, 5, 4, 3, 2.0], ("uniform", 1): [6, 5, 4, 3, 2.2],
        ("fast", 0): [6, 3, 1.5, 1.0, 1.0], ("fast", 1): [6, 3, 1.6, 1.0, 1.0],
        ("level", 0): [6, 4, 2.1, 1.0, 1.0], ("level", 1): [6, 4, 2.05, 1.0, 1.0],
    })
    rows = {r["method"]: r for r in bench_stats.half_budget_comparison(records, "test_bpd_estimate")}
    assert rows["fast"]["step"] == 200 and rows["fast"]["baseline_step"] == 400
    assert rows["fast"]["diffs"] == pytest.approx([-0.5, -0.6]) and rows["fast"]["verdict"] == "better beyond seed spread"
    assert rows["level"]["diffs"] == pytest.approx([0.1, -0.15]) and rows["level"]["verdict"] == "no consistent difference"
    for r in records:
        if r["method"] == "fast" and r["step"] == 200:
            r["test_bpd_estimate"] = None
    rows = {r["method"]: r for r in bench_stats.half_budget_comparison(records, "test_bpd_estimate")}
    assert rows["fast"]["step"] == 100 and rows["fast"]["diffs"] == pytest.approx([1.0, 0.8])
    table = bench_report.half_budget_table(list(rows.values()), "test_bpd_estimate")
    assert "| linear | fast | 100 |" in table and "uniform final (step)" in table


def test_a_bound_that_rises_again_on_every_seed_is_named_with_its_best_checkpoint():
    """`overfits` is lowest at step 200 on seed 0 and 300 on seed 1, then ends 0.2 and 0.1 higher: named, with
    those steps. `wobbles` rises at the end on one seed only, `flat` by less than the tolerance: not named."""
    records = records_from({
        ("uniform", 0): [6, 5, 4, 3, 2.0], ("uniform", 1): [6, 5, 4, 3, 2.2],
        ("overfits", 0): [6, 3, 2.0, 2.1, 2.2], ("overfits", 1): [6, 3, 2.5, 2.0, 2.1],
        ("wobbles", 0): [6, 3, 2.0, 2.1, 2.2], ("wobbles", 1): [6, 3, 2.5, 2.0, 1.9],
        ("flat", 0): [6, 3, 2.0, 2.0, 2.004], ("flat", 1): [6, 3, 2.0, 2.0, 2.003],
    })
    (row,) = bench_stats.rising_curves(records)
    assert row["method"] == "overfits" and row["best_steps"] == [200, 300]
    assert row["best"] == [2.0, 2.0] and row["final"] == [2.2, 2.1]
    table = bench_report.rising_table([row])
    assert "| linear | overfits | 200, 300 | 2.000, 2.000 | 2.200, 2.100 | +0.200, +0.100 |" in table
    assert bench_stats.rising_curves(records, tolerance=0.25) == []


def test_the_train_test_gap_is_read_at_each_runs_last_checkpoint():
    """Only evaluations that carry the training images' estimate count (the last one of a run); a method
    without it (an older record) is left out rather than shown with a gap of nothing."""
    records = records_from({("uniform", 0): [6, 3, 2.0], ("uniform", 1): [6, 3, 2.2],
                            ("overfits", 0): [6, 3, 2.5], ("overfits", 1): [6, 3, 2.4], ("old", 0): [6, 3, 2.0]})
    train = {("uniform", 0): 1.9, ("uniform", 1): 2.0, ("overfits", 0): 2.0, ("overfits", 1): 2.1}
    for r in records:
        if r["step"] == 200 and (r["method"], r["seed"]) in train:
            r["train_bpd_estimate"] = train[r["method"], r["seed"]]
    rows = {r["method"]: r for r in bench_stats.train_test_gaps(records)}
    assert set(rows) == {"uniform", "overfits"}
    assert rows["overfits"]["gaps"] == pytest.approx([0.5, 0.3]) and rows["overfits"]["mean_gap"] == pytest.approx(0.4)
    assert rows["uniform"]["gaps"] == pytest.approx([0.1, 0.2]) and rows["uniform"]["steps"] == [200, 200]
    table = bench_report.gap_table([rows["overfits"]])
    assert "| linear | overfits | 200 | 2.000, 2.100 | 2.500, 2.400 | +0.500, +0.300 | 0.400 ± 0.141 |" in table


def test_schedule_answers_say_yes_only_beyond_the_spread_and_with_no_worse_bits_per_dim():
    """uniform ends at 2.0/2.2. `adaptive` is at 1.5/1.6 by half the steps and ends below min-snr on both
    seeds: yes to both questions. `adaptive-mix` is as fast but ends with worse final bits/dim (the score here
    is the bound itself, so its final 3.0 is worse): not a yes. `adaptive-frozen` is fast too, but a control,
    never a learned configuration."""
    curves = {("uniform", 0): [6, 5, 4, 3, 2.0], ("uniform", 1): [6, 5, 4, 3, 2.2],
              ("min-snr", 0): [6, 5, 4, 3, 1.9], ("min-snr", 1): [6, 5, 4, 3, 2.1],
              ("adaptive", 0): [6, 3, 1.5, 1.0, 1.0], ("adaptive", 1): [6, 3, 1.6, 1.0, 1.1],
              ("adaptive-mix", 0): [6, 3, 1.5, 1.0, 3.0], ("adaptive-mix", 1): [6, 3, 1.6, 1.0, 3.2],
              ("adaptive-frozen", 0): [6, 3, 1.0, 1.0, 0.5], ("adaptive-frozen", 1): [6, 3, 1.1, 1.0, 0.6]}
    records = records_from(curves)
    metric = "test_bpd_estimate"
    half = bench_stats.half_budget_comparison(records, metric)
    heuristic = bench_stats.paired_comparison(records, metric, "min-snr")
    paired = bench_stats.paired_comparison(records, "test_bpd")
    (answer,) = bench_stats.schedule_answers(half, heuristic, paired, [metric])
    assert [r["method"] for r in answer["half_yes"]] == ["adaptive"]
    assert answer["half_worse_bpd"] == ["adaptive-mix"]
    assert [r["method"] for r in answer["heuristic_yes"]] == ["adaptive"]
    assert bench_stats.is_learned("adaptive-min-snr") and not bench_stats.is_learned("adaptive-final")
    (line,) = bench_report.answer_lines([answer])
    assert "bits/dim no worse? **yes**: `adaptive` Δ -0.550 (-0.500, -0.600): better beyond seed spread" in line
    assert "Beats min-snr at the final checkpoint? **yes**: `adaptive`" in line and "adaptive-frozen" not in line
    assert "worse than uniform's, so not a yes: `adaptive-mix`" in line and "beats it too" not in line

    slow = records_from({k: v for k, v in curves.items() if k[0] in ("uniform", "min-snr")}
                        | {("adaptive", 0): [6, 5, 2.1, 2, 2.0], ("adaptive", 1): [6, 5, 2.1, 2, 2.3]})
    (answer,) = bench_stats.schedule_answers(bench_stats.half_budget_comparison(slow, metric),
                                             bench_stats.paired_comparison(slow, metric, "min-snr"), [], [metric])
    (line,) = bench_report.answer_lines([answer])
    assert "**no** (closest: `adaptive` Δ +0.000 (+0.100, -0.100): no consistent difference at step 200)" in line
    assert "Beats min-snr at the final checkpoint? **no**" in line and "stopped improving" not in line

    # min-snr worse than uniform too: the "yes" against it says uniform does as much
    weak = records_from(curves | {("min-snr", 0): [6, 5, 4, 3, 2.6], ("min-snr", 1): [6, 5, 4, 3, 2.9]})
    (answer,) = bench_stats.schedule_answers(bench_stats.half_budget_comparison(weak, metric),
                                             bench_stats.paired_comparison(weak, metric, "min-snr"), paired, [metric])
    assert answer["baseline_beats_heuristic"]["method"] == "uniform"
    (line,) = bench_report.answer_lines([answer])
    assert ("Beats min-snr at the final checkpoint? **yes**: `adaptive` Δ -1.700 (-1.600, -1.800): better beyond "
            "seed spread (but uniform itself beats it too, Δ -0.650 (-0.600, -0.700): better") in line

    # a run that ties uniform passes the min-snr test where uniform narrowly fails it (uniform − min-snr:
    # -0.5, -0.1, 0.0, not consistent): the "yes" says the configuration is no better than uniform
    tie = records_from({("uniform", 0): [6, 2.0], ("uniform", 1): [6, 2.2], ("uniform", 2): [6, 2.1],
                        ("min-snr", 0): [6, 2.5], ("min-snr", 1): [6, 2.3], ("min-snr", 2): [6, 2.1],
                        ("adaptive-paper", 0): [6, 2.1], ("adaptive-paper", 1): [6, 2.1], ("adaptive-paper", 2): [6, 1.9]})
    (answer,) = bench_stats.schedule_answers(bench_stats.half_budget_comparison(tie, metric),
                                             bench_stats.paired_comparison(tie, metric, "min-snr"),
                                             bench_stats.paired_comparison(tie, metric), [metric])
    assert answer["baseline_beats_heuristic"] is None
    assert [r["method"] for r in answer["heuristic_yes"]] == ["adaptive-paper"]
    (line,) = bench_report.answer_lines([answer])
    assert ("**yes**: `adaptive-paper` Δ -0.267 (-0.400, -0.200, -0.200): better beyond seed spread (but not better "
            "than uniform on this score: `adaptive-paper` Δ -0.067 (+0.100, -0.100, -0.200): no consistent "
            "difference: a lead over min-snr that is not a lead over uniform)") in line
    (line,) = bench_report.answer_lines([answer | {"heuristic_yes_not_better": []}])
    assert "not better than uniform" not in line  # the caveat comes only from that row
    # and where adaptive is better than uniform too, no caveat
    (answer,) = bench_stats.schedule_answers(bench_stats.half_budget_comparison(records, metric), heuristic,
                                             bench_stats.paired_comparison(records, metric), [metric])
    assert answer["heuristic_yes_not_better"] == []

    # uniform itself is at its final score by half its steps: the "no" says the test cannot show a speed-up
    flat = records_from({("uniform", 0): [6, 5, 2.1, 2, 2.0], ("uniform", 1): [6, 5, 2.1, 2, 2.2],
                         ("adaptive", 0): [6, 5, 2.1, 2, 2.0], ("adaptive", 1): [6, 5, 2.3, 2, 2.3]})
    (answer,) = bench_stats.schedule_answers(bench_stats.half_budget_comparison(flat, metric), [], [], [metric])
    assert answer["plateau"]["method"] == "uniform" and answer["half_yes"] == []
    (line,) = bench_report.answer_lines([answer])
    assert ("**no** (closest: `adaptive` Δ +0.100 (+0.100, +0.100): worse on every seed (paired), within seed "
            "spread at step 200) (but uniform itself is level with its final score at step 200, Δ +0.000 "
            "(+0.100, -0.100): this score had stopped improving by half the steps") in line


def test_checkpoint_table_leaves_out_a_method_a_schedule_did_not_run(tmp_path):
    """A grid where `adaptive` ran on linear only: the cosine table has no row of dashes for it."""
    records = records_from({("uniform", 0): [6, 5, 4], ("adaptive", 0): [6, 4, 3]})
    records += records_from({("uniform", 0): [7, 6, 5]}, schedule="cosine")
    for r in records:
        r["fd_ddim"] = r["test_bpd"] * 2
    settings = tiny_settings(tmp_path, methods="uniform,adaptive", schedules="linear,cosine", steps=200,
                             eval_every=100)
    table = bench_report.checkpoint_table(bench_stats.summarize(records), records, ["fd_ddim"], settings)
    linear, cosine = table.split("**cosine**")
    assert "| adaptive |" in linear and "| uniform |" in cosine
    assert "| adaptive |" not in cosine


# ----------------------------------------------------------------------------- the grid end to end

def tiny_settings(out, **overrides):
    options = dict(methods="uniform", schedules="linear", seeds=1, steps=10, eval_every=5, T=10, batch_size=16,
                   fd_samples=32, ddim_steps=3, device="cpu", progress=False, warmup=2, ema_decay=0.9)
    if "flow" not in str(overrides.get("objective", "")):
        options["fd_samplers"] = "ddim"  # the ancestral FD where a test asks for it
    options.update(overrides)
    return bench.make_settings(out, **options)


def stand_in_network(path, with_flag=True):
    """A tiny TorchScript 'Inception': 0..255 RGB images → 12 pooled features."""
    class WithFlag(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)
            return f if return_features else f.sum(1, keepdim=True)

    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)

    torch.jit.save(torch.jit.script(WithFlag() if with_flag else Plain()), str(path))
    return path


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def test_torchscript_features_stand_in(tmp_path):
    x = load_data("digits").test
    for flag in (True, False):
        net = TorchScriptFeatures(stand_in_network(tmp_path / f"net{flag}.pt", flag), bins=17)
        f = net(x)
        assert f.shape == (len(x), 12)
        assert frechet_distance_features(f, net(x.clone())) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(UserError, match="TorchScript"):
        TorchScriptFeatures(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a network")
    with pytest.raises(UserError, match="TorchScript"):
        TorchScriptFeatures(tmp_path / "junk.pt")


def test_tiny_grid_outputs_resume_and_skip(tmp_path, classifier_cache, monkeypatch):
    out = tmp_path / "bench"
    shutil.copytree(classifier_cache, out / "classifier")
    inception = stand_in_network(tmp_path / "inception.pt")
    settings = tiny_settings(out, inception=str(inception), final_exact=True)

    original = train_module.Trainer.train_step

    def crash_at_7(self):
        if self.step == 7:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(train_module.Trainer, "train_step", crash_at_7)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(settings)
    monkeypatch.setattr(train_module.Trainer, "train_step", original)
    first = bench.run_bench(settings)
    assert first["resumed"] == 1 and first["trained"] == 0

    run = out / "runs" / "uniform__linear__s0"
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert [r["step"] for r in records] == [0, 5, 10]
    for r in records:  # --fd-samplers ddim: DDIM's FD and FID, each with its KID, no ancestral one
        assert {"method", "schedule", "seed", "step", "train_seconds", "test_bpd", "fd_ddim", "fid_ddim",
                "kid_ddim", "kid_ddim_std", "kidfid_ddim", "kidfid_ddim_std"} <= set(r)
        assert not {"fd", "fid", "fd_ddpm", "fid_ddpm", "kid_ddpm"} & set(r)
    assert records[0]["kid_ddim"] is None and all(r["kid_ddim_std"] > 0 for r in records[1:])
    assert records[0]["fd_ddim"] is None and all(r["fd_ddim"] > 0 and r["fid_ddim"] >= 0 for r in records[1:])
    assert records[-1]["bpd_method"] == "exact"
    # with T = 10 the estimate computes every term exactly, with the same noise as the exact bound
    assert records[-1]["test_bpd_estimate"] == pytest.approx(records[-1]["test_bpd"], rel=1e-9)
    # the last checkpoint's estimate on as many training images: the trainer's estimator on those images
    cfg = bench.run_config(settings, "uniform", "linear", 0)
    on_train = bench.estimate_checkpoint(run / "checkpoints" / "step_00000010", cfg, "cpu", split="train")
    assert records[-1]["train_bpd_estimate"] == on_train != records[-1]["test_bpd_estimate"]
    assert all("train_bpd_estimate" not in r for r in records[:-1])
    assert results["classifier"]["cached"] and results["classifier"]["test_accuracy"] > 0.95
    for name in ("summary.csv", "results.csv", "time_to_quality.csv", "paired.csv"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["step"] for r in rows} == {"0", "5", "10"} and "fd_ddim_mean" in rows[0] and "test_bpd_mean" in rows[0]
    report = (out / "report.md").read_text()
    assert "Test bits/dim" in report and "linear 10 (exact)" in report
    assert "### The bound on training images at the last checkpoint" in report
    # the classifier's accuracy is stated (its last digit depends on the thread count: 98.7-99.0%)
    assert float(re.search(r"test accuracy: \*\*([0-9.]+)%\*\*", report).group(1)) > 95
    assert (out / "curves_fd_ddim.png").stat().st_size > 0 and (out / "curves_fid_ddim.png").stat().st_size > 0
    assert not (out / "curves_fd_ddpm.png").exists() and "FD DDPM" not in report
    assert "KID DDIM @10" in report and "- **KID**: kernel inception distance" in report  # beside every FD
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000010"]  # scored ones pruned, last kept
    final = records[-1]
    assert first["headline"].splitlines() == [  # what the terminal shows
        "linear, step 10 (mean ± std over seeds; lower is better):",
        f"  uniform            bits/dim {final['test_bpd']:.3f} ± 0.000; FD DDIM {final['fd_ddim']:.1f} ± 0.0; "
        f"KID DDIM {final['kid_ddim']:.2f} ± 0.00; FID DDIM {final['fid_ddim']:.1f} ± 0.0; "
        f"KID-Inception DDIM {final['kidfid_ddim']:.4f} ± 0.0000"]

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "train", must_not_train)
    metrics_before = (run / "metrics.jsonl").read_text()
    second = bench.run_bench(settings)
    assert second["skipped"] == 1 and second["trained"] == second["resumed"] == 0
    assert (run / "metrics.jsonl").read_text() == metrics_before
    assert json.loads((out / "results.json").read_text())["records"] == records


def test_a_run_folder_with_other_settings_is_refused_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    old = bench.run_config(tiny_settings(out, steps=4, eval_every=4), "uniform", "linear", 0)
    Path(old.out).mkdir(parents=True)
    old.save(Path(old.out) / "config.json")
    assert bench.run_state(old) == "new"  # a config but no checkpoint: start again
    legacy = {k: v for k, v in old.to_dict().items() if k != "objective"}  # written before the field existed
    (Path(old.out) / "config.json").write_text(json.dumps(legacy))
    assert bench.run_state(old) == "new"  # every run then was DDPM: the same settings
    old.save(Path(old.out) / "config.json")
    new_settings = tiny_settings(out, steps=6, eval_every=3)
    with pytest.raises(UserError, match="steps: 4 -> 6"):
        bench.run_state(bench.run_config(new_settings, "uniform", "linear", 0))
    monkeypatch.setattr(bench.runner, "build_scorers", lambda *a: pytest.fail("work started"))
    with pytest.raises(UserError, match="use another --out"):
        bench.run_bench(new_settings)


def test_estimate_checkpoint_reproduces_the_trainers_estimate(tmp_path):
    from timestep_sampling.checkpoint import latest_checkpoint
    from timestep_sampling.config import make_config

    cfg = make_config(out=str(tmp_path / "run"), steps=3, T=50, batch_size=8, eval_every=0, final_exact=False,
                      num_samples=0, eval_exact_below=2, eval_strata=4, device="cpu", warmup=1)
    logged = train_module.train(cfg, progress=False)["test_bpd"]
    assert bench.estimate_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"), cfg, "cpu") == \
        pytest.approx(logged, rel=1e-6)


@pytest.mark.parametrize("option, bad, expected", [("methods", "uniform,unifrom", "valid choices: adaptive"),
                                                   ("schedules", "linear,cosinus", "valid choices: cosine")])
def test_unknown_names_are_user_errors_listing_the_valid_ones(tmp_path, option, bad, expected):
    with pytest.raises(UserError, match=expected):
        bench.make_settings(tmp_path, **{option: bad})


def test_report_only_needs_a_records_folder(tmp_path):
    with pytest.raises(UserError, match="add --records FOLDER"):
        bench.make_settings(tmp_path, report_only=True)


def test_cli_bench_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b"), "--methods", "uniform,bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'bogus'") and "valid choices" in err and err.count("\n") == 1
    assert main(["bench", "--out", str(tmp_path / "b"), "--inception", str(tmp_path / "none.pt")]) == 2
    assert "nothing is downloaded" in capsys.readouterr().err


# ----------------------------------------------------------------------------- records across invocations

def test_records_fill_a_grid_across_invocations_and_the_report_covers_them_all(tmp_path, classifier_cache,
                                                                               monkeypatch):
    """Two invocations into different output folders share one records folder: the second trains only the
    cells the first did not record, reports every recorded run, and a frozen-final cell takes the learned
    run's last Beta."""
    records = tmp_path / "records"
    for name in ("a", "b"):
        shutil.copytree(classifier_cache, tmp_path / name / "classifier")
    first = bench.run_bench(tiny_settings(tmp_path / "a", records=str(records), methods="uniform"))
    assert first["trained"] == 1 and sorted(p.name for p in records.iterdir()) == ["uniform__linear__s0.json"]
    kept = json.loads((records / "uniform__linear__s0.json").read_text())
    assert {"commit", "threads", "machine", "date"} <= set(kept["provenance"])
    assert [e["step"] for e in kept["evals"]] == [0, 5, 10] and kept["sampler"] is None

    learned = "adaptive:update_every=2+none"
    second = bench.run_bench(tiny_settings(tmp_path / "b", records=str(records), methods=f"uniform,{learned}"))
    assert second["recorded"] == 1 and second["trained"] == 1
    assert not (tmp_path / "b" / "runs" / "uniform__linear__s0").exists()  # taken from the record
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert {r["method"] for r in results["records"]} == {"uniform", learned}
    track = bench.load_record(records / f"{bench.run_name(learned, 'linear', 0)}.json")["sampler"]
    assert track["alpha"] > 0 and track["tv_from_start"] > 0 and len(track["density"][0]) == 10

    # --report-only trains nothing: an unrecorded cell is named and left out, the recorded ones are reported.
    # With a step-cost file it gives each method's cost beside the records' own steps/s.
    shutil.copytree(classifier_cache, tmp_path / "e" / "classifier")
    cost = tmp_path / "step_cost.json"
    cost.write_text(json.dumps({"objectives": {"ddpm": {"methods": {"uniform": {"ratio": 1.0},
                                                                   "p2": {"ratio": 1.07}}}}}))
    report = bench.run_bench(tiny_settings(tmp_path / "e", records=str(records), methods="uniform,p2",
                                           report_only=True, step_cost=str(cost)))
    assert report["trained"] == 0 and report["recorded"] == 1 and report["missing"] == 1
    assert not (tmp_path / "e" / "runs").exists() and not (records / "p2__linear__s0.json").exists()
    text = (tmp_path / "e" / "report.md").read_text()
    assert "speed-up (compute)" in text and "| p2 | 0 | – | – | – | 1.07 |" in text
    rate = kept["cost"]["steps_per_sec"]
    assert f"| uniform | 0 | – | – | {rate:.1f}–{rate:.1f} (1) | 1.00 |" in text
    cost.write_text(json.dumps({"objectives": {"ddpm": {"methods": {"uniform": 1.0}}}}))
    with pytest.raises(UserError, match="not a step-cost file"):
        bench.run_bench(tiny_settings(tmp_path / "e", records=str(records), methods="uniform",
                                      report_only=True, step_cost=str(cost)))

    # A preset whose defaults changed since its record was made is another method: run again.
    same = tiny_settings(tmp_path / "d", methods="uniform")
    uniform = bench.method_fingerprint("uniform", "linear", 10)
    assert bench_records.read_record(records, "uniform__linear__s0", same, uniform)["fingerprint"] == uniform
    assert bench_records.read_record(records, "uniform__linear__s0", same, uniform + " changed") is None

    # Settings that change what a run means (here the step count) neither reuse nor mix in the records.
    other = tiny_settings(tmp_path / "c", records=str(records), methods="uniform", steps=6, eval_every=3)
    assert bench_records.read_record(records, "uniform__linear__s0", other) is None
    assert bench_records.all_records(records, other) == []


def test_frozen_final_method_is_the_learned_runs_last_beta(tmp_path):
    settings = tiny_settings(tmp_path, methods="uniform")
    folder = tmp_path / "runs" / bench.run_name("adaptive", "linear", 0)
    folder.mkdir(parents=True)
    densities = [{"step": 0, "density": [0.1] * 10}, {"step": 5, "density": [0.2] * 5 + [0.0] * 5}]
    (folder / train_module.DENSITY_LOG).write_text("".join(json.dumps(d) + "\n" for d in densities))
    final = {"alpha_mean": 0.5, "alpha_std": 0.0, "beta_mean": 1.25, "beta_std": 0.0}
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "sampler": final}) + "\n")
    assert bench.frozen_final_method(settings, "adaptive-final", "linear", 0) == "beta:a=0.5,b=1.25+none"
    assert bench.sampler_summary(folder)["tv_from_start"] == pytest.approx(0.5)
    # a learned sampler trained with a weighting or importance weights is frozen with them
    for learned, frozen in [("adaptive-min-snr", "beta:a=0.5,b=1.25+min-snr"),
                            ("adaptive-unbiased", "beta:a=0.5,b=1.25,mix=0.3,unbiased=True+none"),
                            ("flow-adaptive-min-snr", "flow-beta:a=0.5,b=1.25+flow-min-snr")]:
        sampler = make_method(learned, NoiseSchedule("linear", T=10))[0]
        assert sampler.frozen_spec({"alpha": 0.5, "beta": 1.25}, *method_specs(learned)) == frozen
        fixed = make_method(frozen, NoiseSchedule("linear", T=10))[0]
        assert fixed.unbiased == ("unbiased" in frozen)
    with pytest.raises(UserError, match="run adaptive-paper first"):
        bench.frozen_final_method(settings, "adaptive-paper-final", "linear", 0)


@pytest.mark.parametrize("learned", ["adaptive-variance", "adaptive-unbiased", "adaptive-mix", "flow-adaptive-variance"])
def test_a_learned_sampler_frozen_keeps_its_uniform_floor_and_so_its_distribution(learned):
    """The fixed sampler its frozen_spec names draws from the learned sampler's own distribution at that
    state, floor included (without the floor an importance sampler's weights are unbounded), and its
    importance weights are the learned sampler's."""
    schedule = NoiseSchedule("linear", T=1000)
    sampler = make_method(learned, schedule)[0]
    if sampler.policy is None:
        sampler._ensure_policy(torch.zeros(2, 1, 4, 4))
    with torch.no_grad():  # a state away from the start
        sampler.policy.raw.copy_(torch.tensor([-0.4, 1.2]))
    for cache in ("_pmf_cache", "_ab_cache"):
        setattr(sampler, cache, None)
    alpha, beta = (float(v) for v in sampler.concentrations())
    spec = sampler.frozen_spec({"alpha": alpha, "beta": beta}, *method_specs(learned))
    assert f",mix={sampler.uniform_mix:g}" in spec
    fixed = make_method(spec, schedule)[0]
    assert fixed.unbiased == sampler.unbiased
    if learned.startswith("flow-"):
        t = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
        assert torch.allclose(fixed.density(t), sampler.density(t), rtol=1e-5)
        return
    assert torch.allclose(fixed.probabilities(), sampler.probabilities(), rtol=1e-5, atol=1e-12)
    t = torch.arange(1000)
    assert torch.allclose(fixed.importance_weights(t), sampler.importance_weights(t), rtol=1e-5)
    if sampler.unbiased:
        assert float(fixed.importance_weights(t).max()) <= 2 / sampler.uniform_mix + 1e-6


DOCS_BENCH = Path(__file__).parents[1] / "docs" / "bench"


@pytest.mark.parametrize("path", sorted(DOCS_BENCH.glob("*/*-final__*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_recorded_final_control_is_what_its_learned_sampler_freezes_to_now(tmp_path, path):
    """The `-final` cells of docs/bench were trained as the spec the bench made then from the learned run's
    end; the sampler's `frozen_spec`, reached through the bench from the (compact) records, makes the same.
    A band preset renamed since (adaptive-bands -> adaptive-bands-coarse) adds its own options before them."""
    final = bench.load_record(path)
    grid = {**bench_records.LEGACY_GRID, **final["grid"]}
    flow = grid["objective"] == "flow"
    settings = bench.make_settings(tmp_path, methods=final["method"], schedules=None if flow else final["schedule"],
                                   records=str(path.parent), **grid)
    spec = bench.frozen_final_method(settings, final["method"], final["schedule"], final["seed"])
    if ",mix=" in spec and ",mix=" not in final["trained_as"]:
        # made before a Beta's floor was carried over (2026-12-05): another control, left out of the reports
        floor = make_method(final["method"].removesuffix("-final"), NoiseSchedule("linear", T=settings.T))[0].uniform_mix
        assert spec == final["trained_as"].replace(",unbiased", f",mix={floor:g},unbiased")
        assert not final_is_current(final, settings)
        return
    assert final_is_current(final, settings)
    if "theta=" in spec:
        source_spec = method_specs(final["method"].removesuffix("-final"))[0]
        assert spec.startswith(source_spec) and final["trained_as"].startswith("adaptive-bands:lr=0,theta=")
        assert spec.split("lr=0,", 1)[1] == final["trained_as"].split("lr=0,", 1)[1]
    else:
        assert spec == final["trained_as"]


def test_a_density_track_is_recorded_compact_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[481.0, 67.6, 0.892, 0.892, 0.892, 1e-05, 0.0, 0.0],
            [float(f"{v:.3g}") for v in rng.lognormal(0.0, 3.0, size=8)]]  # as sampler_summary rounds them
    packed = bench_records.pack_density(rows)
    assert packed[0] == "481 67.6 0.892*3 1e-05 0*2"
    assert bench_records.unpack_density(packed) == rows
    assert bench_records.unpack_density(rows) == rows  # records written before: lists of numbers
    settings = tiny_settings(tmp_path / "out", records=str(tmp_path / "rec"))
    track = {"steps": [0, 5], "density": rows, "tv_from_start": 0.5, "alpha": None, "beta": None}
    path = bench_records.write_record(settings.records, "x__linear__s0", settings,
                                      {"method": "x", "schedule": "linear", "seed": 0, "sampler": track,
                                       "evals": [{"method": "x", "schedule": "linear", "seed": 0, "step": 5,
                                                  "bpd_method": "estimate", "test_bpd": 3.0}]})
    assert json.loads(path.read_text())["sampler"]["density"] == packed
    assert bench_records.read_record(settings.records, "x__linear__s0", settings)["sampler"] == track
    old = json.loads(path.read_text())
    old["sampler"]["density"] = rows
    path.write_text(json.dumps(old, indent=1))
    assert bench_records.read_record(settings.records, "x__linear__s0", settings)["sampler"] == track


def relative_imports(package: Path) -> dict[str, set[str]]:
    """module → the modules of the same package it imports (`from .x import y`, `from . import x`, at any
    depth of the file, under `if TYPE_CHECKING:` too); a name of the package itself counts as __init__."""
    modules = {p.stem for p in package.glob("*.py")}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name if a.name in modules else "__init__" for a in node.names)
        graph[name] = deps - {name}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_bench_package_has_no_import_cycle(tmp_path):
    package = Path(bench.__file__).parent
    graph = relative_imports(package)
    assert {"settings", "records", "stats", "report", "scoring", "tracks", "runner"} <= set(graph)
    assert import_cycle(graph) is None, graph
    assert "__init__" not in set().union(*graph.values())  # no module reaches back through the package
    assert "settings" in graph["report"] and "settings" in graph["runner"]  # both take BenchSettings from there
    # no module of the bench reaches into a sampler's module: a sampler says how it freezes (frozen_spec)
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert not (node.module or "").startswith("samplers"), f"{path.name} imports ..{node.module}"
    # the check finds a cycle hidden behind TYPE_CHECKING, as the old bench / bench_report pair had
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from .b import run\n")
    (fake / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import Settings\n")
    (fake / "c.py").write_text("from . import a\n")
    assert import_cycle(relative_imports(fake)) == ["a", "b", "a"]
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_bench_settings_cannot_override_the_methods_they_name(tmp_path):
    """Records and plots name a run by its method, so a sampler or weighting may not silently replace it."""
    with pytest.raises(UserError, match="cannot override sampler; name the pair as a method"):
        bench.make_settings(tmp_path, methods="uniform", extra={"sampler": "adaptive"})


def test_flow_grid_end_to_end_with_records_and_final_beta(tmp_path):
    """`bench --objective flow`: rectified-flow runs filed under "flow", scored by the ODE likelihood and
    the FD of Euler samples, compared with flow-uniform; the learned Beta's track is recorded and its
    final Beta, frozen from step 0, trains as a flow-beta."""
    records = tmp_path / "records"
    learned = "flow-adaptive:update_every=2+flow-none"
    # few ODE steps and test images, so that three flow runs take seconds
    objective = "flow:eval_images=8,eval_steps=1,final_steps=2,probes=1"
    settings = tiny_settings(tmp_path / "a", schedules=None, objective=objective, records=str(records),
                             methods=f"flow-uniform,flow-logit-normal,{learned},{learned}-final")
    assert settings.samplers == ("euler", "heun")  # a flow's FD: Euler's and Heun's samples
    result = bench.run_bench(settings)
    assert result["trained"] == 4
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert {r["schedule"] for r in results["records"]} == {"flow"}
    final = [r for r in results["records"] if r["step"] == 10]
    assert all(r["bpd_method"] == "exact" and r["fd_euler"] > 0 and 0 < r["test_bpd"] < 20 for r in final)
    assert all(r["fd_heun"] > 0 and r["fd_heun"] != r["fd_euler"] for r in final)
    config = json.loads((tmp_path / "a" / "runs" / f"{bench.run_name(learned, 'flow', 0)}" / "config.json").read_text())
    assert config["objective"] == objective
    track = bench.load_record(records / f"{bench.run_name(learned, 'flow', 0)}.json")["sampler"]
    assert track["continuous"] and len(track["density"][0]) == 100 and track["tv_from_start"] > 0
    assert "mass_t_below_0.1" in track and track["alpha"] > 0
    kept = json.loads((records / f"{bench.run_name(learned + '-final', 'flow', 0)}.json").read_text())
    assert kept["trained_as"] == f"flow-beta:a={track['alpha']:.6g},b={track['beta']:.6g}+flow-none"
    report = (tmp_path / "a" / "report.md").read_text()
    assert "Paired comparison with flow-uniform" in report and "probability-flow ODE" in report
    assert "Euler, 3 steps" in report and "Heun, 3 steps" in report
    # the flow's strongest heuristic is SD3's default sampler, not Min-SNR
    assert "## Paired comparison with flow-logit-normal, SD3's default" in report
    assert "Paired comparison with min-snr" not in report and "Beats min-snr" not in report
    assert re.search(r"- \*\*flow\*\*, FD of Euler samples .* Beats flow-logit-normal at the final checkpoint\? "
                     r"\*\*(yes|no)", report)


def test_flow_bench_refuses_mixed_kinds(tmp_path):
    with pytest.raises(UserError, match="add --objective flow"):
        tiny_settings(tmp_path, methods="uniform,flow-uniform")
    with pytest.raises(UserError, match="takes flow-... methods"):
        tiny_settings(tmp_path, schedules=None, objective="flow", methods="uniform")
    with pytest.raises(UserError, match="no noise schedule"):
        tiny_settings(tmp_path, objective="flow", methods="flow-uniform")


def test_the_report_leaves_out_records_of_what_a_name_used_to_mean(tmp_path):
    """A record whose method has since changed its defaults (another fingerprint) is not reported under the
    name's new meaning, nor is the `-final` cell built from it; records of unchanged methods stay."""
    settings = tiny_settings(tmp_path / "out", methods="uniform,adaptive", records=str(tmp_path / "rec"))
    now = {m: bench.method_fingerprint(m, "linear", settings.T) for m in ("uniform", "adaptive")}
    cells = [("uniform", now["uniform"]), ("adaptive", now["adaptive"] + " (old defaults)"), ("adaptive-final", None)]
    for method, fingerprint in cells:
        bench_records.write_record(settings.records, bench.run_name(method, "linear", 0), settings,
                                   {"method": method, "schedule": "linear", "seed": 0, "fingerprint": fingerprint,
                                    "sampler": None, "evals": [{"method": method, "schedule": "linear", "seed": 0,
                                                                "step": 5, "bpd_method": "estimate"}]})
    notes = []
    kept = bench.current_records(settings, say=notes.append)
    assert [r["method"] for r in kept] == ["uniform"]
    assert notes == ["left out of the report: 2 record(s) made when their method meant something else "
                     "(adaptive, adaptive-final)"]


def test_a_run_folder_trained_when_its_method_meant_something_else_is_not_reused(tmp_path):
    """A preset whose defaults changed trains another sampler: its old, finished folder must not be taken
    for the new method's run."""
    from timestep_sampling.config import make_config

    cfg = make_config(out=str(tmp_path / "run"), method="adaptive-bands", steps=3, T=50, device="cpu")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "run" / "bench.json").write_text(json.dumps({"fingerprint": "BandPolicySampler(old) + none"}))
    assert bench.run_state(cfg, "BandPolicySampler(old) + none") == "new"
    with pytest.raises(UserError, match="meant BandPolicySampler\\(old\\)"):
        bench.run_state(cfg, "BandPolicySampler(new) + none")
    assert bench.run_state(cfg) == "new"  # a -final cell: its spec (in config.json) says what it trains


def test_only_seeds_runs_just_those_seeds(tmp_path, capsys):
    settings = bench.make_settings(tmp_path, methods="uniform", schedules="linear", only_seeds=(2, 0))
    assert settings.seed_list == [2, 0] and [c[2] for c in settings.grid()] == [2, 0]
    assert main(["bench", "--out", str(tmp_path / "b"), "--only-seeds", "two"]) == 2
    assert "--only-seeds takes comma-separated integers" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the FD of several samplers

def test_fd_samplers_presets_and_the_steps_of_the_ancestral_fd(tmp_path, capsys):
    full = bench.make_settings(tmp_path)
    assert full.samplers == ("ddim", "ddpm")
    assert full.fd_steps("ddim") == [500, 1000, 1500, 2000, 2500, 3000]
    assert full.fd_steps("ddpm") == [1000, 2000, 3000]  # about three checkpoints, the last among them
    assert bench.make_settings(tmp_path, fd_ddpm_every=1500).fd_steps("ddpm") == [1500, 3000]
    assert bench.make_settings(tmp_path, steps=10000, eval_every=500).fd_steps("ddpm") == [3500, 7000, 10000]
    assert bench.make_settings(tmp_path, quick=True).samplers == ("ddim",)  # ancestral sampling does not fit --quick
    assert bench.make_settings(tmp_path, quick=True, fd_samplers="ddim,ddpm").fd_steps("ddpm") == [200, 400]
    assert bench.make_settings(tmp_path, objective="flow").samplers == ("euler", "heun")
    assert bench.make_settings(tmp_path, objective="flow", quick=True).samplers == ("euler", "heun")
    with pytest.raises(UserError, match="valid choices: ddim, ddpm"):
        bench.make_settings(tmp_path, fd_samplers="ddim,euler")
    with pytest.raises(UserError, match="valid choices: euler, heun"):
        bench.make_settings(tmp_path, objective="flow", fd_samplers="ddpm")
    with pytest.raises(UserError, match="add ddpm to --fd-samplers"):
        bench.make_settings(tmp_path, fd_samplers="ddim", fd_ddpm_every=1000)
    assert main(["bench", "--out", str(tmp_path / "b"), "--fd-samplers", "ddim,ancestral"]) == 2
    assert "valid choices: ddim, ddpm" in capsys.readouterr().err


def test_fd_ddpm_scores_ancestral_samples_and_a_record_gains_it_from_its_checkpoints(tmp_path, classifier_cache,
                                                                                      monkeypatch):
    """A grid scored with DDIM alone, then asked for the ancestral FD as well: the record is not trained again
    but given fd_ddpm from the run's checkpoints, and fd_ddpm is the FD of ddpm_sample's images (the same
    starting seed), not of DDIM's."""
    from timestep_sampling.evaluate import load_model
    from timestep_sampling.sampling import ddpm_sample

    out, records = tmp_path / "out", tmp_path / "records"
    shutil.copytree(classifier_cache, out / "classifier")
    first = bench.run_bench(tiny_settings(out, records=str(records), keep_checkpoints=True))
    path = records / "uniform__linear__s0.json"
    before = bench.load_record(path)
    assert first["trained"] == 1 and all("fd_ddpm" not in e for e in before["evals"])

    calls = []
    for name in ("ddim_sample", "ddpm_sample"):
        original = getattr(bench.scoring, name)
        monkeypatch.setattr(bench.scoring, name,
                            lambda *a, _name=name, _f=original, **k: calls.append(_name) or _f(*a, **k))
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    settings = tiny_settings(out, records=str(records), keep_checkpoints=True, fd_samplers="ddim,ddpm")
    assert settings.fd_steps("ddpm") == [5, 10]
    second = bench.run_bench(settings)
    assert second["recorded"] == 1 and second["filled"] == 1 and second["incomplete"] == 0
    assert calls == ["ddpm_sample", "ddpm_sample"]  # one checkpoint each; DDIM's FD was kept, not redone
    after = bench.load_record(path)
    assert [e.get("fd_ddpm") is not None for e in after["evals"]] == [False, True, True]
    assert [e["fd_ddim"] for e in after["evals"]] == [e["fd_ddim"] for e in before["evals"]]
    assert after["provenance"] == before["provenance"]
    assert after["scores_added"][0]["metrics"] == ["fd_ddpm", "kid_ddpm"]  # the KID comes with its FD

    model, schedule, cfg, meta = load_model(out / "runs" / "uniform__linear__s0" / "checkpoints" / "step_00000010")
    images = ddpm_sample(model, schedule, (32,) + tuple(meta["data_shape"]), generator=torch.Generator().manual_seed(0),
                         variance=cfg.variance).clamp(-1, 1)
    scorer = bench.build_scorers(settings, "cpu", out)[0][0]
    assert after["evals"][-1]["fd_ddpm"] == pytest.approx(scorer(images), rel=1e-6)
    assert after["evals"][-1]["fd_ddpm"] != pytest.approx(after["evals"][-1]["fd_ddim"], rel=1e-3)
    report = (out / "report.md").read_text()
    assert "FD DDPM @10" in report and "FD DDIM @10" in report and "Table 1" in report
    assert "FD DDPM (DDPM ancestral sampling through all T = 10 steps, the run's own variance) at steps 5, 10" in report
    assert (out / "runs" / "uniform__linear__s0" / "samples" / "ddpm_step_00000010.png").is_file()


def test_records_with_only_fd_still_report_as_the_ddim_fd(tmp_path, classifier_cache):
    """Records made when the bench scored DDIM alone hold `fd`: they are read as fd_ddim (a flow's as
    fd_euler), a report-only run reports them, and they are seen as lacking the ancestral FD."""
    assert bench.records.legacy_scores({"schedule": "flow", "fd": 3.0, "fid": 4.0}) == {"schedule": "flow",
                                                                                         "fd_euler": 3.0,
                                                                                         "fid_euler": 4.0}
    out = tmp_path / "out"
    shutil.copytree(classifier_cache, out / "classifier")
    settings = tiny_settings(out, records=str(tmp_path / "rec"), report_only=True, fd_samplers="ddim,ddpm")
    evals = [{"method": "uniform", "schedule": "linear", "seed": 0, "step": step, "train_seconds": step / 10,
              "test_bpd": bpd, "bpd_method": "estimate", "test_bpd_estimate": bpd, "fd": fd}
             for step, bpd, fd in ((0, 6.0, None), (5, 4.0, 30.0), (10, 3.5, 20.0))]
    bench_records.write_record(settings.records, "uniform__linear__s0", settings,
                               {"method": "uniform", "schedule": "linear", "seed": 0, "evals": evals, "sampler": None})
    raw = json.loads((tmp_path / "rec" / "uniform__linear__s0.json").read_text())
    assert raw["evals"][-1]["fd"] == 20.0 and "fd_ddim" not in raw["evals"][-1]  # the old form, as written then
    kept = bench.read_record(settings.records, "uniform__linear__s0", settings)
    assert [e.get("fd_ddim") for e in kept["evals"]] == [None, 30.0, 20.0] and "fd" not in kept["evals"][-1]
    result = bench.run_bench(settings)
    assert result["recorded"] == 1 and result["incomplete"] == 1 and result["trained"] == 0
    assert "FD DDIM 20.0 ± 0.0" in result["headline"] and "DDPM" not in result["headline"]
    report = (out / "report.md").read_text()
    assert "## FD of DDIM samples (digit-classifier features)" in report and "| 20.0 ± 0.0 |" in report
    assert "FD DDIM (DDIM, 3 steps, η = 0) at steps 5, 10" in report
    assert "1 records lacking a score these settings compute" in report


def test_a_shorter_run_of_the_same_cell_lends_its_score_only_when_it_is_the_runs_beginning(tmp_path, classifier_cache):
    """A 10-step grid with the ancestral FD at its end only, and the same cell trained for 5 steps with it at
    step 5: the 5-step run is the 10-step run's beginning (equal bits/dim and DDIM FD at steps 5), so the long
    record gains its fd_ddpm at step 5, noted as added. A prefix that trained otherwise (another seed's
    numbers) or under other settings is refused with one line, and the record is left alone."""
    import subprocess
    import sys

    long_records, short_records = tmp_path / "long", tmp_path / "short"
    for out in ("out10", "out5"):
        shutil.copytree(classifier_cache, tmp_path / out / "classifier")
    bench.run_bench(tiny_settings(tmp_path / "out10", records=str(long_records), fd_samplers="ddim,ddpm",
                                  fd_ddpm_every=10))
    bench.run_bench(tiny_settings(tmp_path / "out5", records=str(short_records), steps=5, fd_samplers="ddim,ddpm"))
    name = "uniform__linear__s0.json"
    long, short = bench.load_record(long_records / name), bench.load_record(short_records / name)
    assert [e.get("fd_ddpm") is not None for e in long["evals"]] == [False, False, True]
    assert short["evals"][-1]["step"] == 5 and short["evals"][-1]["fd_ddpm"] > 0

    merged, added = bench_records.scores_from_prefix(long, short)
    assert added == ["fd_ddpm"] and merged["evals"][1]["fd_ddpm"] == short["evals"][-1]["fd_ddpm"]
    assert [e.get("fd_ddpm") is not None for e in merged["evals"]] == [False, True, True]
    assert merged["scores_added"][-1]["step"] == 5 and merged["provenance"] == long["provenance"]
    assert bench_records.scores_from_prefix(merged, short)[1] == []  # nothing left to add

    other = json.loads(json.dumps(short))
    other["evals"][-1]["test_bpd_estimate"] *= 1 + 1e-6
    with pytest.raises(UserError, match="not this run's beginning: test_bpd_estimate at step 5"):
        bench_records.scores_from_prefix(long, other)
    other = {**short, "grid": {**short["grid"], "batch_size": 32}}
    with pytest.raises(UserError, match=r"other settings \(batch_size\)"):
        bench_records.scores_from_prefix(long, other)

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scores_from_prefix.py"
    done = subprocess.run([sys.executable, str(script), str(long_records), str(short_records)],
                          capture_output=True, text=True, check=True)
    assert "fd_ddpm at step 5 added" in done.stdout
    assert bench.load_record(long_records / name)["evals"] == merged["evals"]


def test_every_committed_grid_can_be_reported_again_from_its_records(tmp_path, monkeypatch):
    """benchmarks/rebuild_reports.py knows each records folder under docs/bench and its settings: the settings
    it gives select every record there (none is left out as made under other settings)."""
    import importlib.util

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run as a script: grids.py beside it
    spec = importlib.util.spec_from_file_location("rebuild_reports", benchmarks / "rebuild_reports.py")
    rebuild = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rebuild)
    folders = {p.parent.name for p in DOCS_BENCH.glob("*/*.json")}
    assert folders <= set(rebuild.GRIDS)  # a grid may be declared before its first record
    for grid in sorted(folders):
        options = rebuild.GRIDS[grid]
        folder = DOCS_BENCH / grid
        methods, schedules, seeds = rebuild.recorded_cells(folder)
        flow = options.get("objective") == "flow"
        settings = bench.make_settings(tmp_path, methods=methods, schedules=None if flow else schedules, seeds=seeds,
                                       records=str(folder), report_only=True, **options)
        assert len(bench_records.all_records(folder, settings)) == len(list(folder.glob("*.json"))), grid


@pytest.mark.parametrize("mangle", [
    lambda r: r.update(evals="not a list"),
    lambda r: r["evals"][0].pop("method"),
    lambda r: r["evals"][-1].update(test_bpd="2.9"),
    lambda r: r.update(seed="0"),
    lambda r: r.update(evals=[]),
], ids=["evals a string", "an eval without its cell", "a score as text", "seed as text", "no evals"])
def test_a_malformed_record_is_skipped_and_named_not_a_traceback(mangle, tmp_path):
    # a hand-edited record must neither reach the report's arithmetic nor vanish without a word
    source = Path(__file__).parents[1] / "docs" / "bench" / "ancestral3k" / "uniform__linear__s0.json"
    good = json.loads(source.read_text())
    assert bench.load_record(source) is not None
    mangle(good)
    bad = tmp_path / "uniform__linear__s0.json"
    bad.write_text(json.dumps(good))
    assert bench.load_record(bad) is None
    said = []
    assert bench_records.all_records(tmp_path, tiny_settings(tmp_path / "out", methods="uniform"), said.append) == []
    assert len(said) == 1 and "uniform__linear__s0.json" in said[0], said
