"""The learned samplers' tracks: how a sampler's density moved over a run (from its run folder or its
record), for the heat maps and the report; the `-final` control, a learned sampler fixed from step 0 at
the state it ended in (the sampler says how, through its `frozen_spec`); and which records still stand for
the method their name makes now (`current_records`, `read_cell_record`), the `-final` ones included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import train as train_module
from ..errors import UserError
from ..methods import make_method, method_specs
from ..schedule import NoiseSchedule
from .jsonfiles import read_jsonl
from .records import all_records, read_record, run_name
from .settings import FINAL_SUFFIX, BenchSettings, method_fingerprint, noise_schedule


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


def final_is_current(record: dict, settings: BenchSettings) -> bool:
    """Whether a `-final` record trained what its name resolves to now (`trained_as` against the learned
    sampler's `frozen_spec` of the same seed's learned run): how a learned sampler is frozen has changed
    (its uniform floor was left out until 2026-12-05), and a record of the old control must not stand for
    the new one. Records that do not say what they trained are taken as they are."""
    if record.get("trained_as") is None:
        return True
    try:
        now = frozen_final_method(settings, record["method"], record["schedule"], record["seed"])
    except UserError:  # its learned run is not recorded (any more)
        return False
    return record["trained_as"] == now or same_training(record["trained_as"], now, record["schedule"], settings.T)


def same_training(method: str, other: str, schedule: str, T: int) -> bool:
    """Whether two method specs train alike: the same distribution over t, importance weights and loss
    weighting (a frozen policy's spec may name options that no longer matter once it is frozen)."""
    try:
        (a, _), (b, _) = (make_method(m, NoiseSchedule(noise_schedule(schedule), T=T)) for m in (method, other))
    except UserError:
        return False
    return (method_specs(method)[1] == method_specs(other)[1] and a.unbiased == b.unbiased
            and torch.allclose(_law(a), _law(b), rtol=1e-6, atol=1e-12))


def _law(sampler) -> torch.Tensor:
    """A sampler's distribution over t: its pmf, or a continuous sampler's density on a grid of (0, 1)."""
    if getattr(sampler, "continuous", False):
        return sampler.density(torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64))
    return sampler.probabilities()


def read_cell_record(folder: Path, name: str, settings: BenchSettings, fingerprint: str | None = None) -> dict | None:
    """records.read_record, and for a `-final` cell only a record of the control its name makes now (from
    the learned run recorded under settings.records)."""
    record = read_record(folder, name, settings, fingerprint)
    if record is not None and record["method"].endswith(FINAL_SUFFIX) and not final_is_current(record, settings):
        return None
    return record


def current_records(settings: BenchSettings, say=None) -> list[dict]:
    """The records of this grid whose method still trains what its name trains now (its fingerprint), and
    each `-final` cell whose learned run is among them: a preset whose defaults changed since a record was
    made names another method, and its old record must not stand in the report under the new meaning."""
    kept, stale = [], []
    records = all_records(settings.records, settings, say)
    for r in records:
        if r["method"].endswith(FINAL_SUFFIX):
            continue
        try:
            now = method_fingerprint(r["method"], r["schedule"], settings.T)
        except UserError:  # a method name that no longer exists
            now = None
        (kept if r.get("fingerprint") in (None, now) else stale).append(r)
    fresh = {(r["method"], r["schedule"], r["seed"]) for r in kept}
    for r in records:
        if r["method"].endswith(FINAL_SUFFIX):
            source = (r["method"][:-len(FINAL_SUFFIX)], r["schedule"], r["seed"])
            (kept if source in fresh and final_is_current(r, settings) else stale).append(r)
    if stale and say is not None:
        say(f"left out of the report: {len(stale)} record(s) made when their method meant something else "
            f"({', '.join(sorted({r['method'] for r in stale}))})")
    return kept


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
