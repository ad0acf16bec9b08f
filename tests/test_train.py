"""The reference trainer on the embedded digits: outputs, checkpoints and exact resume."""
import json

import pytest
import torch
from safetensors.torch import load_file

from timestep_sampling.checkpoint import latest_checkpoint, list_checkpoints
from timestep_sampling.config import make_config
from timestep_sampling.train import Trainer, train


def tiny_config(out, **overrides):
    base = dict(out=str(out), steps=30, T=100, batch_size=16, eval_every=0, checkpoint_every=10,
                final_exact=False, num_samples=0, log_every=5, warmup=5, keep_checkpoints=5,
                eval_exact_below=0, eval_strata=4)  # a cheap bound estimate, except where a test is about it
    base.update(overrides)
    return make_config(**base)


def final_weights(out):
    return load_file(latest_checkpoint(out / "checkpoints") / "model.safetensors")


def loss_lines(out):
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_run_writes_its_contract_outputs(tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(out, num_samples=4, eval_every=15), progress=False)
    assert (out / "config.json").exists() and json.loads((out / "config.json").read_text())["steps"] == 30
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r for r in records)
    evals = [r for r in records if "test_bpd" in r]
    assert [r["step"] for r in evals] == [0, 15, 30] and all(r["test_bpd"] > 0 for r in evals)
    assert (out / "samples" / "final.png").stat().st_size > 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000010", "step_00000020",
                                                                       "step_00000030"]
    assert result["step"] == 30


@pytest.mark.parametrize("method", [{"method": "uniform"}, {"method": "min-snr"},
                                    {"method": "adaptive", "sampler": "adaptive:update_every=4"}],
                         ids=["uniform", "min-snr", "adaptive"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, method):
    straight = tmp_path / "straight"
    train(tiny_config(straight, **method), progress=False)

    crashed = tmp_path / "crashed"
    original = Trainer.train_step

    def crash_at_25(self):
        if self.step == 25:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_25)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(crashed, **method), progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert latest_checkpoint(crashed / "checkpoints").name == "step_00000020"
    train(tiny_config(crashed, **method), resume=True, progress=False)

    a, b = final_weights(straight), final_weights(crashed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loss_lines(straight) == loss_lines(crashed)
    if method["method"] == "adaptive":  # the sampler's own state went through the checkpoint too
        a, b = (torch.load(latest_checkpoint(out / "checkpoints") / "state.pt")["sampler"] for out in (straight, crashed))
        assert a["updates"] == b["updates"] == 8
        assert all(torch.equal(a["policy"][k], b["policy"][k]) for k in a["policy"])


def test_a_longer_run_continues_a_shorter_one(tmp_path):
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    train(tiny_config(straight, steps=20), progress=False)
    train(tiny_config(extended, steps=10), progress=False)
    train(tiny_config(extended, steps=20), resume=True, progress=False)
    a, b = final_weights(straight), final_weights(extended)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_bound(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, steps=150, eval_every=0, lr=2e-3, ema_decay=0.9,
                            eval_exact_below=20, eval_strata=80), progress=False)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    bpd = [r["test_bpd"] for r in records if "test_bpd" in r]
    assert bpd[-1] < bpd[0] - 0.5, bpd


def test_a_learning_sampler_leaves_its_density_over_training(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, method="adaptive", sampler="adaptive:update_every=2,lr=0.05", eval_every=10), progress=False)
    records = [json.loads(ln) for ln in (out / "sampler_density.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    densities = torch.tensor([r["density"] for r in records], dtype=torch.float64)
    assert densities.shape == (4, 100) and torch.allclose(densities.sum(1), torch.ones(4, dtype=torch.float64))
    assert not torch.allclose(densities[0], densities[-1], atol=1e-4)  # it learned something
    assert (out / "sampler_density.png").stat().st_size > 0
    updates = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "sampler_update" in ln]
    assert [r["sampler_update"] for r in updates] == list(range(1, 16))  # one line per policy update (K = 2)
    assert {"alpha_mean", "beta_mean", "alpha_std", "beta_std", "subset", "reward_mean"} <= set(updates[0]["sampler"])


# ----------------------------------------------------------------------------- speed options

def _step(tmp_path, **options):
    """A Trainer on the digits after one training step, and that step's loss."""
    trainer = Trainer(tiny_config(tmp_path / "run", **options), progress=False)
    return trainer, trainer.train_step()


def test_bf16_runs_the_training_forward_in_bf16_and_keeps_float32_weights(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", precision="bf16"), progress=False)
    dtypes = []
    hook = trainer.net.unet.conv_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    loss = trainer.train_step()
    assert dtypes == [torch.bfloat16] and loss is not None and torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 and p.grad is None for p in trainer.net.parameters())
    dtypes.clear()
    trainer.evaluate(exact=False)  # the EMA copy scores the bound in float32
    hook.remove()
    assert dtypes == []  # the hook is on the training network, which evaluation does not run
    _, fp32_loss = _step(tmp_path / "fp32")
    assert abs(loss - fp32_loss) < 0.05 * fp32_loss  # the same step, in lower precision


def test_bf16_trains_with_the_adaptive_sampler_whose_probes_stay_float32(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", precision="bf16", method="adaptive",
                                  sampler="adaptive:update_every=2"), progress=False)
    probe_dtypes = []
    original = trainer.net.forward
    trainer.net.forward = lambda x, t: (probe_dtypes.append(x.dtype), original(x, t))[1]
    for _ in range(3):
        assert trainer.train_step() is not None
        trainer.step += 1
    assert trainer.sampler.updates == 2 and set(probe_dtypes) == {torch.float32}


def test_channels_last_trains_like_the_default_layout(tmp_path):
    # without dropout: its mask is drawn in memory order, so another layout drops other units
    trainer, loss = _step(tmp_path / "cl", channels_last=True, dropout=0.0)
    conv = trainer.net.unet.down_blocks[0].resnets[0].conv1.weight  # 16 -> 16 channels
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    _, default_loss = _step(tmp_path / "default", dropout=0.0)
    assert loss == pytest.approx(default_loss, rel=1e-4)  # the same numbers in another memory order
    trainer.save()  # safetensors needs contiguous tensors: the checkpoint writes them so
    assert latest_checkpoint(tmp_path / "cl" / "run" / "checkpoints") is not None


def test_compile_compiles_the_training_forward_only(tmp_path, monkeypatch):
    """The wiring, without paying for a compile: torch.compile receives the training network, and the
    EMA copy and the checkpoint keep plain parameter names."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    trainer, loss = _step(tmp_path, compile=True, precision="bf16")
    assert compiled == [trainer.net] and loss is not None
    assert all(not k.startswith("_orig_mod") for k in trainer.net.state_dict())


def test_compile_really_compiles_a_training_run(tmp_path, monkeypatch):
    """A real torch.compile (inductor, which builds C++ kernels on a CPU) with a one-layer model in place of
    the UNet: 17 s with an empty inductor cache on the 2 shared development cores, 5 s with a warm one. The
    tiny UNet took 6 minutes to compile there, so it stays out of the tests."""
    from timestep_sampling import train as train_module

    class OneConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x) + t.float().reshape(-1, 1, 1, 1) / 1000

    monkeypatch.setattr(train_module, "build_model", lambda cfg, data: OneConv())
    result = train(tiny_config(tmp_path / "run", steps=4, compile=True), progress=False)
    assert result["step"] == 4 and torch.isfinite(torch.tensor(result["test_bpd"]))
    assert set(final_weights(tmp_path / "run")) == {"conv.weight", "conv.bias"}


def test_precision_must_be_known(tmp_path):
    from timestep_sampling.errors import UserError

    with pytest.raises(UserError, match="unknown precision 'bf61' .*valid choices: bf16, fp32"):
        tiny_config(tmp_path, precision="bf61")
