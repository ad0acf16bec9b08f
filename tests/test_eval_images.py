"""`eval_images`: a run's bits/dim scored on the first N test images (the same N at every checkpoint, in the
trainer, `evaluate` and the bench's own estimates), a grid setting that keeps records of other subsets apart
(records made before it read as the whole split), and its mistakes as one-line errors."""
import importlib.util
import json
from pathlib import Path

import pytest

from timestep_sampling import bench, cli
from timestep_sampling.bench import records as bench_records
from timestep_sampling.bench.runner import run_config
from timestep_sampling.bench.scoring import estimate_checkpoint
from timestep_sampling.checkpoint import latest_checkpoint
from timestep_sampling.config import make_config
from timestep_sampling.errors import UserError
from timestep_sampling.evaluate import evaluate
from timestep_sampling.train import train

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def short_run(out, **overrides):
    cfg = make_config(**{**dict(out=str(out), steps=6, T=50, batch_size=16, eval_every=3, checkpoint_every=3,
                                final_exact=False, num_samples=0, log_every=3, warmup=2), **overrides})
    train(cfg, progress=False)
    lines = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return cfg, [r for r in lines if "test_bpd" in r]


def test_the_trainer_scores_the_first_n_test_images_as_evaluate_and_the_bench_do(tmp_path):
    cfg, evals = short_run(tmp_path / "run", eval_images=8)
    final = evals[-1]
    assert [e["step"] for e in evals] == [0, 3, 6] and final["bpd_method"] == "estimate"
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    # evaluate's default is the run's own images; --images 8 says the same; the whole split is another number
    assert evaluate(checkpoint, exact=False, progress=False).bpd == pytest.approx(final["test_bpd"], abs=1e-12)
    assert evaluate(checkpoint, exact=False, images=8, progress=False).bpd == pytest.approx(final["test_bpd"], abs=1e-12)
    assert evaluate(checkpoint, exact=False, images=16, progress=False).bpd != pytest.approx(final["test_bpd"], abs=1e-6)
    assert estimate_checkpoint(checkpoint, cfg, "cpu") == pytest.approx(final["test_bpd"], abs=1e-12)
    # and the exact bound at the end covers the same 8 images
    _, exact = short_run(tmp_path / "exact", eval_images=8, final_exact=True, steps=3, eval_every=0)
    ckpt = latest_checkpoint(tmp_path / "exact" / "checkpoints")
    assert exact[-1]["bpd_method"] == "exact"
    assert evaluate(ckpt, exact=True, progress=False).bpd == pytest.approx(exact[-1]["test_bpd"], abs=1e-12)


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "8"])
def test_eval_images_must_be_a_positive_integer(value):
    with pytest.raises(UserError, match="eval_images"):  # a wrong type: make_config's own message names the key
        make_config(eval_images=value)
    with pytest.raises(UserError, match="--eval-images must be an integer >= 1"):
        bench.make_settings("out", methods="uniform", schedules="linear", eval_images=value)


def test_more_eval_images_than_the_test_split_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--steps", "1", "--T", "20", "--eval-images", "298",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval_images 298 exceeds the test split of 'digits' (297 images)" in err, err
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--eval-images", "0", "--no-progress"]) == 2
    assert "eval_images must be an integer >= 1" in capsys.readouterr().err


def test_the_grid_key_keeps_other_subsets_apart_and_old_records_read_as_the_whole_split(tmp_path):
    whole = bench.make_settings(tmp_path, methods="uniform", schedules="linear", records=str(tmp_path))
    subset = bench.make_settings(tmp_path, methods="uniform", schedules="linear", records=str(tmp_path), eval_images=500)
    assert bench_records.grid_key(subset)["eval_images"] == 500 and bench_records.grid_key(whole)["eval_images"] is None
    assert run_config(subset, "uniform", "linear", 0).eval_images == 500
    assert run_config(whole, "uniform", "linear", 0).eval_images is None
    evals = [{"method": "uniform", "schedule": "linear", "seed": 0, "step": 3000, "bpd_method": "exact",
              "test_bpd": 3.1}]
    old_grid = {k: v for k, v in bench_records.grid_key(whole).items() if k != "eval_images"}  # made before the key
    name = bench_records.run_name("uniform", "linear", 0)
    bench_records.rewrite_record(bench_records.record_path(tmp_path, name),
                                 {"grid": old_grid, "method": "uniform", "schedule": "linear", "seed": 0,
                                  "evals": evals})
    assert bench_records.read_record(tmp_path, name, whole) is not None
    assert bench_records.read_record(tmp_path, name, subset) is None
    bench_records.write_record(tmp_path / "sub", name, subset, {"method": "uniform", "schedule": "linear", "seed": 0,
                                                               "evals": evals})
    assert bench_records.read_record(tmp_path / "sub", name, subset) is not None
    assert bench_records.read_record(tmp_path / "sub", name, whole) is None


def test_the_fashion_grid_command_asks_for_its_own_settings(monkeypatch, tmp_path):
    """benchmarks/grids.py's `fashion`, through run_cells' one-cell command and the real CLI: the same grid key
    (eval_images included) as the grid's settings, so its records are the grid's."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("run_cells", BENCHMARKS / "run_cells.py")
    run_cells = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_cells)
    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda settings: seen.append(settings) or (_ for _ in ()).throw(SystemExit))
    command = run_cells.bench_command("fashion", ("uniform", "linear", 0), tmp_path / "records", tmp_path / "out")
    with pytest.raises(SystemExit):
        cli.main(command[3:])
    (settings,) = seen
    expected = run_cells.grid_settings("fashion", ["uniform"], ["linear"], [0])
    assert bench_records.grid_key(settings) == bench_records.grid_key(expected)
    assert settings.data == "fashion-mnist" and settings.eval_images == run_cells.GRIDS["fashion"]["eval_images"]
    assert settings.fd_steps("ddpm") == expected.fd_steps("ddpm")


def test_fd_ddpm_at_names_the_ancestral_checkpoints(tmp_path, capsys):
    """⅓ and ½ of a run and its end: three ancestral FDs where every multiple of steps / 6 would be six."""
    settings = bench.make_settings(tmp_path, steps=3000, eval_every=500, fd_ddpm_at="1500,1000,1000")
    assert settings.fd_ddpm_at == (1000, 1500)
    assert settings.fd_steps("ddpm") == [1000, 1500, 3000] and settings.fd_steps("ddim") == [500, 1000, 1500, 2000,
                                                                                             2500, 3000]
    assert bench.make_settings(tmp_path, fd_ddpm_at=[3000]).fd_steps("ddpm") == [3000]
    for bad, message in (("1000,1200", "1200 is not one"), ("3500", "3500 is not one"), ("x", "comma-separated"),
                         ("", "is empty")):
        with pytest.raises(UserError, match=message):
            bench.make_settings(tmp_path, steps=3000, eval_every=500, fd_ddpm_at=bad)
    with pytest.raises(UserError, match="not both"):
        bench.make_settings(tmp_path, fd_ddpm_at="1000", fd_ddpm_every=1000)
    with pytest.raises(UserError, match="add ddpm to --fd-samplers"):
        bench.make_settings(tmp_path, fd_samplers="ddim", fd_ddpm_at="1000")
    assert cli.main(["bench", "--out", str(tmp_path / "b"), "--fd-ddpm-at", "1000,1250"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1250 is not one" in err, err
