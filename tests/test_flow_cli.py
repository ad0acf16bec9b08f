"""`timestep-sampling evaluate` and `sample` on a rectified-flow run: the ODE likelihood with the trainer's
own options (so the defaults reproduce the number the run logged), Euler and Heun grids, and one-line errors
for a sampler or option of the other kind of checkpoint."""
import json
import math

import pytest
from PIL import Image

from timestep_sampling.cli import main
from timestep_sampling.config import make_config
from timestep_sampling.train import Trainer, train

CHEAP = "flow:eval_images=8,eval_steps=2,final_steps=2,sample_steps=3"  # an evaluation for tests, not a measurement


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_cli") / "run"
    train(make_config(out=str(out), objective=CHEAP, method="flow-uniform", steps=10, batch_size=16, eval_every=0,
                      num_samples=0, final_exact=False, warmup=2, device="cpu"), progress=False)
    return out


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """A DDPM checkpoint at step 0 (untrained: only its kind matters here)."""
    out = tmp_path_factory.mktemp("ddpm_cli") / "run"
    Trainer(make_config(out=str(out), T=50, batch_size=8, device="cpu"), progress=False).save()
    return out


def final_record(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "final" in ln][-1]


def test_evaluate_a_flow_run_reproduces_the_trainers_number(flow_run, tmp_path, capsys):
    """--estimate is the trainer's in-training evaluation (here its last one: final_exact=False)."""
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(flow_run), "--estimate", "--no-progress", "--json", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    r = json.loads(out.read_text())
    logged = final_record(flow_run)
    assert line.startswith(f"test bits/dim: {r['test_bpd']:.4f} ± ") and "8 of 297 test images" in line, line
    assert math.isfinite(r["test_bpd"]) and 1 < r["test_bpd"] < 10  # 17 levels uniformly: log2(17) = 4.09
    assert r["test_bpd"] == pytest.approx(logged["test_bpd"], rel=1e-6)
    assert r["bpd_method"] == logged["bpd_method"] == "ode-hutchinson-subset"
    assert (r["images"], r["ode_steps"], r["ode_solver"], r["probes"], r["step"]) == (8, 2, "rk4", 2, 10)
    assert r["stderr"] > 0 and r["objective"] == CHEAP


def test_evaluate_a_flow_run_with_the_exact_trace(flow_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(flow_run), "--trace", "exact", "--images", "4", "--ode-steps", "1",
                 "--ode-solver", "heun", "--no-progress", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["bpd_method"] == "ode-exact-subset" and r["stderr"] == 0 and r["probes"] is None
    assert math.isfinite(r["test_bpd"]) and 1 < r["test_bpd"] < 10
    assert "exact trace; Heun, 1 steps; 4 of 297 test images" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["euler", "heun", None])
def test_sample_a_flow_run(flow_run, tmp_path, capsys, method):
    png = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", str(flow_run), "--num", "4", "--out", str(png), "--no-progress"]
    argv += ["--method", method, "--steps", "3"] if method else []  # default: the run's solver and its 3 steps
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    assert Image.open(png).size[0] >= 16


MISMATCHES = [  # (checkpoint, argv after the subcommand's name, what the one line must say)
    ("ddpm", ["sample", "--method", "euler"], "'euler' is for rectified-flow checkpoints; this checkpoint is DDPM: "
                                              "valid choices: ddim, ddpm"),
    ("ddpm", ["sample", "--method", "heun"], "valid choices: ddim, ddpm"),
    ("flow", ["sample", "--method", "ddim"], "'ddim' is for DDPM checkpoints; this checkpoint is a rectified flow: "
                                             "valid choices: euler, heun"),
    ("flow", ["sample", "--method", "ddpm"], "valid choices: euler, heun"),
    ("flow", ["sample", "--method", "eulr"], "unknown sampling method 'eulr' (did you mean 'euler'?); valid choices: "
                                             "euler, heun"),
    ("flow", ["sample", "--steps", "0"], "--steps must be an integer >= 1"),
    ("ddpm", ["evaluate", "--trace", "exact"], "--trace set the ODE likelihood of a rectified-flow checkpoint; "
                                               "this checkpoint is DDPM"),
    ("flow", ["evaluate", "--trace", "exat"], "unknown trace 'exat' (did you mean 'exact'?)"),
    ("flow", ["evaluate", "--ode-solver", "euler"], "unknown ODE solver 'euler'; valid choices: heun, rk4"),
    ("flow", ["evaluate", "--images", "0"], "--images must be an integer >= 1"),
]


@pytest.mark.parametrize("run, argv, message", MISMATCHES, ids=[f"{r} {' '.join(a)}" for r, a, _ in MISMATCHES])
def test_a_sampler_or_option_of_the_other_kind_is_one_line(run, argv, message, flow_run, ddpm_run, tmp_path, capsys):
    folder = flow_run if run == "flow" else ddpm_run
    argv = [argv[0], "--checkpoint", str(folder), "--no-progress", *argv[1:]]
    if argv[0] == "sample":
        argv += ["--num", "1", "--out", str(tmp_path / "x.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "x.png").exists()
