"""Scoring a run's checkpoints: samples of each checkpoint's EMA model from a fixed starting noise, their
Fréchet distance to the test split in the digit classifier's features (FD) or a TorchScript network's (FID),
and the stratified bits/dim estimate at a final step the trainer measured exactly. The scores are kept in the
run folder's bench.json, so a rerun computes only what it lacks."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from ..checkpoint import list_checkpoints
from ..objectives import make_objective
from .jsonfiles import read_json, read_jsonl, write_json
from .settings import BenchSettings

SAMPLE_CHUNK = 512  # images per sampler call; fixed, so the starting noise of image i never depends on the count


class Scorer:
    """A Fréchet distance against fixed reference images, in one feature space."""

    def __init__(self, metric: str, features, reference: torch.Tensor, key: dict):
        from ..frechet import gaussian_stats

        self.metric, self.features, self.key = metric, features, key
        self.reference_stats = gaussian_stats(features(reference))

    def __call__(self, images: torch.Tensor) -> float:
        from ..frechet import frechet_distance, gaussian_stats

        return frechet_distance(*gaussian_stats(self.features(images)), *self.reference_stats)


def generate(checkpoint: Path, settings: BenchSettings, device) -> torch.Tensor:
    """`fd_samples` samples of a checkpoint's EMA model from the fixed starting noise: DDIM for DDPM, Euler
    steps of the run's own flow for rectified flow, `ddim_steps` steps either way."""
    from ..evaluate import load_model
    from ..sampling import ddim_sample

    model, schedule, cfg, meta = load_model(checkpoint, device)
    objective = make_objective(cfg, schedule, meta["bins"])
    gen = torch.Generator().manual_seed(settings.sample_seed)
    shape = tuple(meta["data_shape"])
    out, left = [], settings.fd_samples
    while left > 0:
        n = min(SAMPLE_CHUNK, left)
        if objective.continuous:
            noise = torch.randn((n,) + shape, generator=gen).to(device)
            images = objective.flow.sample(model, noise, settings.ddim_steps).clamp(-1, 1)
        else:
            images = ddim_sample(model, schedule, (n,) + shape, steps=settings.ddim_steps, device=device, generator=gen)
        out.append(images.cpu())
        left -= n
    return torch.cat(out)


def estimate_checkpoint(checkpoint: Path, cfg, device) -> float:
    """The test bits/dim estimate of a checkpoint's EMA model with exactly the trainer's settings (same
    timesteps, noise and probes), for comparing it with the estimates logged during training."""
    from ..data import load_data
    from ..evaluate import load_model

    model, schedule, _, _ = load_model(checkpoint, device)
    data = load_data(cfg.data)
    return make_objective(cfg, schedule, data.bins).bpd(model, data.test.to(device), exact=False)


def score_run(cfg, settings: BenchSettings, scorers: list[Scorer], device) -> dict:
    """Add to the run's bench.json every score it lacks: each scorer's distance at every checkpoint after
    step 0, and the stratified estimate at the final step if the trainer logged the exact bound there.
    Then delete the intermediate checkpoints unless asked to keep them (the last one always stays)."""
    from ..sampling import save_grid

    folder = Path(cfg.out)
    path = folder / "bench.json"
    cache = read_json(path, {})
    checkpoints = {int(p.name.split("_")[1]): p for p in list_checkpoints(folder / "checkpoints")}
    evals = {r["step"]: r for r in read_jsonl(folder / "metrics.jsonl") if "test_bpd" in r}
    for scorer in scorers:
        entry = cache.get(scorer.metric)
        if not entry or entry.get("key") != scorer.key:
            cache[scorer.metric] = {"key": scorer.key, "values": {}, "seconds": {}}
    for step in sorted(s for s in evals if s > 0):
        todo = [s for s in scorers if str(step) not in cache[s.metric]["values"]]
        if not todo or step not in checkpoints:
            continue  # done, or its checkpoint was pruned before this metric was asked for
        start = time.perf_counter()
        images = generate(checkpoint=checkpoints[step], settings=settings, device=device)
        sample_seconds = time.perf_counter() - start
        save_grid(images[:64], folder / "samples" / f"ddim_step_{step:08d}.png")
        for scorer in todo:
            start = time.perf_counter()
            cache[scorer.metric]["values"][str(step)] = scorer(images)
            cache[scorer.metric]["seconds"][str(step)] = sample_seconds + time.perf_counter() - start
        write_json(path, cache)
    final = evals.get(cfg.steps)
    if final is not None and bpd_kind(final) == "exact" and "final_estimate" not in cache:
        if cfg.steps in checkpoints:
            start = time.perf_counter()
            value = estimate_checkpoint(checkpoints[cfg.steps], cfg, device)
            cache["final_estimate"] = {"step": cfg.steps, "value": value, "seconds": time.perf_counter() - start}
            write_json(path, cache)
    if not settings.keep_checkpoints:
        for step, ckpt in checkpoints.items():
            if step != max(checkpoints):
                shutil.rmtree(ckpt, ignore_errors=True)
    return cache


# The trainer's names for its two bits/dim measurements, per objective: the cheap one logged during training
# and the thorough one at the end.
ESTIMATE_LABELS, EXACT_LABELS = ("estimate", "ode-hutchinson-subset"), ("exact", "ode-hutchinson")


def bpd_kind(metrics: dict) -> str:
    """"estimate" or "exact" for a trainer's evaluation line, whatever the objective."""
    label = metrics.get("bpd_method")
    return "estimate" if label in ESTIMATE_LABELS else "exact" if label in EXACT_LABELS else str(label)


def build_scorers(settings: BenchSettings, device, out: Path) -> tuple[list[Scorer], dict]:
    """The FD scorer (digit classifier, for the digits) and the FID scorer (--inception), with the
    classifier's facts for the report."""
    from ..data import load_data
    from ..frechet import (DigitFeatures, TorchScriptFeatures, frechet_distance_features,
                          load_or_train_digit_classifier)

    data = load_data(settings.data)
    scorers, info = [], {}
    sampling = {"samples": settings.fd_samples, "ddim_steps": settings.ddim_steps, "sample_seed": settings.sample_seed,
                "reference": "test", "data": settings.data}
    if settings.data == "digits":
        start = time.perf_counter()
        cache = out / "classifier"
        model, info = load_or_train_digit_classifier(cache)
        info = {**info, "seconds": time.perf_counter() - start, "cache": str(cache),
                "reference_images": len(data.test)}
        features = DigitFeatures(model, bins=data.bins, device=device)
        scorers.append(Scorer("fd", features, data.test,
                              {**sampling, "features": f"digit-classifier-v{info['version']}-s{info['seed']}"}))
        g = torch.Generator().manual_seed(0)
        floor_n = min(settings.fd_samples, len(data.train))
        subset = data.train[torch.randperm(len(data.train), generator=g)[:floor_n]]
        info["floor_images"], info["floor_fd"] = floor_n, frechet_distance_features(features(subset),
                                                                                    features(data.test))
    if settings.inception:
        net = TorchScriptFeatures(settings.inception, bins=data.bins, device=device)
        st = Path(settings.inception).stat()
        scorers.append(Scorer("fid", net, data.test, {**sampling, "features": str(Path(settings.inception).resolve()),
                                                      "size": st.st_size, "mtime": int(st.st_mtime)}))
    return scorers, info

