"""The analysis tools (`timestep-sampling analyze ...`) on a tiny digits run: shapes, determinism under a
seed, one known property each, and one-line errors for user mistakes."""
import json

import pytest
import torch
from PIL import Image

from timestep_sampling import NoiseSchedule, UserError
from timestep_sampling import analysis
from timestep_sampling.cli import main
from timestep_sampling.config import make_config
from timestep_sampling.train import Trainer, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """20 steps of batch 16, checkpoints at steps 10 and 20. T = 1000 with a 5-step warm-up, so that the
    run spans every noise level (with T = 50 the linear schedule never gets below ᾱ = 0.6) and moves
    far enough for the per-timestep differences to show; training costs the same for any T. The
    bound is not evaluated: the step-0 and final estimates would cost most of the fixture's time, and
    nothing here reads them."""
    out = tmp_path_factory.mktemp("analysis") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "evaluate", lambda self, exact, model=None: 0.0)
        train(make_config(out=str(out), steps=20, T=1000, warmup=5, batch_size=16, eval_every=0, num_samples=0,
                          final_exact=False, checkpoint_every=10, keep_checkpoints=5), progress=False)
    return out


def read(result: dict) -> dict:
    with Image.open(result["png"]) as image:
        assert image.format == "PNG" and len(image.convert("RGB").getcolors(1 << 20)) > 20  # not blank
    return json.loads(open(result["json"]).read())


# ----------------------------------------------------------------------------- grad-variance

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t):
        return self.conv(x) * self.scale + t.float().reshape(-1, 1, 1, 1) / 100


def test_per_sample_gradient_variance_matches_a_loop():
    model, schedule = Tiny(), NoiseSchedule("linear", T=50)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(6, 1, 4, 4, generator=gen) * 2 - 1, torch.randn(6, 1, 4, 4, generator=gen)
    t, w = torch.tensor([0, 3, 10, 20, 33, 49]), torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    grads = []
    for i in range(6):
        model.zero_grad()
        xt = schedule.at("alphas_cumprod", t[i:i + 1], x0).sqrt() * x0[i:i + 1] \
            + (1 - schedule.at("alphas_cumprod", t[i:i + 1], x0)).sqrt() * noise[i:i + 1]
        (w[i] * ((model(xt, t[i:i + 1]) - noise[i:i + 1]) ** 2).mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    grads = torch.stack(grads)
    expected = grads.var(0).sum().item()  # the trace of the covariance, unbiased
    stats = analysis.per_sample_gradient_stats(model, schedule, x0, t, noise, w, chunk=4)
    assert stats["trace_cov"] == pytest.approx(expected, rel=1e-5)
    assert stats["mean_sq_norm"] == pytest.approx(grads.mean(0).pow(2).sum().item(), rel=1e-5)
    doubled = analysis.per_sample_gradient_stats(model, schedule, x0, t, noise, 2 * w)
    assert doubled["trace_cov"] == pytest.approx(4 * expected, rel=1e-5)  # Var(2g) = 4 Var(g)


def test_grad_variance_per_bin_and_checkpoint_is_reproducible(run, tmp_path):
    kwargs = dict(bins=3, samples=4, progress=False)
    first = read(analysis.grad_variance(run, tmp_path / "a", **kwargs))
    assert first["bin_edges"] == [0, 333, 667, 1000]
    assert [c["step"] for c in first["checkpoints"]] == [10, 20]
    for curve in first["checkpoints"]:
        assert len(curve["trace_cov"]) == len(curve["mean_sq_norm"]) == len(curve["loss"]) == 3
        assert all(v > 0 for v in curve["trace_cov"])
        # ε-prediction: the gradient is far noisier at small t than at large t (seed paper, Fig. 2)
        assert curve["trace_cov"][0] > 2 * curve["trace_cov"][-1], curve["trace_cov"]
    # the same draws for every checkpoint, whichever are chosen: step 20 alone gives the same numbers
    again = read(analysis.grad_variance(run, tmp_path / "b", steps="20", **kwargs))
    assert again["checkpoints"] == first["checkpoints"][1:]


# ----------------------------------------------------------------------------- timestep-loss

def test_timestep_loss_falls_with_training(run, tmp_path):
    result = read(analysis.timestep_loss(run, tmp_path, bins=5, images=64, progress=False))
    again = read(analysis.timestep_loss(run, tmp_path / "again", steps=[20], bins=5, images=64, progress=False))
    assert again["checkpoints"] == result["checkpoints"][1:]  # fixed (x0, t, ε): the same numbers again
    early, late = (c["loss"] for c in result["checkpoints"])
    assert len(early) == len(late) == 5 and result["test_images"] == 64
    assert sum(late) < sum(early)  # the later checkpoint is better on average


# ----------------------------------------------------------------------------- interdependence

def test_interdependence_matrix(run, tmp_path):
    kwargs = dict(bands=3, train_steps=3, batch_size=8, images=64, progress=False)
    result = read(analysis.interdependence(run, tmp_path, **kwargs))
    assert result["step"] == 20 and len(result["matrix"]) == 3 and all(len(r) == 3 for r in result["matrix"])
    assert len(result["uniform_row"]) == 3 and len(result["loss_before"]) == 3
    # training on a band lowers that band's loss, and more than it lowers the others' on average
    m = result["matrix"]
    assert all(m[i][i] < 0 for i in range(3))
    assert result["summary"]["diagonal_mean"] < result["summary"]["off_diagonal_mean"] - 0.05, m
    # the seed paper's Fig. 4: training only on the smallest timesteps raises the loss at the largest
    assert m[0][2] > 0, m
    # every row restarts from the checkpoint, and training is seeded: with one band (all t), its row and
    # the "all t" row, trained one after the other, coincide exactly
    one = read(analysis.interdependence(run, tmp_path / "one", **{**kwargs, "bands": 1}))
    assert one["matrix"] == [one["uniform_row"]] and one["matrix"][0][0] < 0


# ----------------------------------------------------------------------------- sampler-density

def test_sampler_density_of_the_run(run, tmp_path):
    result = read(analysis.sampler_density(run, tmp_path))
    assert result["steps"] == [0, 20] and len(result["density"][0]) == 1000
    assert result["mean_t"] == pytest.approx([499.5, 499.5])  # the uniform sampler: p = 1/T
    assert result["mass_per_tenth"][0] == pytest.approx([0.1] * 10)


def test_sampler_density_from_a_log(tmp_path):
    fake = tmp_path / "run"
    fake.mkdir()
    make_config(T=4, method="adaptive").save(fake / "config.json")
    lines = [{"step": 0, "density": [0.25] * 4}, {"step": 100, "density": [0.7, 0.1, 0.1, 0.1]}]
    (fake / "sampler_density.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = read(analysis.sampler_density(fake, tmp_path / "out"))
    assert result["steps"] == [0, 100] and result["method"] == "adaptive"
    assert result["mean_t"] == pytest.approx([1.5, 0.6])


# ----------------------------------------------------------------------------- mistakes

def test_user_mistakes_are_one_line_errors(run, tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        analysis.timestep_loss(tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    make_config().save(tmp_path / "empty" / "config.json")
    with pytest.raises(UserError, match="no checkpoints"):
        analysis.grad_variance(tmp_path / "empty", tmp_path)
    with pytest.raises(UserError, match="no sampler_density.jsonl"):
        analysis.sampler_density(tmp_path / "empty", tmp_path)
    with pytest.raises(UserError, match=r"no checkpoint for step 15 \(present: 10, 20\).*keep_checkpoints"):
        analysis.interdependence(run, tmp_path, step=15)
    for argv in (["grad-variance", "--steps", "10,x"], ["timestep-loss", "--steps", "30"],
                 ["interdependence", "--bands", "0"], ["sampler-density", "--run", str(tmp_path / "empty")]):
        if "--run" not in argv:
            argv = argv + ["--run", str(run)]
        assert main(["analyze", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
