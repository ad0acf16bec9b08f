"""The committed benchmark grids: each records folder under docs/bench/ and the bench settings its records are
made under (the grid key a record carries decides which records a report takes; the FD samplers and the
ancestral FD's steps decide which scores it asks for). The grids made before the ancestral FD existed are
reported on DDIM's (Euler's for the flow) alone. rebuild_reports.py reports them; run_cells.py adds to them."""
from __future__ import annotations

from pathlib import Path

DOCS_BENCH = Path(__file__).resolve().parents[1] / "docs" / "bench"

GRIDS = {
    "long10k": dict(steps=10000, eval_every=500, fd_samplers="ddim"),
    "credit3k": dict(steps=3000, eval_every=500, fd_samplers="ddim"),
    "flow1k": dict(objective="flow", steps=1000, eval_every=250, fd_samplers="euler"),
    "ancestral3k": dict(steps=3000, eval_every=500, fd_samplers="ddim,ddpm", fd_ddpm_every=1500),
    "ancestral1500": dict(steps=1500, eval_every=500, fd_samplers="ddim,ddpm", fd_ddpm_every=1500),
    "ancestral10k": dict(steps=10000, eval_every=500, fd_samplers="ddim,ddpm", fd_ddpm_every=2500),
    # ancestral3k's settings on other seeds (3, 4, 5): uniform against `beta-1.0`, whether the ~0.4 lower ancestral
    # FD of the Beta samplers that do not move is systematic or the luck of uniform's three runs there
    "stream3k": dict(steps=3000, eval_every=500, fd_samplers="ddim,ddpm", fd_ddpm_every=1500),
    # issue 24's flow grid: Euler and Heun FD at every checkpoint, the exact ODE bits/dim at the end
    "flow3k": dict(objective="flow", steps=3000, eval_every=500, fd_samplers="euler,heun"),
    # issue 41: Fashion-MNIST at its own 28x28 within about an hour of one core a cell, evaluations included
    # (the costs and the choice: docs/benchmark.md "Fashion-MNIST"); bits/dim on the first `eval_images` test
    # images, FD and KID against all 10,000; the ancestral FD at 1/3, 1/2 and the end
    "fashion": dict(data="fashion-mnist", model="tiny", batch_size=128, steps=2400, eval_every=400, eval_images=32,
                    fd_samples=200, fd_samplers="ddim,ddpm", fd_ddpm_at="800,1200"),
}


def cli_flags(options: dict) -> list[str]:
    """A grid's settings as `timestep-sampling bench` flags (steps=3000 -> --steps 3000)."""
    return [part for key, value in options.items() for part in (f"--{key.replace('_', '-')}", str(value))]
