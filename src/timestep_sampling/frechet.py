"""Fréchet distances between sets of images, for the benchmark's sample-quality score.

The Fréchet distance between two Gaussians N(μ1, Σ1) and N(μ2, Σ2) is

    ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)

(FID is this distance between Inception features of real and generated images). The matrix square
root is taken through symmetric eigen-decompositions, tr((Σ1^½ Σ2 Σ1^½)^½) = Σ_i sqrt(λ_i), which stays
real and exact for the rank-deficient covariances that a few hundred samples give (scipy's sqrtm on
Σ1·Σ2 can return complex noise there).

Two feature spaces:

- `DigitClassifier`: a small CNN trained once on the 8×8 digits' training split (deterministic under a
  fixed seed, cached on disk). Its 64-unit penultimate layer is the feature space; no download.
- `TorchScriptFeatures`: any feature network saved as a TorchScript file, for FID proper. The FID
  Inception network that StyleGAN2-ADA, EDM and clean-fid use is distributed exactly so
  (`inception-2015-12-05.pt`: architecture and weights in one file, resizing to 299×299 inside, called
  as `net(images, return_features=True)` on images with values 0..255). Loading it needs nothing but
  torch, never downloads, and a test can stand a tiny TorchScript network in its place; torch-fidelity
  and pytorch-fid instead rebuild Inception in Python and fetch its weights by URL.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError

CLASSIFIER_VERSION = 1  # bump when the architecture or the training recipe changes: the cache is rebuilt


# ----------------------------------------------------------------------------- the distance

def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of an (N, d) array of features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise UserError(f"need an (N, d) array of features with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues → 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UserError(f"mismatched shapes: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} "
                        f"and {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    cross = np.sqrt(np.clip(eig, 0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)
    return max(value, 0.0)  # round-off can leave -1e-12 for identical inputs


def frechet_distance_features(features1, features2) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, d) feature arrays."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def quantize(images: torch.Tensor, bins: int) -> torch.Tensor:
    """Round images in [-1, 1] to the data's `bins` evenly spaced levels (as saving them would)."""
    levels = bins - 1
    return ((images.clamp(-1, 1) + 1) / 2 * levels).round() / levels * 2 - 1


# ----------------------------------------------------------------------------- digit classifier

class DigitClassifier(nn.Module):
    """A small CNN for 1×8×8 digits in [-1, 1]; `features(x)` is its 64-unit penultimate layer."""

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 × 4 × 4
            nn.Flatten(), nn.Linear(32 * 16, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_with_labels(seed: int = 0):
    """(train images, train labels, test images, test labels): the same split and scaling as
    `load_data("digits")` (1500 / 297, pixel v → v/8 − 1), with scikit-learn's labels."""
    from sklearn.datasets import load_digits

    from .data import DIGITS_TEST_SIZE, split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1
    y = torch.from_numpy(digits.target).long()
    train_idx, test_idx = split(len(x), DIGITS_TEST_SIZE, seed)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model.eval()(x).argmax(1) == y).double().mean().item()


def train_digit_classifier(seed: int = 0, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3):
    """Train `DigitClassifier` on the digits' training split, on the CPU, deterministically under `seed`
    (weights init, shuffling and small random shifts all come from seeded generators).
    Returns (model, {"train_accuracy", "test_accuracy", ...})."""
    x_train, y_train, x_test, y_test = digits_with_labels()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = _random_shift(x_train[idx], g)
            loss = nn.functional.cross_entropy(model(x), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    info = {"version": CLASSIFIER_VERSION, "seed": seed, "epochs": epochs,
            "train_accuracy": accuracy(model, x_train, y_train), "test_accuracy": accuracy(model, x_test, y_test),
            "test_images": len(x_test), "feature_dim": DigitClassifier.feature_dim}
    return model, info


def _random_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel (padding with background), so features do not hinge on
    exact position; a light, seeded augmentation."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    shift = torch.randint(0, 9, (len(x),), generator=g)
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for k in range(9):
        dy, dx = divmod(k, 3)
        out[shift == k] = padded[shift == k, :, dy:dy + h, dx:dx + w]
    return out


def load_or_train_digit_classifier(cache_dir: str | Path, seed: int = 0):
    """(model, info) from `cache_dir`, training and caching it first if the cache is missing or stale."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir)
    weights, meta = cache_dir / "digit_classifier.safetensors", cache_dir / "digit_classifier.json"
    if weights.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("version") == CLASSIFIER_VERSION and info.get("seed") == seed:
                model = DigitClassifier()
                model.load_state_dict(load_file(weights))
                return model.eval(), {**info, "cached": True}
        except (OSError, ValueError, RuntimeError, SafetensorError):
            pass  # unreadable or stale: train again
    model, info = train_digit_classifier(seed)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Each file is written whole under a temporary name (per process: two bench processes may share a
        # folder) and renamed into place, the weights before the description that makes them count.
        tmp = cache_dir / f".tmp-{os.getpid()}"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, weights)
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, meta)
    except OSError as e:
        raise UserError(f"cannot write the classifier cache in {str(cache_dir)!r} ({e.strerror or e})") from None
    return model, {**info, "cached": False}


class DigitFeatures:
    """Images in [-1, 1] (N, 1, 8, 8) → the digit classifier's features, after quantising to `bins`."""

    name = "digit-classifier"

    def __init__(self, model: DigitClassifier, bins: int = 17, device="cpu"):
        self.model, self.bins, self.device = model.to(device).eval(), bins, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        if tuple(images.shape[1:]) != (1, 8, 8):
            raise UserError(f"the digit classifier scores 1x8x8 images, got {tuple(images.shape[1:])}; "
                            f"give --inception for other data")
        out = [self.model.features(quantize(images[i:i + batch_size], self.bins).to(self.device)).double().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- TorchScript feature network

class TorchScriptFeatures:
    """A feature network from a TorchScript file (e.g. the FID Inception `inception-2015-12-05.pt`).

    Images in [-1, 1] are quantised to `bins` levels, mapped to 0..255, repeated to 3 channels if grey,
    and given at their own size as float32; the network resizes them (the FID Inception does). It is
    called with `return_features=True` when its forward takes that argument."""

    name = "torchscript"

    def __init__(self, path: str | Path, bins: int = 256, device="cpu"):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--inception {str(path)!r} is not a file; expected a TorchScript feature network "
                            f"such as inception-2015-12-05.pt (it is never downloaded)")
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"cannot load {str(path)!r} as a TorchScript module ({str(e).splitlines()[0]}); "
                            f"expected a file written by torch.jit.save") from None
        args = [a.name for a in self.net.forward.schema.arguments]
        self.kwargs = {"return_features": True} if "return_features" in args else {}
        self.path, self.bins, self.device = path, bins, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            x = ((quantize(images[i:i + batch_size], self.bins) + 1) * 127.5).round()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            f = self.net(x.to(self.device), **self.kwargs)
            out.append(f.reshape(len(x), -1).double().cpu())
        return torch.cat(out).numpy()
