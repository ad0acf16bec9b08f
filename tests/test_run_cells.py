"""benchmarks/run_cells.py: it finds the cells a grid lacks, its one-cell commands make records the grid's
report takes, its deadline stops new cells (not running ones), and a failed cell is reported."""
import datetime as dt
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from timestep_sampling import bench, cli
from timestep_sampling.bench import records as bench_records
from timestep_sampling.errors import UserError

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def run_cells(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: its folder first on the path
    spec = importlib.util.spec_from_file_location("run_cells", BENCHMARKS / "run_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deadline_is_the_nearest_such_clock_time_or_minutes_from_now(run_cells):
    now = dt.datetime(2026, 12, 4, 23, 0)
    assert run_cells.parse_deadline("00:27", now) == dt.datetime(2026, 12, 5, 0, 27)
    assert run_cells.parse_deadline("23:30", now) == dt.datetime(2026, 12, 4, 23, 30)
    # a deadline minutes ago has passed (not tomorrow's), also across midnight
    assert run_cells.parse_deadline("22:14", now) == dt.datetime(2026, 12, 4, 22, 14)
    assert run_cells.parse_deadline("23:50", dt.datetime(2026, 12, 5, 0, 10)) == dt.datetime(2026, 12, 4, 23, 50)
    assert run_cells.parse_deadline("+90", now) == dt.datetime(2026, 12, 5, 0, 30)
    assert run_cells.parse_deadline(None, now) is None
    for bad in ("25:00", "soon", "+x"):
        with pytest.raises(UserError, match="HH:MM or \\+MINUTES"):
            run_cells.parse_deadline(bad, now)


def test_missing_cells_skip_what_the_folder_records(run_cells, tmp_path):
    recorded = bench_records.run_name("uniform", "linear", 1)
    shutil.copy(run_cells.DOCS_BENCH / "ancestral3k" / f"{recorded}.json", tmp_path)
    settings = run_cells.grid_settings("ancestral3k", ["uniform", "min-snr"], ["linear"], [0, 1])
    assert run_cells.missing_cells(settings, tmp_path) == [
        ("uniform", "linear", 0), ("min-snr", "linear", 0), ("min-snr", "linear", 1)]
    # under another grid's settings the same file is not that grid's record
    other = run_cells.grid_settings("ancestral10k", ["uniform"], ["linear"], [1])
    assert run_cells.missing_cells(other, tmp_path) == [("uniform", "linear", 1)]


@pytest.mark.parametrize("grid, cell", [("ancestral10k", ("lognormal-edm", "linear", 2)),
                                        ("flow3k", ("flow-adaptive", "flow", 1))])
def test_one_cell_command_trains_under_the_grids_settings(run_cells, monkeypatch, tmp_path, grid, cell):
    """The command, read by the real CLI, asks for exactly this cell under settings whose grid key is the
    grid's own: the record it writes is one the grid's report takes."""
    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda settings: seen.append(settings) or (_ for _ in ()).throw(SystemExit))
    command = run_cells.bench_command(grid, cell, tmp_path / "records", tmp_path / "out")
    assert command[1:4] == ["-m", "timestep_sampling", "bench"]
    with pytest.raises(SystemExit):
        cli.main(command[3:])
    (settings,) = seen
    assert settings.grid() == [cell]
    assert settings.records == str(tmp_path / "records") and not settings.progress
    expected = run_cells.grid_settings(grid, [cell[0]], [cell[1]], [cell[2]])
    assert bench_records.grid_key(settings) == bench_records.grid_key(expected)
    assert settings.samplers == expected.samplers and settings.fd_steps("ddpm") == expected.fd_steps("ddpm")


def job(tmp_path, name, code):
    return name, [sys.executable, "-c", code], tmp_path / "logs" / f"{name}.log"


def test_lanes_run_every_job_with_one_thread_and_report_failures(run_cells, tmp_path):
    said = []
    jobs = [job(tmp_path, "a", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"),
            job(tmp_path, "b", "raise SystemExit(3)"),
            job(tmp_path, "c", "print('ran c')")]
    status = run_cells.run_lanes(jobs, lanes=2, deadline=None, say=said.append)
    assert status == {"a": 0, "b": 3, "c": 0}
    assert (tmp_path / "logs" / "a.log").read_text().strip() == "threads 1"
    assert (tmp_path / "logs" / "c.log").read_text().strip() == "ran c"
    assert sum("start" in line for line in said) == 3


def test_no_job_starts_after_the_deadline(run_cells, tmp_path):
    said = []
    past = dt.datetime.now() - dt.timedelta(minutes=1)
    status = run_cells.run_lanes([job(tmp_path, "late", "open('ran', 'w')")], lanes=1, deadline=past, say=said.append)
    assert status == {"late": None}
    assert not (tmp_path / "logs").exists() and "skip late" in said[0]


def test_bad_grid_options_are_one_line_errors(run_cells, capsys):
    for argv, message in ((["flow3k", "--methods", "uniform"], "is for DDPM"),
                          (["ancestral3k", "--methods", "uniform", "--seeds", "-1"], "--seeds takes"),
                          (["ancestral3k", "--methods", "uniform", "--no-start-after", "noon"], "HH:MM")):
        with pytest.raises(SystemExit) as exit_:
            run_cells.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_final_control_recorded_without_its_learned_samplers_floor_is_missing(run_cells, tmp_path):
    """A `-final` record of the old control (the learned run's final Beta without its uniform floor) is not
    the control the name makes now: the runner lists it again, the report leaves it out."""
    learned = bench_records.run_name("adaptive-variance", "linear", 0)
    shutil.copy(run_cells.DOCS_BENCH / "ancestral3k" / f"{learned}.json", tmp_path)
    settings = run_cells.grid_settings("ancestral3k", ["adaptive-variance-final"], ["linear"], [0])
    settings = bench.make_settings(settings.out, methods=settings.methods, schedules=settings.schedules, seeds=1,
                                   records=str(tmp_path), progress=False, steps=settings.steps,
                                   eval_every=settings.eval_every, fd_samplers="ddim,ddpm", fd_ddpm_every=1500)
    spec = bench.frozen_final_method(settings, "adaptive-variance-final", "linear", 0)
    assert ",mix=0.05,unbiased=True" in spec
    name = bench_records.run_name("adaptive-variance-final", "linear", 0)
    record = {"method": "adaptive-variance-final", "schedule": "linear", "seed": 0,
              "trained_as": spec.replace(",mix=0.05", ""), "sampler": None,
              "evals": [{"method": "adaptive-variance-final", "schedule": "linear", "seed": 0, "step": 3000,
                         "bpd_method": "exact", "test_bpd": 2.9}]}
    bench_records.write_record(tmp_path, name, settings, record)
    assert run_cells.missing_cells(settings, tmp_path) == [("adaptive-variance-final", "linear", 0)]
    assert [r["method"] for r in bench.current_records(settings)] == ["adaptive-variance"]
    bench_records.write_record(tmp_path, name, settings, {**record, "trained_as": spec})
    assert run_cells.missing_cells(settings, tmp_path) == []
    assert sorted(r["method"] for r in bench.current_records(settings)) == ["adaptive-variance",
                                                                           "adaptive-variance-final"]
