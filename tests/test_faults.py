"""Faults injected into training: a process killed at random points, a checkpoint write that fails, and
non-finite losses. Nothing finished may be lost, and nothing non-finite may reach the weights or the sampler."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from timestep_sampling import checkpoint as checkpoint_module
from timestep_sampling.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from timestep_sampling.cli import main
from timestep_sampling.config import make_config
from timestep_sampling.errors import UserError
from timestep_sampling.train import Trainer, TrainingDiverged, train

TINY = dict(steps=40, T=50, batch_size=8, eval_every=0, final_exact=False, num_samples=0, log_every=5,
            eval_exact_below=0, eval_strata=3,  # a cheap bound: these tests are about faults
            warmup=5, checkpoint_every=1, keep_checkpoints=3)


def tiny_config(out, **overrides):
    return make_config(out=str(out), **{**TINY, **overrides})


def all_checkpoints_load(root):
    """Every folder with a final checkpoint name is whole (a temporary one may be left by a kill)."""
    for path in list_checkpoints(root):
        load_checkpoint(path)
    return len(list_checkpoints(root))


def test_sigkill_at_random_points_never_leaves_a_broken_checkpoint_and_resume_is_exact(tmp_path):
    STEPS = 20
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "steps": STEPS, "keep_checkpoints": STEPS}))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "timestep_sampling", "train", "--config", str(config), "--out", str(out),
               "--no-progress"]
    env = dict(os.environ)
    # The reference runs in a fresh process as the killed runs do. Trained inside the test process it matched
    # them alone, but not after the rest of the default suite (2026-12-07: step 1 differed; not yet explained).
    reference = tmp_path / "reference"
    subprocess.run([*command[:-3], "--out", str(reference), "--no-progress"], env=env, check=True, timeout=300)
    rng = random.Random(int(os.environ.get("KILL_SEED", 0)))
    kills = 0
    for attempt in range(4):  # three kills at random points, then a run to the end
        latest = latest_checkpoint(out / "checkpoints")
        resume = ["--resume"] if latest else []
        proc = subprocess.Popen(command + resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Kill at a random moment within a random step ahead of the last checkpoint: waiting for that step's
        # checkpoint (not a wall-clock delay) keeps every kill inside training however fast the machine is.
        done = int(latest.name.removeprefix("step_")) if latest else 0
        target = out / "checkpoints" / f"step_{min(done + rng.randint(1, 4), STEPS - 2):08d}"
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not target.exists():
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None and attempt < 3:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        assert all_checkpoints_load(out / "checkpoints") >= 1
        if proc.returncode == 0:
            break
    else:
        pytest.fail("the run never finished")
    assert kills == 3, "a kill came too late to interrupt training"
    final = latest_checkpoint(out / "checkpoints")
    assert final.name == f"step_{STEPS:08d}"
    for path in list_checkpoints(out / "checkpoints"):  # every step, written by whichever process, is exact
        expected = load_file(reference / "checkpoints" / path.name / "model.safetensors")
        got = load_file(path / "model.safetensors")
        assert all(torch.equal(got[k], v) for k, v in expected.items()), path.name
    assert loss_lines(out) == loss_lines(reference)  # the log too: no line lost or written twice by the resumes


def loss_lines(out):
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_stops_clearly(tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = checkpoint_module.save_file

    def disk_full_at_step_3(tensors, path, *args, **kwargs):
        if "step_00000003" in str(path):
            raise OSError(28, "No space left on device")
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full_at_step_3)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*step_00000003.*No space left"):
        train(tiny_config(out), progress=False)
    root = out / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000001", "step_00000002"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]  # the half-written one is gone
    weights, state, _ = load_checkpoint(root / "step_00000002")
    assert state["step"] == 2
    monkeypatch.setattr(checkpoint_module, "save_file", original)
    assert train(tiny_config(out, steps=4), resume=True, progress=False)["step"] == 4  # and it resumes


def test_a_failing_write_is_one_line_and_status_2_on_the_command_line(tmp_path, monkeypatch, capsys):
    def read_only(tensors, path, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(checkpoint_module, "save_file", read_only)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0] and "Traceback" not in err[0]


def nan_at(steps):
    """Patch the weighting so the loss is NaN on the given steps (a fault inside the step)."""
    def install(trainer):
        weights = trainer.weighting.weights
        trainer.weighting.weights = lambda t: weights(t) * (torch.nan if trainer.step in steps else 1.0)
    return install


def fit_with(cfg, install):
    trainer = Trainer(cfg, progress=False)
    install(trainer)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("sampler", ["uniform", "adaptive:update_every=2",
                                     pytest.param("adaptive:reward=paper,update_every=2", marks=pytest.mark.slow)])
def test_non_finite_losses_are_skipped_counted_and_never_reach_weights_or_sampler(tmp_path, sampler):
    trainer = fit_with(tiny_config(tmp_path / "run", steps=12, sampler=sampler), nan_at({2, 3, 7}))
    assert trainer.skipped_total == 3 and trainer.bad_steps == 0
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.ema.parameters())
    state = trainer.sampler.state_dict()
    tensors = [v for v in _leaves(state) if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in tensors)  # for adaptive: policy, its optimiser, the queue
    if sampler.startswith("adaptive"):
        assert len(tensors) > 4 and (trainer.sampler.reward == "credit" or len(trainer.sampler.queue) > 0)
        # A skipped step is not an observed step: the 9 completed ones made updates at their 0th, 2nd, ... 8th.
        assert trainer.sampler.step == 9 and trainer.sampler.updates == 5 and trainer.sampler.skipped_updates == 0
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in logged if "loss" in r][-1] == 3
    assert all(r["loss"] == r["loss"] for r in logged if "loss" in r)  # no NaN written to the log


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def test_too_many_non_finite_steps_in_a_row_stop_with_a_clear_message(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", max_bad_steps=4)
    with pytest.raises(TrainingDiverged, match="4 non-finite losses or gradients in a row at step 5"):
        fit_with(cfg, nan_at(set(range(2, 40))))
    # Fewer than max_bad_steps in a row is survived.
    trainer = fit_with(tiny_config(tmp_path / "ok", max_bad_steps=4, steps=10), nan_at({1, 2, 3, 5, 6, 7}))
    assert trainer.step == 10 and trainer.skipped_total == 6
