"""Scoring a run's checkpoints: samples of each checkpoint's EMA model from a fixed starting noise, their
Fréchet distance to the test split in a classifier's features (FD: the digits' or Fashion-MNIST's) or a
TorchScript network's (FID), and beside each the kernel inception distance in the same features (KID), the
stratified bits/dim estimate at a final step the trainer measured exactly, and that estimate on training
images at the final step. The scores are kept in the run folder's bench.json, so a rerun computes only what it
lacks."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from ..checkpoint import list_checkpoints
from ..objectives import make_objective
from ..sampling import ddim_sample, ddpm_sample, save_grid
from .jsonfiles import read_json, read_jsonl, write_json
from .settings import FD_SAMPLERS, BenchSettings

SAMPLE_CHUNK = 512  # images per sampler call; fixed, so the starting noise of image i never depends on the count


# A feature space's KID beside its FD: in the classifier's features "kid" (kid_ddim...), in a TorchScript
# network's "kidfid" (kidfid_ddim...), so that every metric stays "<score>_<sampler>".
KID_NAMES = {"fd": "kid", "fid": "kidfid"}


class Scorer:
    """A Fréchet distance against fixed reference images, in one feature space (`name`: "fd" for a classifier's,
    "fid" for a TorchScript network's), for the images of any of the bench's samplers: its metric for one
    sampler is "<name>_<sampler>" (fd_ddim, fd_ddpm, fd_euler, fd_heun), each with its own cache key in
    bench.json (`key_for`). Beside it, from the same images and features, the KID (`kid_metric`: kid_ddim...,
    the mean over 100 subsets of min(1000, images) as torch-fidelity computes it, with its standard deviation
    over the subsets kept as "<kid metric>_std")."""

    def __init__(self, name: str, features, reference: torch.Tensor, key: dict):
        from ..frechet import gaussian_stats

        self.name, self.features, self.key = name, features, key
        self.kid_name = KID_NAMES[name]
        self.reference_features = features(reference)
        self.reference_stats = gaussian_stats(self.reference_features)

    def metric(self, sampler: str) -> str:
        return f"{self.name}_{sampler}"

    def kid_metric(self, sampler: str) -> str:
        return f"{self.kid_name}_{sampler}"

    def key_for(self, sampler: str) -> dict:
        """What a cached score of `sampler`'s images depends on. The first sampler of each objective (DDIM,
        Euler) keeps the key its scores had when it was the only one, so that older run folders keep them."""
        if sampler in (kinds[0] for kinds in FD_SAMPLERS.values()):
            return self.key
        if sampler == "ddpm":  # all T steps of the run's own reverse process: no step count of ours
            return {**{k: v for k, v in self.key.items() if k != "ddim_steps"}, "sampler": "ddpm"}
        return {**self.key, "sampler": sampler}

    def __call__(self, images: torch.Tensor) -> float:
        """The FD alone."""
        from ..frechet import frechet_distance, gaussian_stats

        return frechet_distance(*gaussian_stats(self.features(images)), *self.reference_stats)

    def scores(self, images: torch.Tensor) -> tuple[float, float, float]:
        """(FD, KID, KID's standard deviation over its subsets) of `images`, their features computed once."""
        from ..frechet import frechet_distance, gaussian_stats, kernel_inception_distance

        ours = self.features(images)
        kid, kid_std = kernel_inception_distance(ours, self.reference_features)
        return frechet_distance(*gaussian_stats(ours), *self.reference_stats), kid, kid_std


def generate(checkpoint: Path, settings: BenchSettings, device, sampler: str = "ddim") -> torch.Tensor:
    """`fd_samples` samples of a checkpoint's EMA model from the fixed starting noise (seed `sample_seed`, drawn
    in chunks of SAMPLE_CHUNK images, so that image i starts from the same noise whatever the count), in [-1, 1]:
    for a DDPM "ddim" (η = 0, `ddim_steps` steps) or "ddpm" (ancestral sampling through all T steps with the
    run's own variance, fresh noise at each step from the same generator); for rectified flow "euler" or
    "heun" in `ddim_steps` steps of the run's own flow."""
    from ..evaluate import load_model

    model, schedule, cfg, meta = load_model(checkpoint, device)
    objective = make_objective(cfg, schedule, meta["bins"])
    gen = torch.Generator().manual_seed(settings.sample_seed)
    shape = tuple(meta["data_shape"])
    out, left = [], settings.fd_samples
    while left > 0:
        n = min(SAMPLE_CHUNK, left)
        if objective.continuous:
            noise = torch.randn((n,) + shape, generator=gen).to(device)
            images = objective.flow.sample(model, noise, settings.ddim_steps, solver=sampler)
        elif sampler == "ddpm":
            images = ddpm_sample(model, schedule, (n,) + shape, device=device, generator=gen, variance=cfg.variance)
        else:
            images = ddim_sample(model, schedule, (n,) + shape, steps=settings.ddim_steps, device=device, generator=gen)
        out.append(images.clamp(-1, 1).cpu())
        left -= n
    return torch.cat(out)


def estimate_checkpoint(checkpoint: Path, cfg, device, split: str = "test") -> float:
    """The bits/dim estimate of a checkpoint's EMA model with exactly the trainer's settings (same timesteps,
    noise and probes), for comparing it with the estimates logged during training: on the test split, or
    (`split="train"`) on the first as many training images, so that the two differ by the images alone. A test
    bound that ends further and further above the training images' is the model fitting its training set."""
    from ..data import load_data
    from ..evaluate import load_model
    from ..train import eval_split

    model, schedule, _, _ = load_model(checkpoint, device)
    data = load_data(cfg.data)
    test = eval_split(cfg, data)  # the trainer's test images: the first cfg.eval_images, or all
    images = {"test": test, "train": data.train[:len(test)]}[split]
    return make_objective(cfg, schedule, data.bins).bpd(model, images.to(device), exact=False)


def score_run(cfg, settings: BenchSettings, scorers: list[Scorer], device) -> dict:
    """Add to the run's bench.json every score it lacks: each scorer's distance for each of the settings'
    samplers at the checkpoints where that sampler's FD is due (`BenchSettings.fd_due`), the stratified
    estimate at the final step if the trainer logged the exact bound there, and the same estimate on as many
    training images at the final step (`final_train_estimate`). Then delete the intermediate
    checkpoints unless asked to keep them (the last one always stays)."""
    folder = Path(cfg.out)
    path = folder / "bench.json"
    cache = read_json(path, {})
    checkpoints = {int(p.name.split("_")[1]): p for p in list_checkpoints(folder / "checkpoints")}
    evals = {r["step"]: r for r in read_jsonl(folder / "metrics.jsonl") if "test_bpd" in r}
    first = FD_SAMPLERS["flow" if settings.flow else "ddpm"][0]
    for scorer in scorers:
        if scorer.name in cache:  # a folder scored before there were several samplers: its FD was `first`'s
            cache.setdefault(scorer.metric(first), cache.pop(scorer.name))
        for sampler in settings.samplers:
            for metric, extra in ((scorer.metric(sampler), "seconds"), (scorer.kid_metric(sampler), "std")):
                entry = cache.get(metric)
                if not entry or entry.get("key") != scorer.key_for(sampler):
                    cache[metric] = {"key": scorer.key_for(sampler), "values": {}, extra: {}}

    def lacks(scorer, sampler, step):  # a folder scored before the KID existed has FDs without it
        return any(str(step) not in cache[m]["values"] for m in (scorer.metric(sampler), scorer.kid_metric(sampler)))

    for step in sorted(s for s in evals if s > 0):
        for sampler in settings.samplers:
            todo = [s for s in scorers if lacks(s, sampler, step)]
            if not todo or step not in checkpoints or not settings.fd_due(sampler, step):
                continue  # done, not due, or its checkpoint was pruned before this metric was asked for
            start = time.perf_counter()
            images = generate(checkpoint=checkpoints[step], settings=settings, device=device, sampler=sampler)
            sample_seconds = time.perf_counter() - start
            save_grid(images[:64], folder / "samples" / f"{sampler}_step_{step:08d}.png")
            for scorer in todo:
                start = time.perf_counter()
                fd, kid, kid_std = scorer.scores(images)
                fd_entry, kid_entry = cache[scorer.metric(sampler)], cache[scorer.kid_metric(sampler)]
                fd_entry["values"].setdefault(str(step), fd)  # an FD made before keeps its value (the same images)
                fd_entry["seconds"].setdefault(str(step), sample_seconds + time.perf_counter() - start)
                kid_entry["values"][str(step)], kid_entry["std"][str(step)] = kid, kid_std
            write_json(path, cache)
    final = evals.get(cfg.steps)
    due = {"final_estimate": "test"} if final is not None and bpd_kind(final) == "exact" else {}
    due["final_train_estimate"] = "train"
    for key, split in due.items():
        if key not in cache and cfg.steps in checkpoints:
            start = time.perf_counter()
            value = estimate_checkpoint(checkpoints[cfg.steps], cfg, device, split=split)
            cache[key] = {"step": cfg.steps, "value": value, "seconds": time.perf_counter() - start}
            write_json(path, cache)
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
    """The FD scorer (a classifier's features: the digit classifier for the digits, the Fashion-MNIST one for
    fashion-mnist) and the FID scorer (--inception), each with its KID, with the classifier's facts for the
    report: its accuracy, and the scores' floor from sample size, the FD and KID between as many real training
    images as are generated (`fd_samples`, at most the split) and the test split, disjoint real sets in the same
    features: what a perfect model scores."""
    from ..data import FASHION_NAME, load_data
    from ..frechet import (DigitFeatures, FashionFeatures, TorchScriptFeatures, load_or_train_digit_classifier,
                          load_or_train_fashion_classifier, real_floor)

    data = load_data(settings.data)
    scorers, info = [], {}
    sampling = {"samples": settings.fd_samples, "ddim_steps": settings.ddim_steps, "sample_seed": settings.sample_seed,
                "reference": "test", "data": settings.data}
    classifiers = {"digits": ("digit-classifier", load_or_train_digit_classifier, DigitFeatures),
                   FASHION_NAME: ("fashion-classifier", load_or_train_fashion_classifier, FashionFeatures)}
    if settings.data in classifiers:
        label, load, make_features = classifiers[settings.data]
        start = time.perf_counter()
        cache = out / "classifier"
        model, info = load(cache)
        info = {**info, "name": label, "seconds": time.perf_counter() - start, "cache": str(cache),
                "reference_images": len(data.test)}
        features = make_features(model, bins=data.bins, device=device)
        scorer = Scorer("fd", features, data.test, {**sampling, "features": f"{label}-v{info['version']}-s{info['seed']}"})
        scorers.append(scorer)
        floor = real_floor(features, data.train, data.test, min(settings.fd_samples, len(data.train)), seed=0,
                           reference_features=scorer.reference_features)
        info.update(floor_images=floor["images"], floor_fd=floor["fd"], floor_kid=floor["kid"],
                    floor_kid_std=floor["kid_std"])
    if settings.inception:
        net = TorchScriptFeatures(settings.inception, bins=data.bins, device=device)
        st = Path(settings.inception).stat()
        scorers.append(Scorer("fid", net, data.test, {**sampling, "features": str(Path(settings.inception).resolve()),
                                                      "size": st.st_size, "mtime": int(st.st_mtime)}))
    return scorers, info
