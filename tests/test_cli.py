"""The command line's contract for mistakes: status 2 and one line on stderr that says what was expected,
never a traceback. One row per mistake; most fail before any training starts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from timestep_sampling.cli import main
from timestep_sampling.config import make_config
from timestep_sampling.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run (T = 50), for the rows that need a checkpoint."""
    out = tmp_path_factory.mktemp("cli") / "run"
    train(make_config(out=str(out), steps=2, T=50, batch_size=8, eval_every=0, num_samples=0,
                      final_exact=False, checkpoint_every=1, warmup=1), progress=False)
    return out


def write(path, text):
    path.write_text(text)
    return str(path)


def files(tmp):
    """Inputs that rows refer to by name, made in the test's own folder."""
    np.savez(tmp / "flat.npz", images=np.zeros((10, 64), np.float32))
    np.savez(tmp / "range.npz", images=np.full((10, 8, 8), 300.0, np.float32))
    np.savez(tmp / "strings.npz", images=np.full((10, 8, 8), "a"))
    (tmp / "empty").mkdir()
    (tmp / "broken").mkdir()
    (tmp / "broken" / "a.png").write_bytes(b"not a png")
    (tmp / "afile").write_text("x")
    (tmp / "other_run").mkdir()  # killed before its first checkpoint; made with another T
    make_config(out=str(tmp / "other_run"), T=60).save(tmp / "other_run" / "config.json")
    return {
        "flat": str(tmp / "flat.npz"), "range": str(tmp / "range.npz"), "strings": str(tmp / "strings.npz"), "empty": str(tmp / "empty"),
        "broken": str(tmp / "broken"), "afile": str(tmp / "afile"), "other_run": str(tmp / "other_run"),
        "typo_key": write(tmp / "typo.json", json.dumps({"stepz": 5})),
        "bad_type": write(tmp / "type.json", json.dumps({"lr": "fast"})),
        "bad_toml": write(tmp / "bad.toml", "steps = = 3"),
        "list_config": write(tmp / "list.json", "[1, 2]"),
        "flow_run": flow_run_folder(tmp),
    }


def flow_run_folder(tmp):
    """A rectified-flow run as far as its config.json: enough for the analyses that must refuse it."""
    (tmp / "flow_run").mkdir()
    make_config(out=str(tmp / "flow_run"), objective="flow", method="flow-uniform").save(tmp / "flow_run" / "config.json")
    return str(tmp / "flow_run")


T_ARGS = ["train", "--steps", "1", "--T", "50", "--batch-size", "8", "--num-samples", "0", "--no-progress"]

ROWS = [  # (id, argv with {names} from files()/run, what the one line must say)
    ("unknown method", T_ARGS + ["--method", "unifrom"], "unknown method 'unifrom' (did you mean 'uniform'?)"),
    ("unknown sampler", T_ARGS + ["--sampler", "lognormal"], "unknown sampler 'lognormal'"),
    ("unknown weighting", T_ARGS + ["--weighting", "minsnr"], "unknown weighting 'minsnr'"),
    ("unknown schedule", T_ARGS + ["--schedule", "linaer"], "unknown noise schedule 'linaer' (did you mean 'linear'?)"),
    ("unknown sampler option", T_ARGS + ["--sampler", "speed:kk=2"], "valid choices"),
    ("T <= 1", ["train", "--T", "1", "--no-progress"], "T must be > 1"),
    ("T = 0", ["train", "--T", "0", "--no-progress"], "T must be > 1"),
    ("batch larger than the data", T_ARGS + ["--batch-size", "100000"], "larger than the training set (1500 images)"),
    ("options on a preset", T_ARGS + ["--method", "adaptive:lr=0.1"],
     "takes no options; give them to its sampler: 'adaptive:lr=0.1+none' (on the command line: --method adaptive"),
    ("a pair of two kinds of time", T_ARGS + ["--method", "uniform+flow-none"], "pair flow-... with flow-..."),
    ("an option given twice", T_ARGS + ["--sampler", "logit-normal:std=1,std=2"], "option 'std' is given twice"),
    ("negative gamma", T_ARGS + ["--weighting", "min-snr:gamma=-5"], "gamma"),
    ("K < 1", T_ARGS + ["--sampler", "adaptive:update_every=0"], "update_every"),
    ("|S| > T", T_ARGS + ["--sampler", "adaptive:subset_size=60"], "subset_size"),
    ("queue < 2", T_ARGS + ["--sampler", "adaptive:queue_size=1"], "queue_size"),
    ("negative policy lr", T_ARGS + ["--sampler", "adaptive:lr=-1"], "lr"),
    ("negative lr", T_ARGS + ["--lr", "-1"], "lr must be a finite number >= 0"),
    ("NaN lr", T_ARGS + ["--lr", "nan"], "lr must be a finite number >= 0, got nan"),
    ("infinite lr", T_ARGS + ["--lr", "inf"], "lr must be a finite number >= 0, got inf"),
    ("zero steps", ["train", "--steps", "0", "--no-progress"], "steps must be >= 1"),
    ("zero batch", ["train", "--batch-size", "0", "--no-progress"], "batch_size must be >= 1"),
    ("unbiased without a pmf", T_ARGS + ["--sampler", "adaptive:conditioned=True,unbiased=True"], "unbiased"),
    ("missing data path", T_ARGS + ["--data", "/no/such/place"], "/no/such/place"),
    ("flat npz", T_ARGS + ["--data", "{flat}"], "flat.npz"),
    ("npz out of range", T_ARGS + ["--data", "{range}"], "range"),
    ("npz of strings", T_ARGS + ["--data", "{strings}"], "dtype <U1; expected uint8"),
    ("empty folder", T_ARGS + ["--data", "{empty}"], "empty"),
    ("unreadable image", T_ARGS + ["--data", "{broken}"], "a.png"),
    ("config key typo", T_ARGS + ["--config", "{typo_key}"], "unknown config key 'stepz' (did you mean 'steps'?)"),
    ("config value type", T_ARGS + ["--config", "{bad_type}"], "config key 'lr' must be of type float"),
    ("malformed config", T_ARGS + ["--config", "{bad_toml}"], "cannot read config file"),
    ("missing config", T_ARGS + ["--config", "/no/such.toml"], "does not exist"),
    ("config of a list", T_ARGS + ["--config", "{list_config}"], "holds a list; expected an object"),
    ("config is a folder", T_ARGS + ["--config", "{empty}"], "is a folder"),
    ("unknown device", T_ARGS + ["--device", "gpu"], "unknown device 'gpu'"),
    ("unknown precision", T_ARGS + ["--precision", "fp8"], "unknown precision 'fp8'; valid choices: bf16, fp32"),
    ("unknown built-in data", T_ARGS + ["--data", "photos"], "expected 'digits', 'photos32', 'fashion-mnist', a folder"),
    ("output is a file", T_ARGS + ["--out", "{afile}"], "cannot write to output folder"),
    ("resume another run's folder without a checkpoint", T_ARGS + ["--out", "{other_run}", "--resume"],
     "(no checkpoint yet) is a run with T=60 but this run has T=50"),
    ("train again into a run", ["train", "--out", "{run}", "--T", "50", "--steps", "1", "--no-progress"],
     "already holds a training run: --resume continues it, --overwrite starts it again"),
    ("resume with another T", ["train", "--out", "{run}", "--resume", "--T", "60", "--no-progress"], "T"),
    ("resume with another schedule", ["train", "--out", "{run}", "--resume", "--T", "50", "--schedule", "cosine",
                                      "--no-progress"], "schedule='linear' but this run has schedule='cosine'"),
    ("resume with another model", ["train", "--out", "{run}", "--resume", "--T", "50", "--model", "small",
                                   "--no-progress"], "model='tiny' but this run has model='small'"),
    ("resume below the run's step", ["train", "--out", "{run}", "--resume", "--T", "50", "--steps", "1",
                                     "--no-progress"], "(step_00000002) is past --steps 1; give --steps 2 or more"),
    ("evaluate nothing", ["evaluate", "--checkpoint", "/no/such/run"], "no checkpoint at '/no/such/run'"),
    ("sample zero images", ["sample", "--checkpoint", "{run}", "--num", "0", "--out", "x.png"], "--num must be >= 1"),
    ("unknown sampling method", ["sample", "--checkpoint", "{run}", "--method", "euler", "--out", "{empty}/x.png",
                                 "--num", "1"], "valid choices: ddim, ddpm"),
    ("plot an unknown method", ["plot-samplers", "--methods", "uniform,sped", "--out", "{empty}/p.png"],
     "unknown method 'sped'"),
    ("plot nothing", ["plot-samplers", "--methods", "", "--flow-methods", "", "--out", "{empty}/p.png"],
     "nothing to plot"),
    ("plot into a folder", ["plot-samplers", "--methods", "uniform", "--out", "{empty}"], "is a folder"),
    ("more DDIM steps than T", ["sample", "--checkpoint", "{run}", "--method", "ddim", "--steps", "51", "--num", "1",
                                "--out", "{empty}/x.png"], "more DDIM steps than the run's T = 50"),
    ("sample into a folder", ["sample", "--checkpoint", "{run}", "--num", "1", "--out", "{empty}"], "is a folder"),
    ("sample on a device not here", ["sample", "--checkpoint", "{run}", "--num", "1", "--device", "cuda:99",
                                     "--out", "{empty}/x.png"], "is not available on this machine"),
    ("analyse a flow run", ["analyze", "timestep-loss", "--run", "{flow_run}", "--out", "{empty}/a"],
     "take DDPM runs only"),
    ("analyse a file as a run", ["analyze", "timestep-loss", "--run", "{afile}", "--out", "{empty}/a"],
     "is a file; expected the --out folder of a training run"),
    ("reward signal of one group", ["analyze", "reward-signal", "--run", "{run}", "--groups", "1",
                                    "--out", "{empty}/a"], "--groups must be >= 2"),
    ("interdependence at a negative lr", ["analyze", "interdependence", "--run", "{run}", "--lr", "-1",
                                          "--out", "{empty}/a"], "--lr must be a finite number > 0"),
    ("report records that are not there", ["bench", "--records", "/no/such/records", "--report-only",
                                           "--out", "{empty}/b"], "is not a folder"),
    ("a step-cost file that is not one", ["bench", "--records", "{empty}", "--report-only", "--step-cost", "{afile}",
                                          "--out", "{empty}/b"], "is not a step-cost file"),
]


@pytest.mark.parametrize("argv, message", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_a_mistake_is_one_line_and_status_2(argv, message, run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {**files(tmp_path), "run": str(run)}
    argv = [a.format(**names) for a in argv]
    if "--out" not in argv and argv[0] == "train":
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_the_module_twin_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "timestep_sampling", "train", "--method", "unifrom", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: unknown method"), result.stderr


def test_a_corrupt_checkpoint_names_the_file_and_an_older_one_still_works(run, tmp_path, capsys):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    newest = sorted((copy / "checkpoints").iterdir())[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert main(["evaluate", "--checkpoint", str(newest), "--estimate", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and err.count("\n") == 1, err
    older = sorted((copy / "checkpoints").iterdir())[-2]
    assert main(["evaluate", "--checkpoint", str(older), "--estimate", "--no-progress"]) == 0


def test_resume_on_an_empty_folder_starts_from_step_0_with_one_notice(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(T_ARGS + ["--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    notices = [ln for ln in captured.out.splitlines() if "no checkpoint" in ln]
    assert len(notices) == 1 and "starting from step 0" in notices[0], captured.out
    assert json.loads((out / "config.json").read_text())["steps"] == 1 and captured.err == ""


def test_the_speed_flags_reach_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    cheap = write(tmp_path / "cheap.json", json.dumps({"final_exact": False, "eval_exact_below": 0, "eval_strata": 2}))
    assert main(T_ARGS + ["--out", str(out), "--config", cheap, "--precision", "bf16", "--channels-last"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["precision"], config["channels_last"], config["compile"]) == ("bf16", True, False)
    assert "bf16 autocast, channels-last" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [b"garbage", b"", b"PK\x03\x04 truncated zip"], ids=["text", "empty", "truncated"])
def test_a_damaged_checkpoint_file_is_named_not_a_traceback(damage, run, tmp_path, capsys):
    # torch.load of a non-pickle raises UnpicklingError, which no other except clause caught
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoints = sorted((copy / "checkpoints").iterdir())
    (checkpoints[-1] / "state.pt").write_bytes(damage)
    assert main(["evaluate", "--checkpoint", str(checkpoints[-1]), "--estimate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state.pt is unreadable or corrupted" in err, err
    assert f"an earlier checkpoint may still be usable: {checkpoints[-2]}" in err, err


def test_overwrite_starts_a_run_again_without_the_old_checkpoints(run, tmp_path):
    # a fresh start that left the old run's later checkpoints would let a --resume continue the other run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert [p.name for p in sorted((copy / "checkpoints").iterdir())] == ["step_00000001", "step_00000002"]
    argv = ["train", "--out", str(copy), "--steps", "1", "--T", "50", "--batch-size", "8", "--num-samples", "0",
            "--eval-every", "0", "--checkpoint-every", "1", "--warmup", "1", "--no-progress"]
    assert main(argv + ["--overwrite"]) == 0
    assert [p.name for p in sorted((copy / "checkpoints").iterdir())] == ["step_00000001"]
    assert [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()][-1] == 1
