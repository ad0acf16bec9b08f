"""Analysis of a training run, after the seed paper's figures (Kim et al., CVPR 2025): each function
reads a run folder (its config.json, checkpoints and logs) and writes a PNG and the numbers behind it
as JSON into an output folder.

    grad_variance     the stochastic gradient's variance per timestep bin, per checkpoint (Fig. 2, top)
    timestep_loss     the ε-MSE per timestep bin on the test set, per checkpoint (Fig. 2, bottom)
    interdependence   train on one band of timesteps from a checkpoint, measure every band (Fig. 4)
    sampler_density   the sampler's timestep density over training, from DIR/sampler_density.jsonl (Fig. 5, 6)

Timestep bins (bands) are equal-width: bin b holds t in [edges[b], edges[b+1]). Every measurement
draws its images, timesteps and noise from a private generator seeded by `seed`, the same draws at
every checkpoint, so curves differ only by the model (common random numbers). Models are measured in
eval mode (no dropout). Outer ring: this module uses the trainer's data, model and checkpoint helpers.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .checkpoint import PATTERN, list_checkpoints, load_checkpoint
from .config import TrainConfig, make_config
from .data import load_data
from .diffusion import mse_per_sample, q_sample
from .errors import UserError, require
from .evaluate import load_model
from .objectives import objective_name
from .schedule import NoiseSchedule
from .train import DENSITY_LOG, resolve_device
from .weighting import make_weighting

KEEP_HINT = ("the trainer keeps only the newest keep_checkpoints (default 2); to keep more, train with "
             "keep_checkpoints raised in a --config file")


# ----------------------------------------------------------------------------- the run folder

def run_config(run: str | Path) -> TrainConfig:
    """The effective config a run folder was trained with (its config.json)."""
    run = Path(run)
    if run.is_file():
        raise UserError(f"--run {str(run)!r} is a file; expected the --out folder of a training run")
    if not run.is_dir():
        raise UserError(f"run folder {str(run)!r} does not exist; expected the --out folder of a training run")
    path = run / "config.json"
    if not path.is_file():
        raise UserError(f"{str(run)!r} is not a training run: it has no config.json")
    return make_config(path)


def parse_steps(steps: str | Sequence[int] | None) -> list[int] | None:
    """'1000,2000' or [1000, 2000] → [1000, 2000]; None or '' → None (all)."""
    if steps is None or isinstance(steps, str) and not steps.strip():
        return None
    if isinstance(steps, str):
        try:
            return [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--steps takes training steps separated by commas, e.g. 1000,2000; "
                            f"got {steps!r}") from None
    return [int(s) for s in steps]


def run_checkpoints(run: str | Path, steps: str | Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """(step, folder) of the run's checkpoints at `steps` (default: all present), oldest first. Every analysis
    of checkpoints measures the ε-MSE of a DDPM, so a rectified-flow run is refused rather than misread."""
    objective = objective_name(run_config(run).objective)
    require(objective == "ddpm", f"run {str(run)!r} trained the {objective!r} objective; the checkpoint analyses "
                                 "(grad-variance, timestep-loss, interdependence, reward-signal) measure a DDPM's "
                                 "ε-loss and take DDPM runs only")
    root = Path(run) / "checkpoints"
    present = {int(PATTERN.match(p.name).group(1)): p for p in list_checkpoints(root)}
    if not present:
        raise UserError(f"run {str(run)!r} has no checkpoints under {root}; train with checkpoint_every > 0")
    wanted = parse_steps(steps)
    if wanted is None:
        return sorted(present.items())
    missing = [s for s in wanted if s not in present]
    if missing:
        raise UserError(f"run {str(run)!r} has no checkpoint for step {missing[0]} (present: "
                        f"{', '.join(map(str, sorted(present)))}); {KEEP_HINT}")
    return [(s, present[s]) for s in sorted(set(wanted))]


def _run_data(cfg: TrainConfig, data: str | None, shape):
    dataset = load_data(data or cfg.data)
    if list(dataset.shape) != list(shape):
        raise UserError(f"the run was trained on images of shape {list(shape)}, the data "
                        f"{data or cfg.data!r} has shape {list(dataset.shape)}; pass its own data with --data")
    return dataset


def checkpoint_to_train_on(run, step: int | None, data: str | None, device: str):
    """(step, model with its training weights, schedule, config, trainer state with the optimiser's, data set)
    of the checkpoint at `step` (default the latest), for analyses that train on from it."""
    ((ckpt_step, path),) = run_checkpoints(run, None if step is None else [step])[-1:]
    dev = resolve_device(device)
    model, schedule, ckpt_cfg, meta = load_model(path, device=dev, use_ema=False)
    _, state, _ = load_checkpoint(path, map_location=dev)
    return ckpt_step, model, schedule, ckpt_cfg, state, _run_data(run_config(run), data, meta["data_shape"])


def _models(checkpoints, device, ema: bool):
    """(step, model, schedule, meta) for each checkpoint, loaded one at a time."""
    for step, path in checkpoints:
        model, schedule, _, meta = load_model(path, device=device, use_ema=ema)
        yield step, model, schedule, meta


def bin_edges(T: int, bins: int) -> list[int]:
    """Integer edges of `bins` equal-width timestep bins over 0..T-1."""
    require(isinstance(bins, int) and 1 <= bins <= T, f"the number of bins must lie in [1, T={T}], got {bins!r}")
    return [round(b * T / bins) for b in range(bins + 1)]


def _t_in_bin(lo: int, hi: int, n: int, gen: torch.Generator) -> torch.Tensor:
    return lo + (torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo)).long().clamp(max=hi - lo - 1)


def _bin_seed(seed: int, b: int) -> int:
    return seed * 1_000_003 + 7919 * b + 1


def _write(out: str | Path, name: str, record: dict, draw) -> dict:
    """Write OUT/name.json and OUT/name.png (drawn by `draw(path)`); return the paths with the record."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    except OSError as e:
        raise UserError(f"cannot write to output folder {str(out)!r} ({e.strerror or e})") from None
    draw(out / f"{name}.png")
    return {**record, "png": str(out / f"{name}.png"), "json": str(out / f"{name}.json")}


# ----------------------------------------------------------------------------- per-timestep measurements

@torch.no_grad()
def loss_per_bin(model, schedule: NoiseSchedule, x0: torch.Tensor, edges: list[int], seed: int = 0,
                 batch: int = 512) -> list[float]:
    """Mean ε-MSE per bin over the images `x0`: image i at one t drawn uniformly in the bin, with noise
    fixed by (seed, bin), so that two models are scored on the very same (x0, t, ε)."""
    model.eval()
    device = x0.device
    result = []
    for b in range(len(edges) - 1):
        gen = torch.Generator().manual_seed(_bin_seed(seed, b))
        t = _t_in_bin(edges[b], edges[b + 1], len(x0), gen)
        noise = torch.randn(x0.shape, generator=gen)
        total = 0.0
        for i in range(0, len(x0), batch):
            mse = mse_per_sample(model, schedule, x0[i:i + batch], t[i:i + batch].to(device),
                                 noise[i:i + batch].to(device))
            total += mse.double().sum().item()
        result.append(total / len(x0))
    return result


def per_sample_gradient_stats(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                              noise: torch.Tensor, weights: torch.Tensor | None = None,
                              chunk: int | None = None) -> dict:
    """Statistics of the per-sample gradients g_i = ∇_θ w_i‖ε_i − ε_θ(x_t,i, t_i)‖²/d over the batch:
    `trace_cov` = Σ_i ‖g_i − ḡ‖² / (n − 1) (the trace of their covariance), `mean_sq_norm` = ‖ḡ‖²,
    `loss` = mean weighted MSE. Per-sample gradients come from torch.func (vmap over grad), in
    chunks, and are reduced on the fly, so memory stays at `chunk` gradients."""
    from torch.func import functional_call, grad, vmap

    n = len(x0)
    require(n >= 2, f"need at least 2 samples per bin for a variance, got {n}")
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())
    size = sum(v.numel() for v in params.values())
    chunk = chunk or max(1, min(64, int(5e7 // size)))
    weights = torch.ones(n, device=x0.device) if weights is None else weights.to(x0.device, torch.float32)

    def loss(p, x, tt, eps, w):
        xt = q_sample(schedule, x[None], tt[None], eps[None])
        pred = functional_call(model, (p, buffers), (xt, tt[None]))
        mse = ((pred - eps[None]) ** 2).mean()
        return w * mse, mse

    per_sample = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0, 0, 0))
    total = torch.zeros(size, dtype=torch.float64, device=x0.device)
    squares, losses = 0.0, 0.0
    for i in range(0, n, chunk):
        s = slice(i, i + chunk)
        with warnings.catch_warnings():  # diffusers' attention has no vmap batching rule: slower, still exact
            warnings.filterwarnings("ignore", message="There is a performance drop")
            g, mse = per_sample(params, x0[s], t[s], noise[s], weights[s])
        flat = torch.cat([v.reshape(len(v), -1) for v in g.values()], 1).double()
        total += flat.sum(0)
        squares += flat.pow(2).sum().item()
        losses += (weights[s] * mse).double().sum().item()
    mean = total / n
    mean_sq = mean.pow(2).sum().item()
    return {"trace_cov": max(squares - n * mean_sq, 0.0) / (n - 1), "mean_sq_norm": mean_sq, "loss": losses / n}


# ----------------------------------------------------------------------------- grad-variance (Fig. 2, top)

def grad_variance(run: str | Path, out: str | Path, *, steps=None, bins: int = 20, samples: int = 64,
                  weighting: str = "none", ema: bool = False, seed: int = 0, data: str | None = None,
                  device: str = "cpu", progress: bool = True) -> dict:
    """For each chosen checkpoint and each timestep bin: `samples` training images, each with a t
    uniform in the bin and its own noise (the same draws at every checkpoint), their per-sample
    gradients of the weighted ε-MSE w.r.t. all model parameters, and the trace of their covariance.
    Writes OUT/grad_variance.{png,json}."""
    require(isinstance(samples, int) and samples >= 2, f"--samples must be >= 2, got {samples!r}")
    checkpoints = run_checkpoints(run, steps)
    cfg = run_config(run)
    dev = resolve_device(device)
    draws, curves = None, []  # draws: (x0, t, noise) per bin, the same for every checkpoint
    bar = tqdm(total=len(checkpoints) * bins, desc="gradient variance", disable=not progress, dynamic_ncols=True)
    for step, model, schedule, meta in _models(checkpoints, dev, ema):
        if draws is None:
            dataset = _run_data(cfg, data, meta["data_shape"])
            edges = bin_edges(schedule.T, bins)
            w = make_weighting(weighting, schedule)
            draws = []
            for b in range(bins):
                gen = torch.Generator().manual_seed(_bin_seed(seed, b))
                idx = torch.randint(len(dataset.train), (samples,), generator=gen)
                t = _t_in_bin(edges[b], edges[b + 1], samples, gen)
                noise = torch.randn((samples,) + dataset.shape, generator=gen)
                draws.append((dataset.train[idx].to(dev), t.to(dev), noise.to(dev)))
        stats = []
        for x0, t, noise in draws:
            stats.append(per_sample_gradient_stats(model, schedule, x0, t, noise, w.weights(t)))
            bar.update(1)
        curves.append({"step": step, **{k: [s[k] for s in stats] for k in ("trace_cov", "mean_sq_norm", "loss")}})
    bar.close()
    record = {"analysis": "grad-variance", "run": str(run), "schedule": schedule.to_config(), "bin_edges": edges,
              "bin_centers": _centers(edges), "samples_per_bin": samples, "weighting": weighting,
              "weights": "ema" if ema else "model", "seed": seed, "checkpoints": curves}
    title = (f"gradient variance per timestep: {Path(run).name}, {schedule.name} schedule, "
             f"{'ε-MSE' if weighting == 'none' else 'ε-MSE × ' + weighting}, {samples} samples per bin")
    return _write(out, "grad_variance", record, lambda p: _plot_curves(
        p, edges, curves, "trace_cov", "trace of the per-sample gradient covariance", title))


# ----------------------------------------------------------------------------- timestep-loss (Fig. 2, bottom)

def timestep_loss(run: str | Path, out: str | Path, *, steps=None, bins: int = 20, images: int = 512,
                  ema: bool = False, seed: int = 0, data: str | None = None, device: str = "cpu",
                  progress: bool = True) -> dict:
    """The ε-MSE per timestep bin on (up to `images` of) the test set, one curve per checkpoint, with
    the same (x0, t, ε) for every checkpoint. Writes OUT/timestep_loss.{png,json}."""
    require(isinstance(images, int) and images >= 1, f"--images must be >= 1, got {images!r}")
    checkpoints = run_checkpoints(run, steps)
    cfg = run_config(run)
    dev = resolve_device(device)
    test = edges = None
    curves = []
    for step, model, schedule, meta in tqdm(_models(checkpoints, dev, ema), total=len(checkpoints),
                                            desc="per-timestep loss", disable=not progress, dynamic_ncols=True):
        if test is None:
            test = _run_data(cfg, data, meta["data_shape"]).test[:images].to(dev)
            edges = bin_edges(schedule.T, bins)
        curves.append({"step": step, "loss": loss_per_bin(model, schedule, test, edges, seed)})
    record = {"analysis": "timestep-loss", "run": str(run), "schedule": schedule.to_config(), "bin_edges": edges,
              "bin_centers": _centers(edges), "test_images": len(test), "weights": "ema" if ema else "model",
              "seed": seed, "checkpoints": curves}
    title = f"ε-MSE per timestep on {len(test)} test images: {Path(run).name}, {schedule.name} schedule"
    return _write(out, "timestep_loss", record, lambda p: _plot_curves(
        p, edges, curves, "loss", "ε-MSE (test set, fixed noise)", title, relative=True))


# ----------------------------------------------------------------------------- interdependence (Fig. 4)

def interdependence(run: str | Path, out: str | Path, *, step: int | None = None, bands: int = 10,
                    train_steps: int = 20, batch_size: int | None = None, lr: float | None = None,
                    weighting: str = "none", images: int = 512, seed: int = 0, data: str | None = None,
                    device: str = "cpu", progress: bool = True) -> dict:
    """From the checkpoint at `step` (default the latest), for each band of timesteps: restore the
    model's training weights and Adam state, train `train_steps` steps with t uniform in that band
    only (the run's batch size, learning rate and gradient clipping; the same images and noise for
    every band), then measure the ε-MSE of every band on the test set with fixed noise. A last row
    trains on all t (uniform) for comparison. matrix[i][j] = relative change of band j's loss after
    training on band i. Writes OUT/interdependence.{png,json}."""
    require(isinstance(train_steps, int) and train_steps >= 1, f"--train-steps must be >= 1, got {train_steps!r}")
    require(lr is None or (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0),
            f"--lr must be a finite number > 0, got {lr!r}")
    require(isinstance(images, int) and images >= 1, f"--images must be >= 1, got {images!r}")
    ckpt_step, model, schedule, ckpt_cfg, state, dataset = checkpoint_to_train_on(run, step, data, device)
    dev = next(model.parameters()).device
    train_x, test = dataset.train.to(dev), dataset.test[:images].to(dev)
    edges = bin_edges(schedule.T, bands)
    w = make_weighting(weighting, schedule)
    batch = ckpt_cfg.batch_size if batch_size is None else batch_size
    require(batch >= 1, f"--batch-size must be >= 1, got {batch}")
    start_weights, start_opt = copy.deepcopy(model.state_dict()), state["optimizer"]
    before = loss_per_bin(model, schedule, test, edges, seed)
    rows = [(edges[b], edges[b + 1]) for b in range(bands)] + [(0, schedule.T)]
    after = []
    bar = tqdm(total=len(rows) * train_steps, desc="interdependence", disable=not progress, dynamic_ncols=True)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # training seeds the global RNG (dropout); the caller's is restored
        for lo, hi in rows:
            after.append(_train_band(model, schedule, w, start_weights, start_opt, ckpt_cfg, train_x, test, edges,
                                     lo, hi, batch, train_steps, lr, seed, bar))
    bar.close()
    change = [[(a - b0) / b0 for a, b0 in zip(row, before)] for row in after]
    matrix = change[:bands]
    diagonal = [matrix[i][i] for i in range(bands)]
    off = [matrix[i][j] for i in range(bands) for j in range(bands) if i != j]
    record = {"analysis": "interdependence", "run": str(run), "step": ckpt_step, "schedule": schedule.to_config(),
              "band_edges": edges, "train_steps": train_steps, "batch_size": batch,
              "lr": start_opt["param_groups"][0]["lr"] if lr is None else lr, "weighting": weighting,
              "test_images": len(test), "seed": seed,
              "loss_before": before, "loss_after": after[:bands], "loss_after_uniform": after[bands],
              "matrix": matrix, "uniform_row": change[bands],
              "summary": {"diagonal_mean": sum(diagonal) / bands,
                          "off_diagonal_mean": sum(off) / len(off) if off else None,
                          "diagonal_is_row_minimum": sum(min(range(bands), key=matrix[i].__getitem__) == i
                                                         for i in range(bands))}}
    title = (f"interdependence of timesteps: {Path(run).name} at step {ckpt_step}, "
             f"{train_steps} steps of batch {batch} on one band")
    return _write(out, "interdependence", record, lambda p: _plot_matrix(p, edges, change, title))


def _train_band(model, schedule, weighting, start_weights, start_opt, cfg, train_x, test, edges, lo, hi, batch,
                train_steps, lr, seed, bar) -> list[float]:
    """Restore the checkpoint's weights and Adam state, train on t in [lo, hi), return loss_per_bin."""
    model.load_state_dict(start_weights)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt.load_state_dict(copy.deepcopy(start_opt))
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    gen = torch.Generator().manual_seed(seed + 1)  # the same images, noise and dropout for every band
    torch.manual_seed(seed + 2)
    model.train()
    device = train_x.device
    for _ in range(train_steps):
        x0 = train_x[torch.randint(len(train_x), (batch,), generator=gen).to(device)]
        t = _t_in_bin(lo, hi, batch, gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        loss = (weighting.weights(t) * mse_per_sample(model, schedule, x0, t, noise)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
    return loss_per_bin(model, schedule, test, edges, seed)


# ----------------------------------------------------------------------------- sampler-density (Fig. 5, 6)

def sampler_density(run: str | Path, out: str | Path) -> dict:
    """The sampler's timestep density at each evaluation of a run, from DIR/sampler_density.jsonl, as
    a heatmap over training. Writes OUT/sampler_density.{png,json}; the JSON adds, per record, the
    mean timestep and the share of the mass on each tenth of the timesteps."""
    from .plotting import plot_density_over_training

    cfg = run_config(run)
    path = Path(run) / DENSITY_LOG
    if not path.is_file():
        raise UserError(f"run {str(run)!r} has no {DENSITY_LOG}; the trainer writes it at every evaluation "
                        f"(eval_every > 0) since the analysis tools were added")
    try:
        records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        steps = [int(r["step"]) for r in records]
        densities = torch.tensor([r["density"] for r in records], dtype=torch.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); expected one JSON object per line "
                        f'with "step" and "density"') from None
    if not records:
        raise UserError(f"{path} is empty; the run has not been evaluated yet")
    T = densities.shape[1]
    t = torch.arange(T, dtype=torch.float64)
    edges = bin_edges(T, min(10, T))
    record = {"analysis": "sampler-density", "run": str(run), "method": cfg.method, "sampler": cfg.sampler,
              "steps": steps, "density": densities.tolist(), "mean_t": (densities @ t).tolist(),
              "tenth_edges": edges,
              "mass_per_tenth": [[densities[i, edges[b]:edges[b + 1]].sum().item() for b in range(len(edges) - 1)]
                                 for i in range(len(steps))]}
    title = f"{Path(run).name}: {cfg.method}"  # make_config made `method` name the pair the run trained
    return _write(out, "sampler_density", record,
                  lambda p: plot_density_over_training(steps, densities.numpy(), p, title=title))


# ----------------------------------------------------------------------------- pictures

def _centers(edges: list[int]) -> list[float]:
    return [(lo + hi - 1) / 2 for lo, hi in zip(edges[:-1], edges[1:])]


def _plot_curves(path: Path, edges, curves, key: str, ylabel: str, title: str, relative: bool = False) -> None:
    """One curve per checkpoint against t (log y), coloured from early (light) to late (dark); with
    `relative`, a second panel of each curve divided by the first checkpoint's."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12 if relative else 7.5, 4.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2 if relative else 1, squeeze=False)[0]
    x = np.array(_centers(edges))
    cmap = colormaps["viridis_r"]
    for i, c in enumerate(curves):
        colour = cmap(0.15 + 0.85 * i / (len(curves) - 1) if len(curves) > 1 else 0.85)
        axes[0].plot(x, c[key], marker=".", color=colour, label=f"step {c['step']}")
        if relative:
            axes[1].plot(x, np.array(c[key]) / np.array(curves[0][key]), marker=".", color=colour)
    _log_if_wide(axes[0], [c[key] for c in curves])
    axes[0].set_ylabel(ylabel)
    axes[0].set_title(title, fontsize="medium")
    axes[0].legend(fontsize="small", ncols=2 if len(curves) > 6 else 1)
    if relative:
        axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
        _log_if_wide(axes[1], [np.array(c[key]) / np.array(curves[0][key]) for c in curves])
        axes[1].set_ylabel(f"relative to step {curves[0]['step']}")
        axes[1].set_title("the same, divided by the first checkpoint's", fontsize="medium")
    for ax in axes:
        ax.set_xlabel(f"timestep t (bins of {edges[1] - edges[0]})")
        ax.grid(alpha=0.3, which="both")
    fig.savefig(path, format="png")


def _log_if_wide(ax, values) -> None:
    """A log y-axis when the values span more than a factor 10 (on a narrower range its ticks say little)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    values = values[values > 0]
    if values.size and values.max() > 10 * values.min():
        ax.set_yscale("log")


def _plot_matrix(path: Path, edges, change, title: str) -> None:
    """Heatmap of the loss ratio after / before, on a log colour scale symmetric around 1 (so that
    halving and doubling look alike), each cell labelled with the change in %: rows = the band trained
    (last row: all t), columns = the band measured; blue = the loss fell, red = it rose."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ratio = np.clip(1 + np.array(change), 1e-6, None)
    bands = len(edges) - 1
    labels = [f"{lo}–{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
    fig = Figure(figsize=(1.0 + 0.75 * bands + 2.5, 1.5 + 0.55 * (bands + 1) + 1.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    limit = max(np.abs(np.log(ratio)).max(), 0.01)
    mesh = ax.imshow(ratio, cmap="RdBu_r", norm=LogNorm(np.exp(-limit), np.exp(limit)), aspect="auto")
    bar = fig.colorbar(mesh, ax=ax, label="the band's ε-MSE after / before (log scale)")
    ticks = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] + ([1.1, 1.25, 1.5] if limit < math.log(2.5) else [])
    ticks = sorted(v for r in ticks for v in {r, 1 / r} if math.exp(-limit) <= v <= math.exp(limit))
    bar.set_ticks(ticks, labels=[f"{v:.3g}" for v in ticks])
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    if bands <= 16:
        for i in range(bands + 1):
            for j in range(bands):
                ax.text(j, i, f"{100 * (ratio[i, j] - 1):+.1f}%", ha="center", va="center", fontsize="x-small",
                        color="white" if abs(np.log(ratio[i, j])) > 0.6 * limit else "black")
    ax.axhline(bands - 0.5, color="black", lw=1.5)
    ax.set_xticks(range(bands), labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(bands + 1), labels + ["all t"], fontsize="small")
    ax.set_xlabel("band measured (timesteps)")
    ax.set_ylabel("band trained on (timesteps)")
    ax.set_title(title, fontsize="medium")
    fig.savefig(path, format="png")
