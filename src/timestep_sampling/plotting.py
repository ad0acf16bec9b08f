"""A picture of what each method trains: its timestep density and its effective weight (discrete
timesteps in `plot_samplers`, rectified flow's continuous t in `plot_flow_samplers`).

matplotlib is imported inside the function, so the library core never needs it, and the figure is
drawn on its own Agg canvas, so a caller's pyplot backend is left alone.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError
from .methods import make_method
from .samplers import TimestepSampler
from .sampling import write_image_file
from .schedule import NoiseSchedule

LINESTYLES = ("-", "--", "-.", ":")


def save_png(fig, out_path, dpi: int) -> Path:
    """fig as a PNG at out_path (sampling.write_image_file: its folder made, a folder or an unwritable path
    refused)."""
    return write_image_file(out_path, lambda path: fig.savefig(path, format="png", dpi=dpi))


def trained_density(sampler: TimestepSampler, x0: torch.Tensor | None = None) -> tuple[torch.Tensor | None, str]:
    """(pmf of the timesteps the sampler trains, note for the legend); (None, why) if it has none.

    A sampler whose pmf depends on the data (the conditioned adaptive sampler) is asked for its pmf
    averaged over the batch `x0`, when one is given."""
    if sampler.continuous:
        return None, " (continuous t: see plot_flow_samplers)"
    if getattr(sampler, "dual", False) and hasattr(sampler, "batch_probabilities"):
        return sampler.batch_probabilities(), " (batch share, duals included)"
    try:
        p = sampler.probabilities()
    except NotImplementedError:
        return None, " (no explicit pmf: not drawn)"
    except UserError:
        if x0 is None:
            return None, " (pmf depends on the data, none given: not drawn)"
        p = sampler.probabilities(x0=x0)
    return p, " (initial pmf; it learns)" if sampler_learns(sampler) else ""


FLOW_DENSITY_BINS = 100  # a continuous sampler's density over training: its mass in 100 equal bins of t


def binned_flow_density(sampler) -> torch.Tensor:
    """A continuous-time sampler's mass in FLOW_DENSITY_BINS equal bins of t ∈ (0, 1), from its exact CDF:
    the same kind of track as a discrete sampler's pmf, so one heat map and one total variation serve both."""
    cdf = sampler.cdf(torch.linspace(0, 1, FLOW_DENSITY_BINS + 1, dtype=torch.float64))
    mass = (cdf[1:] - cdf[:-1]).clamp(min=0)
    return mass / mass.sum()


def sampler_learns(sampler: TimestepSampler) -> bool:
    """Whether the sampler's distribution changes in training (it overrides update or observe)."""
    return (type(sampler).update is not TimestepSampler.update
            or type(sampler).observe is not TimestepSampler.observe)


def plot_samplers(schedule: NoiseSchedule, methods: list[str], out_path, prediction: str | None = None,
                  x0: torch.Tensor | None = None, figsize: tuple[float, float] = (13, 9),
                  dpi: int = 100) -> list[str]:
    """Write a PNG of 2×2 panels: top, each method's timestep pmf p(t); bottom, its effective weight
    p(t)·w(t) normalised to sum 1 (where the objective's emphasis lies), on a log scale; left against
    t, right against log-SNR_t. Returns the legend labels.

    Methods without an explicit pmf are listed in the legend as not drawn; learned samplers are
    drawn at their initial pmf (a data-conditioned one averaged over the batch `x0`, if given)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = fig.subplots(2, 2, sharey="row")
    t = torch.arange(schedule.T)
    xs = (t.numpy(), schedule.log_snr.numpy())
    labels, floor, ceiling = [], 1.0, 0.0
    for i, name in enumerate(methods):
        sampler, weighting = make_method(name, schedule, prediction=prediction)
        p, note = trained_density(sampler, x0)
        style = {"color": f"C{i % 10}", "linestyle": LINESTYLES[(i // 10 + i) % len(LINESTYLES)], "lw": 1.6}
        labels.append(name + note)
        if p is None:
            axes[0, 0].plot([], [], label=labels[-1], **style)  # a legend entry only
            continue
        effective = p * weighting.weights(t).double()
        effective = effective / effective.sum()
        floor, ceiling = min(floor, effective.max().item()), max(ceiling, effective.max().item())
        for col, x in enumerate(xs):
            axes[0, col].plot(x, p.numpy(), label=labels[-1] if col == 0 else None, **style)
            axes[1, col].plot(x, effective.numpy(), **style)

    for ax in axes[1]:
        # Tails like 1e-14 would flatten every curve into the top of the panel; five decades below the
        # smallest peak keep every method's shape readable. Limits first: flat data has none of its own.
        if ceiling > 0:
            ax.set_ylim(floor * 1e-5, ceiling * 2)
        ax.set_yscale("log")
    axes[0, 0].set_ylim(bottom=0)
    for ax in axes[:, 1]:
        ax.invert_xaxis()  # clean on the left, noisy on the right, as in the t panels
    axes[0, 0].set_title("timestep density p(t)")
    axes[0, 1].set_title("timestep density p(t), against log-SNR")
    axes[1, 0].set_title("effective weight p(t)·w(t), normalised to sum 1")
    axes[1, 1].set_title("effective weight p(t)·w(t), against log-SNR")
    for ax in axes[:, 0]:
        ax.set_xlabel("timestep t")
    for ax in axes[:, 1]:
        ax.set_xlabel("log-SNR_t (reversed: clean → noisy)")
    axes[0, 0].set_ylabel("probability per timestep")
    axes[1, 0].set_ylabel("share of the objective per timestep")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"timestep samplers and weightings, {schedule.name} schedule, T = {schedule.T}")
    fig.legend(loc="outside lower center", ncols=min(4, max(1, len(methods))), fontsize="small")
    out_path = save_png(fig, out_path, dpi)
    return labels


def flow_grid(points: int = 1401, logit_range: float = 7.0) -> torch.Tensor:
    """Times t = sigmoid(z) for z evenly spaced in [−logit_range, logit_range] (t from 9·10⁻⁴ to 1 − 9·10⁻⁴):
    even in log-SNR = −2z, and dense enough near both ends to show how a density behaves there."""
    return torch.sigmoid(torch.linspace(-logit_range, logit_range, points, dtype=torch.float64))


def plot_flow_samplers(methods: list[str], out_path, figsize: tuple[float, float] = (13, 9), dpi: int = 100,
                       points: int = 1401) -> list[str]:
    """Write a PNG of 2×2 panels for rectified-flow methods (continuous t ∈ (0, 1)): top, each method's time
    density p(t); bottom, its effective weight p(t)·w(t), normalised to integrate to 1 over the drawn range
    (t⁻² and (1 − t)/t are not integrable at 0), on a log scale; left against t, right against
    log-SNR λ = 2·log((1 − t)/t), where the density is p(t)·t(1 − t)/2 (the Jacobian |dt/dλ|). Returns the
    legend labels."""
    import numpy as np
    from matplotlib.figure import Figure

    from .methods import is_flow_method

    for name in methods:
        if not is_flow_method(name):
            raise UserError(f"method {name!r} draws discrete timesteps: plot it with plot_samplers (on the command "
                            "line, --methods rather than --flow-methods)")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = fig.subplots(2, 2)  # per unit of t and per unit of λ differ in scale: no shared y
    t = flow_grid(points)
    lam = (2 * torch.log((1 - t) / t)).numpy()
    jacobian = (t * (1 - t) / 2).numpy()
    labels, floor, ceiling = [], 1.0, 0.0
    for i, name in enumerate(methods):
        sampler, weighting = make_method(name)
        density = sampler.density(t).numpy()
        effective = density * weighting.weights(t).double().numpy()
        style = {"color": f"C{i % 10}", "linestyle": LINESTYLES[(i // 10 + i) % len(LINESTYLES)], "lw": 1.6}
        labels.append(name)
        curves = [(t.numpy(), density, effective), (lam, density * jacobian, effective * jacobian)]
        for col, (x, p, e) in enumerate(curves):
            e = e / abs(np.sum((e[1:] + e[:-1]) / 2 * np.diff(x)))  # trapezoid rule
            floor, ceiling = min(floor, e.max()), max(ceiling, e.max())
            axes[0, col].plot(x, p, label=name if col == 0 else None, **style)
            axes[1, col].plot(x, e, **style)
    for ax in axes[1]:
        if ceiling > 0:  # five decades below the smallest peak, as in plot_samplers
            ax.set_ylim(floor * 1e-5, ceiling * 2)
        ax.set_yscale("log")
    for ax in axes[:, 1]:
        ax.set_xlim(lam.max(), lam.min())  # clean (high log-SNR) on the left, noisy on the right
    for ax in axes[0]:
        ax.set_ylim(bottom=0)
    axes[0, 0].set_title("time density p(t)")
    axes[0, 1].set_title("density of log-SNR λ = 2·log((1 − t)/t)")
    axes[1, 0].set_title("effective weight p(t)·w(t), normalised over the drawn range")
    axes[1, 1].set_title("effective weight against log-SNR")
    for ax in axes[:, 0]:
        ax.set_xlabel("t (0 = data, 1 = noise)")
    for ax in axes[:, 1]:
        ax.set_xlabel("log-SNR λ (reversed: clean → noisy)")
    axes[0, 0].set_ylabel("density per unit of t")
    axes[0, 1].set_ylabel("density per unit of λ")
    axes[1, 0].set_ylabel("share of the objective per unit of t")
    axes[1, 1].set_ylabel("share of the objective per unit of λ")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle("rectified flow: time samplers and weightings (x_t = (1 − t)·x0 + t·ε)")
    fig.legend(loc="outside lower center", ncols=min(4, max(1, len(methods))), fontsize="small")
    out_path = save_png(fig, out_path, dpi)
    return labels


def density_colour_range(relative) -> float:
    """The heatmap's colour range [1/spread, spread] for p(t)·T, at least [2/3, 1.5]. It comes from the
    interior timesteps: rounding u·(T-1) gives t = 0 and t = T-1 half the mass of their neighbours, and
    those two columns alone would otherwise set the range and wash out the picture."""
    import numpy as np

    relative = np.asarray(relative, dtype=np.float64)
    interior = relative[:, 1:-1] if relative.shape[1] > 2 else relative
    positive = interior[interior > 0]
    if positive.size == 0:
        return 1.5
    return float(max(positive.max(), 1 / positive.min(), 1.5))


def plot_density_over_training(steps, densities, out_path, title: str | None = None, dpi: int = 100,
                               continuous: bool = False) -> Path:
    """Write a PNG of a sampler's timestep density over training (the seed paper's Fig. 5 and 6): left,
    a heatmap of p(t)·T (1 = uniform) with training step on the vertical axis; right, the density at
    the first, middle and last recorded steps. `densities` is (len(steps), T); with `continuous`, the
    T columns are equal bins of t ∈ (0, 1) (binned_flow_density)."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    steps = np.asarray(steps)
    relative = np.asarray(densities, dtype=np.float64) * np.shape(densities)[1]
    if relative.ndim != 2 or len(steps) != len(relative) or len(steps) == 0:
        raise UserError(f"need one density per step, got {len(steps)} steps and an array of shape {relative.shape}")
    T = relative.shape[1]
    fig = Figure(figsize=(12, 4.5), dpi=dpi, layout="constrained")
    heat, lines = fig.subplots(1, 2, width_ratios=(3, 2))
    spread = density_colour_range(relative)
    # Symmetric around 1 on a log scale, so "twice as likely as uniform" and "half as likely" look alike;
    # values outside it take the end colours.
    norm = LogNorm(vmin=1 / spread, vmax=spread, clip=True)
    edges = np.concatenate([steps, [steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)]])
    xs = np.linspace(0, 1, T + 1) if continuous else np.arange(T + 1) - 0.5
    centres = (xs[:-1] + xs[1:]) / 2 if continuous else np.arange(T)
    mesh = heat.pcolormesh(xs, edges, np.clip(relative, 1 / spread, None), norm=norm,
                           cmap="RdBu_r", shading="flat")
    fig.colorbar(mesh, ax=heat, label="p(t) · T   (1 = uniform)")
    xlabel = f"time t (bins of {1 / T:g})" if continuous else "timestep t"
    heat.set_xlabel(xlabel)
    heat.set_ylabel("training step")
    heat.set_title("timestep density over training")
    for i in sorted({0, len(steps) // 2, len(steps) - 1}):
        lines.plot(centres, relative[i], label=f"step {steps[i]}")
    lines.axhline(1.0, color="grey", lw=0.8, ls=":")
    lines.set_yscale("log")
    lines.set_xlabel(xlabel)
    lines.set_ylabel("p(t) · T")
    lines.set_title("density at three steps")
    lines.legend(fontsize="small")
    lines.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out_path = save_png(fig, out_path, dpi)
    return out_path
