"""A picture of what each method trains: its timestep density and its effective weight.

matplotlib is imported inside the function, so the library core never needs it, and the figure is
drawn on its own Agg canvas, so a caller's pyplot backend is left alone.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError
from .methods import make_method
from .samplers import TimestepSampler
from .schedule import NoiseSchedule

LINESTYLES = ("-", "--", "-.", ":")


def trained_density(sampler: TimestepSampler, x0: torch.Tensor | None = None) -> tuple[torch.Tensor | None, str]:
    """(pmf of the timesteps the sampler trains, note for the legend); (None, why) if it has none.

    A sampler whose pmf depends on the data (the conditioned adaptive sampler) is asked for its pmf
    averaged over the batch `x0`, when one is given."""
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
    learns = (type(sampler).update is not TimestepSampler.update
              or type(sampler).observe is not TimestepSampler.observe)
    return p, " (initial pmf; it learns)" if learns else ""


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
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=dpi)
    return labels
