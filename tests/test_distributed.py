"""The trainer on several processes (torch.distributed, gloo on the CPU): every rank holds the same model
and sampler, the global batch is the one batch of one process, a checkpoint moves between world sizes,
and a failing rank ends the whole job.

Most tests fork 2 ranks of `Trainer` (tests/multiproc.run_ranks: one thread each, with a deadline); two
start the real launcher, `python -m torch.distributed.run` (which is `torchrun`), on the command line.
The data are a small .npz (128 train, 8 test images of 8x8) so that the evaluations the trainer always
runs (at step 0 and at the end) cost little.
"""
import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multiproc import run_ranks
from timestep_sampling.checkpoint import latest_checkpoint, list_checkpoints
from timestep_sampling.config import make_config
from timestep_sampling.data import batch_indices
from timestep_sampling.diffusion import mse_per_sample
from timestep_sampling.models import make_unet
from timestep_sampling.train import Trainer

make_unet(8, 1)  # imports diffusers (seconds) here, once, so that the forked ranks need not

SAMPLERS = {"uniform": "uniform", "loss-second-moment": "loss-second-moment:history=1",
            "adaptive": "adaptive:update_every=5", "adaptive-paper": "adaptive:reward=paper,update_every=5",
            "credit-proportional": "credit-proportional:update_every=5",
            "adaptive-bands": "adaptive-bands:update_every=5",
            "adaptive-bands-heldout": "adaptive-bands:update_every=5,holdout=0.1",
            "flow-adaptive": "flow-adaptive:update_every=5"}
# a flow run with an evaluation too cheap to matter (there is none: eval_every=0) and its own objective
OBJECTIVE = {"flow-adaptive": "flow:eval_images=4,eval_steps=1,final_steps=1"}
TORCHRUN_TIMEOUT = 180  # s; a job that hangs fails the test instead of the suite


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (128, 8, 8), dtype=np.uint8),
             x_test=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8))
    return str(path)


def tiny(out, data, **overrides):
    base = dict(data=data, out=str(out), steps=15, T=100, batch_size=16, eval_every=0, checkpoint_every=10,
                final_exact=False, num_samples=0, log_every=5, warmup=5, keep_checkpoints=5, device="cpu")
    base.update(overrides)
    return base


def state_of(trainer: Trainer) -> dict:
    """A copy of the trainer's state (state_dict()s hold references to live tensors)."""
    return copy.deepcopy({"model": trainer.net.state_dict(), "ema": trainer.ema.state_dict(),
                          "optimizer": trainer.opt.state_dict(), "sampler": trainer.sampler.state_dict(),
                          "step": trainer.step, "skipped": trainer.skipped_total, "world": trainer.world})


def cpu_only():
    """These forked ranks are CPU ranks. On a machine with a GPU a forked child cannot initialise CUDA once
    the parent has called into the driver (torch.cuda.is_available() does), and Adam's step asks whether
    CUDA is capturing a graph: tell this child, and only it, that there is no GPU."""
    torch.cuda.is_available = lambda: False


def fit_worker(rank, dump, cfg, resume, nan_on_rank1_at):
    """One rank of a Trainer run: its state after construction and after fit() go to dump/rank{r}.pt.
    On a fresh run rank 1's `out` is a folder that must never appear: only rank 0 writes."""
    cpu_only()
    if rank > 0 and not resume:
        cfg = {**cfg, "out": f"{dump}/rank{rank}_must_not_write"}
    trainer = Trainer(make_config(**cfg), resume=resume, progress=False)
    loaded = state_of(trainer)
    if rank == 1 and nan_on_rank1_at is not None:  # a non-finite loss on this rank only, at one step
        weights = trainer.weighting.weights
        trainer.weighting.weights = lambda t: weights(t) * (torch.nan if trainer.step == nan_on_rank1_at else 1.0)
    trainer.fit()
    torch.save({"loaded": loaded, **state_of(trainer)}, f"{dump}/rank{rank}.pt")


def run_fit(tmp_path, data, name, world_size=2, resume=False, nan_on_rank1_at=None, **overrides):
    """Trainer.fit() on `world_size` forked ranks (1 included: a one-process group, no DDP); each rank's state."""
    dump = tmp_path / f"{name}_dump{world_size}"
    dump.mkdir()
    run_ranks(fit_worker, str(dump), tiny(tmp_path / name, data, **overrides), resume, nan_on_rank1_at,
              init_file=dump / "init", world_size=world_size)
    assert not any(dump.glob("rank*_must_not_write"))
    return [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def assert_identical(a, b, where=""):
    """Bit-identical nested state (tensors, numbers, strings, lists, dicts)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def loss_steps(out):
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


# ----------------------------------------------------------------------------------------------------
# Every rank holds the same state


# The adaptive sampler's run also checks the model, EMA and optimiser; the other two samplers are slow-only
# (tests/test_samplers.py already checks the loss-second-moment gather on two ranks).
@pytest.mark.parametrize("sampler", [pytest.param("uniform", marks=pytest.mark.slow),
                                     pytest.param("loss-second-moment", marks=pytest.mark.slow), "adaptive",
                                     pytest.param("adaptive-paper", marks=pytest.mark.slow),
                                     pytest.param("credit-proportional", marks=pytest.mark.slow),
                                     pytest.param("adaptive-bands", marks=pytest.mark.slow),
                                     pytest.param("adaptive-bands-heldout", marks=pytest.mark.slow),
                                     pytest.param("flow-adaptive", marks=pytest.mark.slow)])
def test_ranks_hold_bit_identical_model_and_sampler(tmp_path, data, sampler):
    extra = {"objective": OBJECTIVE[sampler], "method": "flow-uniform"} if sampler in OBJECTIVE else {}
    ranks = run_fit(tmp_path, data, "run", sampler=SAMPLERS[sampler], **extra)
    a, b = ranks
    assert a["step"] == b["step"] == 15 and a["world"] == 2
    for key in ("model", "ema"):
        assert_identical(a[key], b[key], key)
    assert_identical(a["optimizer"]["state"], b["optimizer"]["state"], "optimizer")
    assert_identical(a["sampler"], b["sampler"], "sampler")
    if sampler.startswith("adaptive-bands"):  # 3 policy steps on the credits of both ranks, the same logits on both
        assert a["sampler"]["updates"] == 3 and a["sampler"]["skipped_updates"] == 0
        assert a["sampler"]["theta"].abs().max() > 0
    elif "adaptive" in sampler:  # 3 updates (observe steps 0, 5, 10), the same policy on both ranks
        assert a["sampler"]["updates"] == 3 and a["sampler"]["skipped_updates"] == 0
        assert not torch.equal(a["sampler"]["policy"]["raw"], a["loaded"]["sampler"]["policy"]["raw"])  # it learnt
    if sampler == "credit-proportional":  # the credits of both ranks went into one set of band means
        assert a["sampler"]["updates"] == 3 and int(a["sampler"]["band_seen"].sum()) > 0
    if sampler == "adaptive-paper":  # one queue and one S on both ranks
        assert a["sampler"]["queue"]["features"].shape == (3, 50)  # the default scan: 50 strata of T = 100
        assert torch.equal(a["sampler"]["queue"]["features"], b["sampler"]["queue"]["features"])
        assert a["sampler"]["subset"] == b["sampler"]["subset"]
    if sampler == "loss-second-moment":  # each rank holds the losses of the whole global batch
        assert int(a["sampler"]["history"]["seen"].sum()) == 15 * 16
    # Rank 0 alone wrote: one log, one set of checkpoints (rank 1's `out` was never created).
    assert loss_steps(tmp_path / "run") == [5, 10, 15]
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000010", "step_00000015"]


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path, data):
    # Step 3 is an update step of the adaptive sampler (K = 3): its probes ran, then the step is dropped.
    a, b = run_fit(tmp_path, data, "run", steps=8, sampler="adaptive:update_every=3", nan_on_rank1_at=3)
    assert a["skipped"] == b["skipped"] == 1
    # The skipped step taught the sampler nothing and was not counted: 7 observed steps, updates at 0, 3, 6.
    assert a["sampler"]["step"] == 7 and a["sampler"]["updates"] == 3
    for key in ("model", "ema"):
        assert_identical(a[key], b[key], key)
    assert_identical(a["sampler"], b["sampler"], "sampler")


# ----------------------------------------------------------------------------------------------------
# 2 ranks x B/2 is 1 rank x B


def gradient_worker(rank, dump, cfg):
    """The gradient of one step's loss on the global batch of step 0, with the timesteps and noise of each
    item fixed by the test, so that 1 rank and 2 ranks see the same (x0, t, ε) per item."""
    cpu_only()
    trainer = Trainer(make_config(**cfg), progress=False)
    B, world = trainer.cfg.batch_size, trainer.world
    idx = batch_indices(len(trainer.train_x), B, 0, trainer.cfg.seed, trainer.rank, world)
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, trainer.cfg.T, (B,), generator=g)[trainer.rank::world]  # the items' order in the
    noise = torch.randn((B,) + tuple(trainer.data.shape), generator=g)[trainer.rank::world]  # global batch
    trainer.model.train()
    mse = mse_per_sample(trainer.model, trainer.schedule, trainer.train_x[idx], t, noise)
    loss = (mse * trainer.weighting.weights(t)).mean()
    loss.backward()  # under DDP: the gradient averaged over ranks
    grads = {name: p.grad.clone() for name, p in trainer.net.named_parameters()}
    torch.save({"loss": loss.item(), "grads": grads}, f"{dump}/rank{rank}.pt")


def test_two_ranks_of_half_the_batch_give_the_gradient_of_one_rank_of_the_whole_batch(tmp_path, data):
    """Per-rank batches differ by construction (rank r takes items r, r + N, ... of the global batch, and
    draws its own t and ε), so whole runs on 1 and 2 ranks are not comparable step by step. What must hold
    is that one step on N ranks of B/N items is the step of one process on the B items: here with (t, ε)
    pinned per item and dropout off. The model has no batch statistics (GroupNorm), so each item's loss is
    the same either way; only float32 summation order differs (one mean of 16 against the mean of two means
    of 8, and DDP's bucketed all-reduce), so gradients agree to about 1e-6 of their scale (measured: largest
    difference 3e-7, largest entry 0.28), not bit for bit. Tolerance: 1e-5 relative plus 1e-5 of the largest
    entry absolute; a mistake in the split or the averaging (a sum for a mean, a rank left out) is off by
    tens of percent."""
    cfg = tiny(tmp_path / "run", data, dropout=0.0)
    results = {}
    for world in (1, 2):
        dump = tmp_path / f"grad{world}"
        dump.mkdir()
        run_ranks(gradient_worker, str(dump), {**cfg, "out": str(dump)}, init_file=dump / "init",
                  world_size=world)
        results[world] = [torch.load(dump / f"rank{r}.pt") for r in range(world)]
    (one,), (r0, r1) = results[1], results[2]
    assert_identical(r0["grads"], r1["grads"], "grads")  # DDP: both ranks hold the same averaged gradient
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(one["loss"], rel=1e-6)
    scale = max(g.abs().max().item() for g in one["grads"].values())
    for name, g in one["grads"].items():
        torch.testing.assert_close(r0["grads"][name], g, rtol=1e-5, atol=1e-5 * scale, msg=name)


# ----------------------------------------------------------------------------------------------------
# A checkpoint from N ranks resumes on M


@pytest.mark.parametrize("before, after", [pytest.param(2, 1, marks=pytest.mark.slow), (1, 2)], ids=["2to1", "1to2"])
def test_a_checkpoint_from_n_ranks_resumes_on_m(tmp_path, data, before, after):
    sampler = "adaptive:update_every=3"
    run_fit(tmp_path, data, "run", world_size=before, steps=10, sampler=sampler)
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint.name == "step_00000010"
    assert json.loads((checkpoint / "meta.json").read_text())["world_size"] == before
    saved_weights, saved_state = load_file(checkpoint / "model.safetensors"), torch.load(checkpoint / "state.pt")

    ranks = run_fit(tmp_path, data, "run", world_size=after, resume=True, steps=15, sampler=sampler)
    for state in ranks:  # every rank starts from exactly what was saved
        assert_identical(state["loaded"]["model"], saved_weights, "model")
        assert_identical(state["loaded"]["optimizer"], saved_state["optimizer"], "optimizer")
        assert_identical(state["loaded"]["sampler"], saved_state["sampler"], "sampler")
        assert state["loaded"]["step"] == 10 and state["step"] == 15
    assert ranks[0]["sampler"]["updates"] == 5  # observe steps 0, 3, 6, 9, 12
    if after == 2:
        assert_identical(ranks[0]["model"], ranks[1]["model"], "model")
        assert_identical(ranks[0]["sampler"], ranks[1]["sampler"], "sampler")
    assert loss_steps(tmp_path / "run") == [5, 10, 15]
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last.name == "step_00000015" and json.loads((last / "meta.json").read_text())["world_size"] == after


# ----------------------------------------------------------------------------------------------------
# The real launcher


def torchrun(args, cwd, script=None, launcher="torch.distributed.run"):
    """`python -m torch.distributed.run --standalone --nproc-per-node=2` (torchrun), or another launcher module
    taking its arguments, on `script` or on the package (`-m timestep_sampling`); fails the test if the job does
    not end in time."""
    target = [str(script)] if script else ["-m", "timestep_sampling"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-m", launcher, "--standalone", "--nproc-per-node=2",
                               *target, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TORCHRUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-process job did not end in {TORCHRUN_TIMEOUT} s:\n{e.stderr}")


def cli_args(out, data, steps):
    config = out.parent / "config.toml"
    config.write_text("final_exact = false\nlog_every = 5\nwarmup = 5\n")
    return ["train", "--config", str(config), "--data", data, "--out", str(out), "--steps", str(steps), "--T", "100",
            "--batch-size", "16", "--eval-every", "5", "--checkpoint-every", "5", "--num-samples", "0",
            "--device", "cpu", "--no-progress"]


def test_torchrun_trains_on_two_processes_and_rank_zero_alone_writes(tmp_path, data):
    out = tmp_path / "run"
    done = torchrun(cli_args(out, data, steps=10), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("2 process(es)") == 1  # rank 0 alone prints
    assert json.loads((out / "config.json").read_text())["batch_size"] == 16  # the global batch
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    # One line per event: two writers would have doubled them (and raced on the checkpoints).
    assert [r["step"] for r in records if "loss" in r] == [5, 10]
    assert [r["step"] for r in records if "test_bpd" in r] == [0, 5, 10]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000005", "step_00000010"]
    assert json.loads((latest_checkpoint(out / "checkpoints") / "meta.json").read_text())["world_size"] == 2
    assert {"checkpoints", "config.json", "metrics.jsonl", "samples"} <= {p.name for p in out.iterdir()}


FAIL_ON_RANK_1 = """
    import os, sys
    from timestep_sampling import cli
    from timestep_sampling.train import Trainer

    if os.environ["RANK"] == "1":  # this test's wrapper, not the library, reads the launcher's RANK
        original = Trainer.train_step

        def train_step(self):
            if self.step == 3:
                raise RuntimeError("injected failure on rank 1 at step 3")
            return original(self)

        Trainer.train_step = train_step
    sys.exit(cli.main())
"""


def test_a_rank_that_fails_ends_the_whole_job_with_its_error(tmp_path, data):
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(textwrap.dedent(FAIL_ON_RANK_1))
    done = torchrun(cli_args(tmp_path / "run", data, steps=10), cwd=tmp_path, script=script)
    assert done.returncode != 0
    assert "RuntimeError: injected failure on rank 1 at step 3" in done.stderr


@pytest.mark.slow
def test_a_user_mistake_under_torchrun_is_one_error_line_per_process(tmp_path, data):
    done = torchrun(["train", "--data", data, "--out", str(tmp_path / "run"), "--sampler", "bogus", "--device", "cpu"],
                    cwd=tmp_path)
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and all(ln.startswith("error: unknown sampler 'bogus'") for ln in errors), done.stderr
    assert "UserError" not in done.stderr  # no traceback from the processes (torchrun prints its own summary)


MISSING_DATA = ["train", "--data", "/nonexistent", "--steps", "2", "--device", "cpu", "--no-progress"]
MISSING_DATA_LINE = "error: data path '/nonexistent' does not exist"


def test_a_user_mistake_under_torchrun_is_status_2_in_every_rank_and_1_from_torchrun_itself(tmp_path):
    """torchrun's elastic agent turns any failed worker into exit status 1 (it cannot be told otherwise);
    what the trainer owes is that every rank stops at once on the mistake with its one line and status 2."""
    done = torchrun(MISSING_DATA + ["--out", str(tmp_path / "run")], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and all(ln.startswith(MISSING_DATA_LINE) for ln in errors), done.stderr
    assert "exitcode  : 2" in done.stderr and "UserError" not in done.stderr  # torchrun's summary: each rank's 2


def test_a_user_mistake_under_the_launcher_exits_2_with_one_line_per_process(tmp_path):
    """`python -m timestep_sampling.launch` takes torchrun's arguments and passes the status 2 through."""
    done = torchrun(MISSING_DATA + ["--out", str(tmp_path / "run")], cwd=tmp_path, launcher="timestep_sampling.launch")
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert 1 <= len(errors) <= 2 and all(ln.startswith(MISSING_DATA_LINE) for ln in errors), done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_reports_a_user_mistake_without_waiting_for_its_peers(tmp_path):
    """Rank 0 of 2 whose peer never starts: the input is checked before the process group forms, so the
    mistake is reported at once (before, rank 0 waited in init_process_group for a peer that had stopped)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    try:
        done = subprocess.run([sys.executable, "-m", "timestep_sampling", *MISSING_DATA, "--out", str(tmp_path / "run")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("rank 0 waited for its peer instead of reporting the missing data")
    assert done.returncode == 2 and done.stderr.startswith(MISSING_DATA_LINE) and done.stderr.count("\n") == 1, \
        done.stderr
