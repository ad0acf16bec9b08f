"""The trainer with objective "flow": rectified flow on the digits, through the same loop as DDPM."""
import json

import pytest
import torch
from safetensors.torch import load_file

from timestep_sampling import UserError
from timestep_sampling.checkpoint import latest_checkpoint
from timestep_sampling.config import make_config
from timestep_sampling.data import load_data
from timestep_sampling.evaluate import evaluate_checkpoint, sample_checkpoint
from timestep_sampling.flow import FlowLikelihood
from timestep_sampling.objectives import FlowObjective
from timestep_sampling.train import Trainer, check_compatible, train

CHEAP = "flow:eval_images=8,eval_steps=2,final_steps=2,sample_steps=4,sample_solver=heun"  # an evaluation for tests, not a measurement


def flow_config(out, **overrides):
    base = dict(out=str(out), objective=CHEAP, method="flow-logit-normal", steps=20, batch_size=16, eval_every=10,
                checkpoint_every=10, final_exact=False, num_samples=4, log_every=5, warmup=5, keep_checkpoints=5)
    base.update(overrides)
    return make_config(**base)


def test_a_flow_run_trains_scores_and_samples(tmp_path):
    out = tmp_path / "run"
    result = train(flow_config(out), progress=False)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "test_bpd" in r]
    assert [r["step"] for r in evals] == [0, 10, 20]
    assert all(0 < r["test_bpd"] < 20 for r in evals)
    assert evals[-1]["bpd_method"] == "ode-hutchinson-subset" and result["bpd_method"] == "ode-hutchinson-subset"
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(0 < x < 5 for x in losses)
    assert (out / "samples" / "final.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["objective"] == CHEAP


@pytest.mark.parametrize("method", ["flow-logit-normal", "flow-adaptive:update_every=2+flow-none"])
def test_a_flow_run_resumes_bit_for_bit(tmp_path, monkeypatch, method):
    """With the learned sampler too: its policy, Adam state and counters come back from the checkpoint."""
    straight = tmp_path / "straight"
    train(flow_config(straight, eval_every=0, num_samples=0, method=method), progress=False)
    crashed = tmp_path / "crashed"
    original = Trainer.train_step

    def crash_at_15(self):
        if self.step == 15:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_15)
    with pytest.raises(KeyboardInterrupt):
        train(flow_config(crashed, eval_every=0, num_samples=0, method=method), progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    train(flow_config(crashed, eval_every=0, num_samples=0, method=method), resume=True, progress=False)
    a = load_file(latest_checkpoint(straight / "checkpoints") / "model.safetensors")
    b = load_file(latest_checkpoint(crashed / "checkpoints") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_flow_objective_dequantises_its_training_data():
    """With dequantize=True the loss sees x0 + U(−Δ/2, Δ/2): for a model that returns 0, E‖v‖² grows by Δ²/12."""
    x0 = torch.zeros(20_000, 1, 2, 2)
    noise = torch.zeros_like(x0)
    t = torch.full((len(x0),), 0.5)
    zero = lambda x, ts: torch.zeros_like(x)  # noqa: E731
    torch.manual_seed(0)
    plain = FlowObjective(bins=17, dequantize=False).loss(zero, x0, t, noise)
    dequantised = FlowObjective(bins=17).loss(zero, x0, t, noise)
    assert plain.abs().max() == 0
    assert dequantised.mean().item() == pytest.approx((2 / 16) ** 2 / 12, rel=0.03)


@pytest.mark.parametrize("overrides, message", [
    ({"method": "uniform"}, "needs a sampler of continuous t"),
    ({"objective": "ddpm"}, "train it with --objective flow"),
    ({"objective": "flw"}, "did you mean 'flow'"),
    ({"objective": "ddpm:steps=3", "method": "uniform"}, "objective 'ddpm' takes no options"),
    ({"objective": "flow:probes=0"}, "probes must be an integer >= 1"),
    ({"objective": "flow:sample_step=3"}, "did you mean 'sample_steps'"),
    ({"objective": "flow:sample_solver=rk45"}, "unknown sample_solver 'rk45'"),
])
def test_mismatches_are_one_line_user_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as info:
        Trainer(flow_config(tmp_path / "x", **overrides), progress=False)
    assert "\n" not in str(info.value)


def test_resume_refuses_another_objective_and_reads_old_checkpoints_as_ddpm():
    data = load_data("digits")
    meta = {"config": make_config(method="uniform").to_dict(), "data_shape": list(data.shape)}
    del meta["config"]["objective"]  # a checkpoint from before the field
    check_compatible(meta, make_config(method="uniform"), data)
    with pytest.raises(UserError, match="objective='ddpm' but this run has objective='flow'"):
        check_compatible(meta, make_config(method="flow-uniform", objective="flow"), data)


def test_evaluate_and_sample_read_a_flow_checkpoint(tmp_path):
    """The Python side of `evaluate` and `sample` (tests/test_flow_cli.py has the command line's)."""
    out = tmp_path / "run"
    train(flow_config(out, steps=10, eval_every=0, num_samples=0), progress=False)
    result = evaluate_checkpoint(out, exact=False, progress=False)
    assert isinstance(result, FlowLikelihood) and result.trace == "hutchinson" and len(result.per_sample) == 8
    assert 0 < result.bpd < 20
    assert sample_checkpoint(out, tmp_path / "x.png", num=4, progress=False).stat().st_size > 0
