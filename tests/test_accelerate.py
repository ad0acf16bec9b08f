"""The samplers in a Hugging Face Accelerate loop (examples/train_accelerate.py): gradient accumulation, two
processes, save_state/load_state, bf16; and what observe() does on a micro-step whose optimiser step
Accelerate skips (the credit: counts and may update, K counting micro-steps; the paper's reward: nothing)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

from timestep_sampling import NoiseSchedule, make_sampler  # noqa: E402
from timestep_sampling.diffusion import mse_per_sample  # noqa: E402
from test_adaptive import ConvEps  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_accelerate.py"
# optimiser steps of 2 micro-steps of 16 digits; the sampler updates every 3rd micro-step, so its updates
# fall on micro-steps that step and on micro-steps that do not
ARGS = ["--method", "adaptive", "--gradient_accumulation_steps", "2", "--train_batch_size", "16",
        "--update_every", "3", "--cpu"]


def run_example(*args, out, launcher=(), timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*(launcher or [sys.executable]), str(EXAMPLE), *ARGS, "--output_dir", str(out), *args],
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run that test_a_resumed_run_continues_bit_for_bit resumes, with its checkpoint at step 5."""
    return run_example("--max_train_steps", "12", "--checkpointing_steps", "5",
                       out=tmp_path_factory.mktemp("uninterrupted"))


def test_one_process_with_accumulation_learns_and_counts_micro_steps(uninterrupted):
    assert uninterrupted["processes"] == 1 and uninterrupted["optimizer_steps"] == 12
    assert uninterrupted["sampler_step"] == 24  # K counts observe() calls: the 24 micro-steps
    assert uninterrupted["sampler_updates"] == 8  # micro-steps 0, 3, ..., 21: 4 of them do not step
    assert uninterrupted["tv_from_start"] > 0.05  # the density moved (0.11 when written)
    assert 0 < uninterrupted["loss"] < 0.8  # the ε-loss starts near 1


def test_a_resumed_run_continues_bit_for_bit(uninterrupted, tmp_path):
    """save_state at step 5 (mid-epoch), load_state, on to step 12: the same weights, EMA and sampler state."""
    first = run_example("--max_train_steps", "5", "--checkpointing_steps", "5", out=tmp_path)
    assert (tmp_path / "checkpoint-5").is_dir() and first["sampler_updates"] == 4
    resumed = run_example("--max_train_steps", "12", "--resume_from_checkpoint", "latest", out=tmp_path)
    for key in ("ranks", "ema_weights", "weights_sum", "sampler_updates", "sampler_step", "tv_from_start", "loss"):
        assert resumed[key] == uninterrupted[key], key


def test_two_processes_keep_every_rank_identical(tmp_path):
    """torchrun starts two CPU processes; Accelerate reads its environment (accelerate launch --cpu starts one)."""
    summary = run_example("--max_train_steps", "6", out=tmp_path, launcher=[
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
    assert summary["processes"] == 2 and summary["sampler_updates"] == 4  # 12 micro-steps, K = 3
    assert summary["tv_from_start"] > 0
    ranks = summary["ranks"]
    assert len(ranks) == 2 and ranks[0]["last_loss"] != ranks[1]["last_loss"]  # each rank its own batch and noise
    for key in ("weights", "sampler"):
        assert ranks[0][key] == ranks[1][key], ranks  # bit for bit


def test_bf16_mixed_precision_runs_and_the_sampler_learns(tmp_path):
    summary = run_example("--max_train_steps", "4", "--mixed_precision", "bf16", out=tmp_path)
    assert summary["sampler_updates"] == 3 and summary["tv_from_start"] > 0


@pytest.mark.parametrize("args, says", [(["--method", "flow-uniform"], "--method flow-uniform is a rectified-flow"),
                                        (["--mixed_precision", "fp16"], "--mixed_precision fp16 needs a GPU")])
def test_what_the_loop_cannot_do_is_one_line(tmp_path, args, says):
    result = subprocess.run([sys.executable, str(EXAMPLE), *args, "--cpu", "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith(f"error: {says}")


# ---------------------------------------------------------------------------------------------------
# A micro-step whose optimiser step Accelerate skips


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    yield Accelerator(gradient_accumulation_steps=2, cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def accumulating_loop(accelerator, reward, update_every, micro_steps=8):
    """`micro_steps` micro-steps of a 2-step accumulation; per micro-step: (does it step, did the sampler update)."""
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = accelerator.prepare(model, opt)
    sampler = make_sampler("adaptive", schedule, reward=reward, update_every=update_every, bins=17, scan=10)
    g = torch.Generator().manual_seed(1)
    trace = []
    for _ in range(micro_steps):
        x0 = torch.randn(8, 1, 4, 4, generator=g)
        t, w = sampler.sample(len(x0), "cpu", x0=x0)
        updates = sampler.updates
        with accelerator.accumulate(model), sampler.observe(model, x0, optimizer=opt):
            accelerator.backward((w * mse_per_sample(model, schedule, x0, t)).mean())
            opt.step()
            opt.zero_grad()
        trace.append((accelerator.sync_gradients, sampler.updates > updates))
    return sampler, trace


def test_the_credit_updates_on_a_micro_step_that_does_not_step(accelerator):
    """K counts micro-steps: updates at micro-steps 0, 3, 6, of which 0 and 6 do not step, each with a real credit."""
    sampler, trace = accumulating_loop(accelerator, "credit", update_every=3)
    assert [steps for steps, _ in trace] == [False, True] * 4
    assert [i for i, (_, updated) in enumerate(trace) if updated] == [0, 3, 6]
    assert sampler.step == 8 and sampler.skipped_updates == 0
    assert sampler.last_stats["reward_std"] > 0 and torch.isfinite(sampler.last_rewards).all()


def test_the_paper_reward_waits_for_a_micro_step_that_steps(accelerator):
    """The look-ahead measures the step: on a micro-step that does not step it does nothing and counts nothing,
    so K counts optimiser steps; every update's reward is a real change."""
    sampler, trace = accumulating_loop(accelerator, "paper", update_every=2)
    assert [i for i, (_, updated) in enumerate(trace) if updated] == [1, 5]  # optimiser steps 0 and 2
    assert sampler.step == 4 and sampler.last_rewards.abs().max() > 0


def test_without_a_step_the_paper_reward_measures_nothing():
    """Why it waits: the look-ahead around a body that does not step sees no change at all."""
    torch.manual_seed(0)
    schedule = NoiseSchedule("linear", T=50)
    model = ConvEps(50)
    sampler = make_sampler("adaptive", schedule, reward="paper", update_every=1, bins=17, scan=10)
    x0 = torch.randn(8, 1, 4, 4)
    t, w = sampler.sample(len(x0), "cpu", x0=x0)
    with sampler.observe(model, x0):
        (w * mse_per_sample(model, schedule, x0, t)).mean().backward()  # accumulates; no optimiser step
    assert sampler.updates == 1 and sampler.last_rewards.abs().max() == 0
