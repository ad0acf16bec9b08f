"""The learned samplers' tracks: how a sampler's density moved over a run (from its run folder or its
record), for the heat maps and the report, and the `-final` control, a learned sampler fixed from step 0 at
the state it ended in (the sampler says how, through its `frozen_spec`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import train as train_module
from ..errors import UserError
from ..methods import make_method, method_specs
from ..schedule import NoiseSchedule
from .jsonfiles import read_jsonl
from .records import current_records, read_record, run_name
from .settings import FINAL_SUFFIX, BenchSettings


def sampler_summary(folder: Path) -> dict | None:
    """A learning sampler's track from a run folder: its density at each evaluation (p(t)·T, 3 significant
    digits), the total variation between its first and last density, and, for a global Beta policy, the
    final (α, β). None for a sampler whose density never changed."""
    densities = read_jsonl(folder / train_module.DENSITY_LOG)
    track = np.asarray([r["density"] for r in densities], dtype=np.float64)
    if len(track) < 2 or np.abs(track - track[0]).max() <= 1e-6 * track.max():
        return None
    first, last = track[0], track[-1]
    updates = [r["sampler"] for r in read_jsonl(folder / "metrics.jsonl") if "sampler" in r]
    final = updates[-1] if updates else {}
    global_beta = final.get("alpha_std") == 0.0 and final.get("beta_std") == 0.0
    T = len(first)
    # Where the bound's mass is: t < 20 of a discrete T, or t < 0.1 of continuous time (in equal bins of t).
    continuous = bool(densities[0].get("continuous"))
    low, low_key = (T // 10, "mass_t_below_0.1") if continuous else (20, "mass_t_below_20")
    return {"steps": [r["step"] for r in densities],
            "density": [[float(f"{v * T:.3g}") for v in r["density"]] for r in densities],
            "tv_from_start": float(0.5 * np.abs(last - first).sum()),
            low_key: [float(sum(r["density"][:low])) for r in densities],
            **({"continuous": True} if continuous else {}),
            "alpha": final.get("alpha_mean") if global_beta else None,
            "beta": final.get("beta_mean") if global_beta else None}


def frozen_final_method(settings: BenchSettings, method: str, schedule: str, seed: int) -> str:
    """'<learned>-final' → the method spec of <learned>'s sampler fixed at the final state of that seed's
    <learned> run (from its record or its run folder), as the sampler's `frozen_spec` writes it: a fixed Beta
    at the final (α, β) of a global Beta policy, a band policy at lr = 0 with its final logits. A sampler
    without one final distribution (a policy conditioned on x0, a sampler without `frozen_spec`) has none."""
    source = method[:-len(FINAL_SUFFIX)]
    name = run_name(source, schedule, seed)
    kept = read_record(settings.records, name, settings) if settings.records else None
    summary = kept["sampler"] if kept else sampler_summary(Path(settings.out) / "runs" / name)
    frozen = None
    if summary:
        sampler = make_method(source, NoiseSchedule("linear", T=settings.T))[0]
        freeze = getattr(sampler, "frozen_spec", None)
        final = {"density": summary["density"][-1], "alpha": summary.get("alpha"), "beta": summary.get("beta")}
        frozen = freeze(final, *method_specs(source)) if freeze is not None else None
    if frozen is None:
        raise UserError(f"{method} needs the final state of a finished {source!r} run ({name}) whose sampler has "
                        f"one final distribution (a global Beta or band policy); run {source} first (put it "
                        f"before {method} in --methods)")
    return frozen


def density_tracks(settings: BenchSettings) -> dict[tuple[str, str], tuple[int, dict]]:
    """(method, schedule) → (seed, sampler_summary) of the lowest seed whose sampler's density changed (a
    fixed or frozen sampler has no summary), from the records when there are any, else the run folders."""
    found = []
    if settings.records:
        found = [(r["method"], r["schedule"], r["seed"], r["sampler"])
                 for r in current_records(settings) if r.get("sampler")]
    else:
        for method, schedule, seed in settings.grid():
            summary = sampler_summary(Path(settings.out) / "runs" / run_name(method, schedule, seed))
            if summary:
                found.append((method, schedule, seed, summary))
    tracks = {}
    for method, schedule, seed, summary in sorted(found, key=lambda f: f[2]):
        tracks.setdefault((method, schedule), (seed, summary))
    return tracks
