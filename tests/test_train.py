"""The reference trainer on the embedded digits: outputs, checkpoints and exact resume."""
import json

import pytest
import torch
from safetensors.torch import load_file

from timestep_sampling.checkpoint import latest_checkpoint, list_checkpoints
from timestep_sampling.config import make_config
from timestep_sampling.errors import UserError
from timestep_sampling.train import Trainer, ema_decay_at, make_ema, train


def tiny_config(out, **overrides):
    base = dict(out=str(out), steps=30, T=100, batch_size=16, eval_every=0, checkpoint_every=10,
                final_exact=False, num_samples=0, log_every=5, warmup=5, keep_checkpoints=5,
                eval_exact_below=0, eval_strata=4)  # a cheap bound estimate, except where a test is about it
    base.update(overrides)
    return make_config(**base)


def final_weights(out, name="model"):
    return load_file(latest_checkpoint(out / "checkpoints") / f"{name}.safetensors")


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
                                    {"method": "adaptive", "sampler": "adaptive:update_every=4"},
                                    {"method": "adaptive-bands", "sampler": "adaptive-bands:update_every=4"},
                                    {"method": "adaptive-bands-heldout",
                                     "sampler": "adaptive-bands:update_every=4,holdout=0.1"}],
                         ids=["uniform", "min-snr", "adaptive", "adaptive-bands", "adaptive-bands-heldout"])
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

    for name in ("model", "ema"):  # the EMA with its update count (n_averaged), which its warm-up reads
        a, b = final_weights(straight, name), final_weights(crashed, name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert final_weights(crashed, "ema")["n_averaged"] == 30
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
    assert {"alpha_mean", "beta_mean", "alpha_std", "beta_std", "reward_mean", "reward_std"} <= set(updates[0]["sampler"])


def test_a_run_is_named_by_the_sampler_and_weighting_it_trains(tmp_path, capsys):
    """`--sampler` overriding the `uniform` preset trains the adaptive sampler: the header and config.json say so."""
    out = tmp_path / "run"
    train(tiny_config(out, steps=2, method="uniform", sampler="adaptive:update_every=4"), progress=False)
    header = capsys.readouterr().out.splitlines()[0]
    assert "method=adaptive:update_every=4+none," in header and "method=uniform" not in header, header
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "adaptive:update_every=4+none" and saved["sampler"] == "adaptive:update_every=4"
    # and it resumes under that name (the same command, and config.json read back, name the same run)
    train(tiny_config(out, steps=3, method="uniform", sampler="adaptive:update_every=4"), resume=True, progress=False)
    train(make_config(out / "config.json", steps=4), resume=True, progress=False)


def crash_at(monkeypatch, step):
    """Make Trainer.train_step raise KeyboardInterrupt (a simulated kill) when it reaches `step`."""
    original = Trainer.train_step

    def crash(self):
        if self.step == step:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash)
    return original


def test_resume_before_the_first_checkpoint_starts_from_step_0(tmp_path, monkeypatch, capsys):
    """A run killed before its first checkpoint restarts with the same command (--resume) and equals an
    uninterrupted run; so does --resume on a folder that does not exist yet."""
    straight = tmp_path / "straight"
    train(tiny_config(straight, steps=12, checkpoint_every=10), progress=False)

    killed = tmp_path / "killed"
    original = crash_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(killed, steps=12, checkpoint_every=10), progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert latest_checkpoint(killed / "checkpoints") is None and (killed / "config.json").exists()
    capsys.readouterr()
    assert train(tiny_config(killed, steps=12, checkpoint_every=10), resume=True, progress=False)["step"] == 12
    notices = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("--resume:")]
    assert notices == [f"--resume: no checkpoint under {killed / 'checkpoints'} yet; starting from step 0"]
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loss_lines(straight) == loss_lines(killed)  # the killed attempt's log lines were not kept

    fresh = tmp_path / "never-made"
    assert train(tiny_config(fresh, steps=2), resume=True, progress=False)["step"] == 2


@pytest.mark.parametrize("change", [{"T": 50}, {"schedule": "cosine"}, {"method": "min-snr"},
                                    {"sampler": "logit-normal"}, {"data": "elsewhere.npz"}],
                         ids=["T", "schedule", "method", "sampler", "data"])
def test_resume_without_a_checkpoint_refuses_another_runs_folder(tmp_path, change):
    out = tmp_path / "run"
    out.mkdir()
    theirs = tiny_config(out)
    for key, value in change.items():
        setattr(theirs, key, value)
    theirs.save(out / "config.json")
    (out / "metrics.jsonl").write_text('{"step": 0, "test_bpd": 1.0}\n')
    with pytest.raises(UserError) as info:
        train(tiny_config(out), resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and "no checkpoint yet" in message and "use the same settings" in message, message
    key = "method" if "sampler" in change else next(iter(change))
    assert f"{key}=" in message, message
    assert (out / "metrics.jsonl").read_text() == '{"step": 0, "test_bpd": 1.0}\n'  # their log is untouched


@pytest.mark.parametrize("steps, interval", [(400, 40), (3000, 300), (20000, 500), (5, 1), (1, 1)])
def test_the_default_checkpoint_interval_follows_the_runs_length(steps, interval):
    cfg = make_config(steps=steps)
    assert cfg.checkpoint_every is None and cfg.checkpoint_interval == interval
    assert cfg.checkpoint_interval < steps or steps == 1  # a checkpoint before the end, to resume from
    assert make_config(steps=steps, checkpoint_every=250).checkpoint_interval == 250
    assert make_config(steps=steps, checkpoint_every=0).checkpoint_interval == 0  # only the final one


# ----------------------------------------------------------------------------------------------------
# The EMA's warm-up


def test_the_ema_after_warm_up_is_the_hand_computed_average():
    """A one-weight model whose weight is k at update k: the EMA is w_1 after the first update (a copy),
    then e <- d_n e + (1 - d_n) w with d_n = min(decay, (1 + n) / (10 + n)), n the updates before."""
    decay = 0.9  # reached at n = 81, so 100 updates cover the warm-up and the constant decay after it
    net = torch.nn.Linear(1, 1, bias=False).double()
    ema = make_ema(net, decay, warmup=True)
    expected, constant = None, None
    for k in range(1, 101):
        with torch.no_grad():
            net.weight.fill_(float(k))
        ema.update_parameters(net)
        n = k - 1
        d = min(decay, (1 + n) / (10 + n))
        expected = float(k) if k == 1 else d * expected + (1 - d) * k
        constant = float(k) if k == 1 else decay * constant + (1 - decay) * k
        torch.testing.assert_close(ema.module.weight.item(), expected, rtol=1e-12, atol=0)
        if k == 50:  # the update count survives a state_dict round trip (as through a checkpoint)
            restored = make_ema(net, decay, warmup=True)
            restored.load_state_dict(ema.state_dict())
            ema = restored
    assert ema_decay_at(1, decay, True) == 2 / 11 and ema_decay_at(81, decay, True) == decay
    assert int(ema.n_averaged) == 100
    # Without warm-up: the constant decay, as before the warm-up existed.
    old = make_ema(net, decay, warmup=False)
    for k in range(1, 101):
        with torch.no_grad():
            net.weight.fill_(float(k))
        old.update_parameters(net)
    torch.testing.assert_close(old.module.weight.item(), constant, rtol=1e-12, atol=0)


def test_a_short_runs_ema_scores_within_0_1_bits_of_its_training_weights(tmp_path, capsys):
    """At the default decay 0.999 without warm-up, 60 steps leave 94 % of the initial weights in the EMA:
    measured 6.33 bits/dim against 5.37 for the training weights (same estimate: the same timesteps and
    noise for both). With the warm-up the two read 5.381 and 5.368; the test allows 0.1."""
    out = tmp_path / "run"
    result = train(tiny_config(out, steps=60, checkpoint_every=0), progress=False)
    assert abs(result["test_bpd"] - result["test_bpd_train"]) < 0.1, result
    final = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["final"] and final["test_bpd"] == result["test_bpd"] and final["test_bpd_train"] == result["test_bpd_train"]
    last = capsys.readouterr().out.splitlines()[-1]
    assert f"test bits/dim = {result['test_bpd']:.4f}" in last and f"training weights {result['test_bpd_train']:.4f}" in last


def test_a_checkpoint_from_before_the_warm_up_finishes_with_its_constant_decay(tmp_path, monkeypatch, capsys):
    """A checkpoint whose config has no ema_warmup (written before it existed) resumes with the constant
    decay it was trained with, even under today's default, and ends as an uninterrupted old-rule run."""
    straight = tmp_path / "straight"
    train(tiny_config(straight, ema_warmup=False), progress=False)

    old = tmp_path / "old"
    original = crash_at(monkeypatch, 25)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(old, ema_warmup=False), progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    for meta in (old / "checkpoints").glob("step_*/meta.json"):  # as the old trainer wrote them
        record = json.loads(meta.read_text())
        del record["config"]["ema_warmup"]
        meta.write_text(json.dumps(record))
    capsys.readouterr()
    train(tiny_config(old), resume=True, progress=False)  # ema_warmup=True, the default now
    assert "the checkpoint's EMA has no warm-up; continuing it so (ema_warmup=false)" in capsys.readouterr().out
    a, b = final_weights(straight, "ema"), final_weights(old, "ema")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((old / "config.json").read_text())["ema_warmup"] is False  # what the run used


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


@pytest.mark.slow  # torch.compile takes ~25 s on 2 cores; the --compile plumbing is tested above
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
