"""The reference trainer: DDPM ε-prediction (or rectified flow: `objective = "flow"`, objectives.py) with
any timestep sampler and loss weighting, on one process or many (torchrun). It uses the library exactly
as a user's own loop would:
`sampler.sample()` → weighted MSE → `sampler.observe()` around the optimiser step → `sampler.update()`.

Every source of randomness is re-seeded from (seed, step, rank) at each step, and the batches are a
pure function of (seed, step), so a run resumed from a checkpoint continues bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import distributed as dist_utils
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import ImageDataset, batch_indices, load_data
from .devices import check_device
from .errors import UserError, require
from .methods import effective_specs, make_method, method_label
from .models import count_parameters, make_unet
from .objectives import make_objective
from .plotting import binned_flow_density, plot_density_over_training, sampler_learns, trained_density
from .schedule import NoiseSchedule


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row."""


class _SkipStep(Exception):
    """Raised inside the sampler's observe() block so that a non-finite step teaches it nothing."""


DENSITY_LOG = "sampler_density.jsonl"  # one line per evaluation: {"step": s, "density": [p_0, ..., p_{T-1}]}
DENSITY_IMAGES = 256  # a data-conditioned sampler's pmf is averaged over the first training images
PROBE_IMAGES = 64     # held-out images per credit probe (one per stratum of the 64-strata bound estimate)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 4099 + rank


def held_out_for_probe(train_x: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images to train on, images kept out of training for a sampler that probes the bound on held-out
    images, or None). The split depends on the seed only, so every rank and every resume sees the same."""
    if not fraction:
        return train_x, None
    held = max(1, round(fraction * len(train_x)))
    require(held < len(train_x), f"holdout={fraction} leaves no training images out of {len(train_x)}")
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed + 7_777_777)).to(train_x.device)
    return train_x[order[held:]], train_x[order[:held]]


def resolve_device(name: str) -> torch.device:
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = check_device("cuda" if name == "auto" else name)
    if device.type == "cuda" and device.index is None:  # "auto" or plain "cuda": this process's GPU under torchrun
        device = check_device(f"cuda:{dist_utils.local_rank()}")
    return device


def build_schedule(cfg: TrainConfig) -> NoiseSchedule:
    return NoiseSchedule(cfg.schedule, T=cfg.T, beta_start=cfg.beta_start, beta_end=cfg.beta_end)


def build_pair(cfg: TrainConfig, schedule: NoiseSchedule):
    """(sampler, weighting) from the method preset, with --sampler / --weighting overriding its parts: the
    library's make_method of that pair (one kind of time, the weighting paired to the sampler's credit)."""
    sampler_spec, weighting_spec = effective_specs(cfg.method, cfg.sampler, cfg.weighting)
    return make_method(f"{sampler_spec}+{weighting_spec}", schedule)


def build_method(cfg: TrainConfig, schedule: NoiseSchedule, data: ImageDataset):
    """build_pair's (sampler, weighting); samplers that score the bound themselves (adaptive) are told the
    data's quantisation."""
    sampler, weighting = build_pair(cfg, schedule)
    if hasattr(sampler, "configure_bound"):
        sampler.configure_bound(bins=data.bins, variance=cfg.variance)
    return sampler, weighting


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """The EMA's decay for its update after `n` earlier ones (n >= 1: the first update copies the weights).

    Without warm-up a decay of 0.999 leaves (0.999)^600 = 55 % of the random initial weights in the average
    after 600 steps, so a short run's EMA scores far worse than its training weights (600 digits steps, exact
    bound: 5.526 against 3.463 bits/dim; with this warm-up the EMA reads 3.403). The rule min(decay, (1 + n) / (10 + n)) is diffusers' EMAModel default (and
    latent diffusion's LitEma): early on it averages about the last n / 9 updates, then it is the
    configured decay (0.999 from n = 8991). Chosen over EDM2's power-function EMA because it keeps
    `ema_decay` meaning what it meant for long runs and adds no parameter; EDM2's average
    (1 - 1/n)^(γ + 1) with γ ≈ 8 is nearly the same curve early on, and its real gain, choosing the
    width after training, needs snapshots this trainer does not keep."""
    return min(decay, (1 + n) / (10 + n)) if warmup else decay


def ema_avg_fn(decay: float, warmup: bool):
    """AveragedModel's multi_avg_fn for this EMA rule. It reads the update count from AveragedModel's own
    `n_averaged` buffer, which is in the EMA's state_dict, so a resumed run continues the same schedule."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)  # bit for bit the EMA before the warm-up existed

    @torch.no_grad()
    def update(ema_params, model_params, n_averaged):
        get_ema_multi_avg_fn(ema_decay_at(int(n_averaged), decay, True))(ema_params, model_params, n_averaged)

    return update


def make_ema(net: torch.nn.Module, decay: float, warmup: bool) -> AveragedModel:
    return AveragedModel(net, multi_avg_fn=ema_avg_fn(decay, warmup), use_buffers=True)


def eval_split(cfg: TrainConfig, data: ImageDataset) -> torch.Tensor:
    """The test images the run's bits/dim are scored on: the first `cfg.eval_images` of the test split (the same
    images at every checkpoint, in every run and on any number of processes), or all of it."""
    if cfg.eval_images is None:
        return data.test
    require(cfg.eval_images <= len(data.test), f"eval_images {cfg.eval_images} exceeds the test split of "
                                               f"{data.name!r} ({len(data.test)} images); use at most {len(data.test)}")
    return data.test[:cfg.eval_images]


def build_model(cfg: TrainConfig, data: ImageDataset) -> torch.nn.Module:
    return make_unet(data.image_size, data.channels, preset=cfg.model, dropout=cfg.dropout)


def preflight(cfg: TrainConfig) -> ImageDataset:
    """Every check of the user's input that needs no other process, made before joining the process group,
    and the data it loads (the trainer reuses them). Under torchrun each rank makes the same checks, so an
    input mistake ends every rank at once with its one line and exit status 2, instead of surfacing after
    the group has formed, or never, on a rank left waiting for a peer that already stopped."""
    resolve_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's; the group it describes is not joined yet
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    schedule = build_schedule(cfg)
    build_pair(cfg, schedule)  # built again by the trainer, after its seeding; here only checked
    data = load_data(cfg.data)
    eval_split(cfg, data)
    require(cfg.batch_size <= len(data.train),
            f"batch_size {cfg.batch_size} is larger than the training set ({len(data.train)} images): every batch "
            f"would hold each image more than once; use at most {len(data.train)}")
    return data


AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


def training_forward(model, cfg: TrainConfig, device: torch.device):
    """The callable `model(x_t, t) -> ε` that the training step runs: `model`, compiled with cfg.compile,
    its forward pass under autocast with cfg.precision "bf16". Its output is cast back to float32, so the
    loss, the per-sample MSE the sampler learns from, and the backward pass's start are float32; the
    weights and the optimiser always are. Evaluation and the sampler's probes use the network itself."""
    forward = torch.compile(model) if cfg.compile else model
    dtype = AUTOCAST_DTYPES.get(cfg.precision)
    if dtype is None:
        return forward

    def autocast_forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            eps = forward(x, t)
        return eps.float()

    return autocast_forward


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True,
                 data: ImageDataset | None = None):
        self.cfg = cfg = dataclasses.replace(cfg)  # a copy: resuming may adopt the checkpoint's EMA rule
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        if cfg.batch_size % self.world:
            raise UserError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {self.world}")

        self.data = load_data(cfg.data) if data is None else data
        self.train_x = self.data.train.to(self.device)
        self.test_x = eval_split(cfg, self.data)[self.rank::self.world].to(self.device)  # split across ranks
        self.schedule = build_schedule(cfg)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.net = build_model(cfg, self.data).to(self.device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = self.net
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.forward = training_forward(self.model, cfg, self.device)
        self.ema = make_ema(self.net, cfg.ema_decay, cfg.ema_warmup)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        warmup = max(cfg.warmup, 1)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warmup))
        self.sampler, self.weighting = build_method(cfg, self.schedule, self.data)
        self.label = method_label(cfg.method, cfg.sampler, cfg.weighting)  # what this run trains, by name
        self.objective = make_objective(cfg, self.schedule, self.data.bins, self.sampler)
        self.train_x, self.probe_x = held_out_for_probe(self.train_x, getattr(self.sampler, "holdout", 0.0), cfg.seed)
        self.step, self.train_seconds, self.bad_steps, self.skipped_total = 0, 0.0, 0, 0
        self._logged_updates = getattr(self.sampler, "updates", None)
        if not (resume and self._resume()) and self.is_main:
            self._start_fresh()

    # ----- output -----------------------------------------------------------------------------
    def _start_fresh(self) -> None:
        """Step 0 in --out: an earlier run's checkpoints and logs there go (`train --overwrite`), or a later
        --resume would continue from a checkpoint of that other run."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
            (self.out / "samples").mkdir(exist_ok=True)
            self.cfg.save(self.out / "config.json")
            (self.out / "metrics.jsonl").write_text("")
            (self.out / DENSITY_LOG).unlink(missing_ok=True)
        except OSError as e:
            raise UserError(f"cannot write to output folder {str(self.out)!r} ({e.strerror or e})") from None

    def say(self, message: str, bar=None) -> None:
        """Print on rank 0 only, above the progress bar when there is one."""
        if self.is_main:
            (bar.write if bar is not None else print)(message)

    def log(self, record: dict, name: str = "metrics.jsonl") -> None:
        if self.is_main:
            with open(self.out / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def log_sampler_update(self) -> None:
        """One metrics line per policy update of a learning sampler: its α/β statistics, S, mean reward."""
        updates = getattr(self.sampler, "updates", None)
        if updates is not None and updates != self._logged_updates:
            self._logged_updates = updates
            self.log({"step": self.step, "sampler_update": updates, "sampler": self.sampler.last_stats})

    def log_density(self) -> None:
        """Append the sampler's current pmf over t (averaged over a fixed set of training images when it
        depends on the image) to DENSITY_LOG, for the density-over-training picture."""
        if not self.is_main:
            return
        if self.sampler.continuous:  # mass in equal bins of t ∈ (0, 1), marked so that readers label it so
            p = binned_flow_density(self.sampler)
            self.log({"step": self.step, "density": [round(v, 8) for v in p.tolist()], "continuous": True}, DENSITY_LOG)
            return
        p, _ = trained_density(self.sampler, self.train_x[:DENSITY_IMAGES])
        if p is not None:
            self.log({"step": self.step, "density": [round(v, 8) for v in p.tolist()]}, DENSITY_LOG)

    def plot_density(self) -> Path | None:
        """DIR/sampler_density.png, for samplers that learn (a fixed sampler's picture has nothing to show)."""
        path = self.out / DENSITY_LOG
        if not (self.is_main and sampler_learns(self.sampler) and path.exists()):
            return None
        records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        if len(records) < 2:
            return None
        return plot_density_over_training([r["step"] for r in records], [r["density"] for r in records],
                                          self.out / "sampler_density.png",
                                          title=f"{self.label}: sampler {self.sampler!r}",
                                          continuous=self.sampler.continuous)

    # ----- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "sampler": self.sampler.state_dict(), "step": self.step, "train_seconds": self.train_seconds,
                "skipped_total": self.skipped_total}

    def save(self) -> None:
        if not self.is_main:
            return
        meta = {"config": self.cfg.to_dict(), "data_shape": list(self.data.shape), "bins": self.data.bins,
                "schedule": self.schedule.to_config(), "world_size": self.world}
        save_checkpoint(self.out / "checkpoints", self.step, {"model": self.net.state_dict(),
                        "ema": self.ema.state_dict()}, self.state(), meta, keep=self.cfg.keep_checkpoints)

    def _resume(self) -> bool:
        """Continue from the last checkpoint; False when there is none yet (the run starts from step 0), so
        that a run killed before its first checkpoint restarts with the same command."""
        path = latest_checkpoint(self.out / "checkpoints")
        if path is None:
            check_same_run(self.out / "config.json", self.cfg)  # but not over another run's folder
            self.say(f"--resume: no checkpoint under {self.out / 'checkpoints'} yet; starting from step 0")
            return False
        weights, state, meta = load_checkpoint(path, map_location=self.device)
        check_compatible(meta, self.cfg, self.data)
        if state["step"] > self.cfg.steps:  # else it would skip training and evaluate the later model as final
            raise UserError(f"--resume: the last checkpoint ({path.name}) is past --steps {self.cfg.steps}; give "
                            f"--steps {state['step']} or more to continue this run, or a new --out to start one")
        if state["step"] == self.cfg.steps:
            self.say(f"--resume: the run is at --steps {self.cfg.steps} already; repeating its final evaluation")
        self.net.load_state_dict(weights["model"])
        self._adopt_ema_rule(meta["config"].get("ema_warmup", False))
        self.ema.load_state_dict(weights["ema"])  # with its update count, n_averaged
        self.opt.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.sampler.load_state_dict(state["sampler"])
        self._logged_updates = getattr(self.sampler, "updates", None)
        self.step, self.train_seconds = state["step"], state["train_seconds"]
        self.skipped_total = state.get("skipped_total", 0)
        if self.is_main:  # forget log lines written after the checkpoint: they will be written again
            for log in (self.out / "metrics.jsonl", self.out / DENSITY_LOG):
                _truncate_log(log, self.step)
            self.cfg.save(self.out / "config.json")
        return True

    def _adopt_ema_rule(self, warmup: bool) -> None:
        """Continue the EMA under the rule the checkpoint was trained with: switching mid-run would make it
        neither rule's average. A checkpoint written before the warm-up existed has no `ema_warmup` and
        continues with the constant decay it had, so it finishes as the old trainer would have finished it."""
        if warmup == self.cfg.ema_warmup:
            return
        self.say(f"--resume: the checkpoint's EMA {'has' if warmup else 'has no'} warm-up; continuing it so "
                 f"(ema_warmup={str(warmup).lower()})")
        self.cfg.ema_warmup = warmup
        self.ema.multi_avg_fn = ema_avg_fn(self.cfg.ema_decay, warmup)

    # ----- one step ---------------------------------------------------------------------------
    def _probe_images(self, gen: torch.Generator) -> dict:
        """observe()'s probe_x0: 64 held-out images, for a sampler built with holdout > 0 (drawn from the
        step's generator after the batch's noise, so the other draws are those of any other run)."""
        if self.probe_x is None:
            return {}
        idx = torch.randint(len(self.probe_x), (PROBE_IMAGES,), generator=gen)
        return {"probe_x0": self._layout(self.probe_x[idx.to(self.device)])}

    def train_step(self) -> float | None:
        """One optimiser step; returns the loss, or None if the step was skipped as non-finite."""
        cfg = self.cfg
        torch.manual_seed(step_seed(cfg.seed, self.step, self.rank))  # dropout
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.step, self.rank) + 1)
        idx = batch_indices(len(self.train_x), cfg.batch_size, self.step, cfg.seed, self.rank, self.world)
        x0 = self._layout(self.train_x[idx.to(self.device)])
        t, w = self.sampler.sample(len(x0), self.device, generator=gen, x0=x0)
        noise = self._layout(torch.randn(x0.shape, generator=gen).to(self.device))
        self.model.train()
        mse = None
        try:
            with self.sampler.observe(self.net, x0, optimizer=self.opt,  # its probes: the plain float32 network
                                      **self._probe_images(gen)):
                mse = self.objective.loss(self.forward, x0, t, noise)
                loss = (mse * w * self.weighting.weights(t)).mean()
                if not _all_finite(loss):
                    raise _SkipStep
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip or math.inf)
                if not _all_finite(grad_norm):
                    raise _SkipStep
                self.opt.step()
        except _SkipStep:
            self.opt.zero_grad(set_to_none=True)
            return self._skip()
        self.opt.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        self.ema.update_parameters(self.net)
        self.sampler.update(t, mse.detach())
        self.bad_steps = 0
        return loss.item()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the network's memory format (channels-last with --channels-last; same values)."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _skip(self) -> None:
        self.bad_steps += 1
        self.skipped_total += 1
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingDiverged(f"{self.bad_steps} non-finite losses or gradients in a row at step {self.step}; "
                                   f"try a lower --lr or stronger --grad-clip")
        return None

    # ----- evaluation -------------------------------------------------------------------------
    def evaluate(self, exact: bool, model: torch.nn.Module | None = None) -> float:
        """Test bits/dim of `model` (default the EMA model), each rank scoring its shard of the test set."""
        model = (self.ema.module if model is None else model).eval()
        # A rank whose shard is empty (more ranks than test images) still joins the all-reduce.
        mean = self.objective.bpd(model, self.test_x, exact, progress=self.progress) if len(self.test_x) else 0.0
        total = torch.tensor([mean * len(self.test_x), len(self.test_x)], dtype=torch.float64)
        total = dist_utils.all_reduce_sum_(total.to(self.device)).cpu()
        return float(total[0] / total[1])

    def sample_grid(self, name: str) -> Path | None:
        from .sampling import save_grid

        if not self.is_main or self.cfg.num_samples == 0:
            return None
        shape = (self.cfg.num_samples,) + tuple(self.data.shape)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        images = self.objective.sample(self.ema.module.eval(), shape, self.device, gen, progress=self.progress)
        return save_grid(images, self.out / "samples" / f"{name}.png")

    # ----- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        if self.is_main and self.step == 0:
            speed = "".join([f", {cfg.precision} autocast" if cfg.precision != "fp32" else "",
                             ", channels-last" if cfg.channels_last else "", ", compiled" if cfg.compile else ""])
            print(f"training {count_parameters(self.net):,}-parameter UNet on {self.data!r}, "
                  f"method={self.label}, sampler={self.sampler!r}, {self.world} process(es), device {self.device}"
                  f"{speed}")
        if self.step == 0:
            bpd = self.evaluate(exact=False)
            self.log({"step": 0, "test_bpd": bpd, "bpd_method": "estimate", "train_seconds": 0.0})
            self.say(f"step 0: test bits/dim ≈ {bpd:.4f} ({self.objective.estimate_name}, untrained model)")
            self.log_density()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="training", disable=not self.progress,
                   mininterval=1.0, dynamic_ncols=True)
        window_start, window_steps = time.perf_counter(), 0
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            self.train_seconds += time.perf_counter() - t0
            self.step += 1
            window_steps += 1
            bar.update(1)
            self.log_sampler_update()
            if self.step % cfg.log_every == 0 and loss is not None:  # the same on every rank (skips are agreed)
                # The loss of the global batch: the mean of the ranks' equal-sized batch means.
                loss = torch.tensor([loss], dtype=torch.float64, device=self.device)
                loss = dist_utils.all_reduce_mean_(loss).item()
                rate = window_steps / (time.perf_counter() - window_start)
                record = {"step": self.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"],
                          "steps_per_sec": rate, "train_seconds": self.train_seconds, "skipped": self.skipped_total}
                self.log(record)
                bar.set_postfix(loss=f"{loss:.4f}")
                window_start, window_steps = time.perf_counter(), 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                bpd = self.evaluate(exact=False)
                self.log({"step": self.step, "test_bpd": bpd, "bpd_method": "estimate",
                          "train_seconds": self.train_seconds})
                self.say(f"step {self.step}: test bits/dim ≈ {bpd:.4f} ({self.objective.estimate_name})", bar)
                self.log_density()
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.sample_grid(f"step_{self.step:08d}")
            if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                self.save()
            if window_steps == 0:  # evaluation and checkpoints are not training time
                window_start = time.perf_counter()
        bar.close()
        self.save()
        exact = cfg.final_exact
        bpd = self.evaluate(exact=exact)
        # The training weights too, so that an EMA that lags (or helps) shows; with decay 0 they are the EMA.
        train_bpd = bpd if cfg.ema_decay == 0 else self.evaluate(exact=exact, model=self.net)
        method = self.objective.label(exact)
        self.log({"step": self.step, "test_bpd": bpd, "test_bpd_train": train_bpd, "bpd_method": method,
                  "train_seconds": self.train_seconds, "final": True})
        self.log_density()
        both = f"{method}; EMA weights, training weights {train_bpd:.4f}" if train_bpd != bpd else method
        self.say(f"step {self.step}: test bits/dim = {bpd:.4f} ({both}); "
                 f"{self.step / max(self.train_seconds, 1e-9):.1f} steps/s")
        density_png = self.plot_density()
        if density_png is not None:
            self.say(f"sampler density over training: {density_png}")
        grid = self.sample_grid("final")
        if grid is not None:
            self.say(f"samples: {grid}")
        return {"step": self.step, "test_bpd": bpd, "test_bpd_train": train_bpd, "bpd_method": method,
                "samples": str(grid)}


def _truncate_log(path: Path, step: int) -> None:
    """Keep the JSON lines of `path` up to `step`."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in kept))


def _all_finite(x: torch.Tensor) -> bool:
    """True on every rank iff x is finite on every rank (so all ranks skip together, never hang)."""
    bad = torch.tensor([0.0 if torch.isfinite(x).all() else 1.0], device=x.device)
    return dist_utils.all_reduce_sum_(bad).item() == 0


SAME_RUN_KEYS = ("objective", "T", "schedule", "beta_start", "beta_end", "model")  # and the method, by what it trains


def check_same_settings(old: dict, cfg: TrainConfig, source: str, keys=SAME_RUN_KEYS) -> None:
    """A UserError unless the config `old` (from `source`) and `cfg` describe the same run in `keys` and method."""
    # The method is compared by what it trains, not how it was spelt: a checkpoint written before config.json
    # named the pair (method "uniform" with --sampler adaptive) resumes under the pair's own name.
    old = {"objective": "ddpm", **old}  # runs from before the field were all DDPM
    label = method_label(old.get("method", "uniform"), old.get("sampler"), old.get("weighting"))
    before = {**{key: old.get(key) for key in keys}, "method": label}
    now = {**{key: getattr(cfg, key) for key in keys}, "method": method_label(cfg.method, cfg.sampler, cfg.weighting)}
    for key in before:
        if before[key] != now[key]:
            raise UserError(f"{source} {key}={before[key]!r} but this run has {key}={now[key]!r}; "
                            f"use the same settings or a new --out folder")


def check_same_run(path: Path, cfg: TrainConfig) -> None:
    """--resume with no checkpoint yet restarts the run, unless `path` (its config.json) is another run's:
    one with other data, schedule, model or method is not restarted over."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"--resume: cannot read {path} ({type(e).__name__}); delete it or use a new --out folder")
    if not isinstance(old, dict):
        raise UserError(f"--resume: {path} is not a run's config (expected a JSON object); use a new --out folder")
    check_same_settings(old, cfg, f"--resume: {path} (no checkpoint yet) is a run with", SAME_RUN_KEYS + ("data",))


def check_compatible(meta: dict, cfg: TrainConfig, data: ImageDataset) -> None:
    """A checkpoint can only continue a run with the same objective, data shape, schedule, model and method."""
    check_same_settings(meta["config"], cfg, "checkpoint was trained with")
    if list(meta["data_shape"]) != list(data.shape):
        raise UserError(f"checkpoint was trained on images of shape {meta['data_shape']} but the data "
                        f"{cfg.data!r} has shape {list(data.shape)}")


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train with `cfg` on this process (and its torchrun peers)."""
    data = preflight(cfg)
    dist_utils.setup()
    try:
        return Trainer(cfg, resume=resume, progress=progress, data=data).fit()
    finally:
        dist_utils.teardown()
