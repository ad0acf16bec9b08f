"""Fréchet distances between sets of images, for the benchmark's sample-quality score.

The Fréchet distance between two Gaussians N(μ1, Σ1) and N(μ2, Σ2) is

    ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)

(FID is this distance between Inception features of real and generated images). The matrix square
root is taken through symmetric eigen-decompositions, tr((Σ1^½ Σ2 Σ1^½)^½) = Σ_i sqrt(λ_i), which stays
real and exact for the rank-deficient covariances that a few hundred samples give (scipy's sqrtm on
Σ1·Σ2 can return complex noise there).

Beside it the kernel inception distance (`kernel_inception_distance`, KID; Bińkowski et al. 2018): the
unbiased MMD² under the kernel (xᵀy/d + 1)³, averaged over random subsets, which has no bias from the number
of samples (real against real scores about 0, where the FD keeps a floor that grows as the sets shrink).

Feature spaces:

- `DigitClassifier`: a small CNN trained once on the 8×8 digits' training split (deterministic under a
  fixed seed, cached on disk). Its 64-unit penultimate layer is the feature space; no download.
- `FashionClassifier`: the same for Fashion-MNIST (28×28, from Debian's dataset-fashion-mnist): two
  convolutions and a 128-unit hidden layer, trained once on its 60,000 training images (91.5 % on the test
  split), cached beside the digits' one.
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


def kernel_inception_distance(features1, features2, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared MMD between
    two feature sets under the polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over `subsets` pairs of
    random subsets of `subset_size` rows from each set (drawn without replacement within a subset, as
    torch-fidelity and the paper's code do; a set smaller than `subset_size` is used whole). Returns
    (mean, standard deviation over the subsets). Unbiased, so two sets from one distribution can score
    slightly below 0; unlike the FD it has no bias that grows as the sets shrink.

    Written out here (numpy, about twenty lines) rather than taken from torch-fidelity, whose only use in this
    project would be this formula. Seeded by `seed` through its own generator, never the global one."""
    f1, f2 = (np.asarray(f, dtype=np.float64) for f in (features1, features2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise UserError(f"need two (N, d) feature arrays of one d with N >= 2, got shapes {f1.shape} and {f2.shape}")
    if not (isinstance(subsets, int) and subsets >= 1 and isinstance(subset_size, int) and subset_size >= 2):
        raise UserError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets!r} and {subset_size!r}")
    m = min(len(f1), len(f2), subset_size)
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        values[i] = _mmd2_unbiased(_cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y))
    return float(values.mean()), float(values.std())


def _cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a bᵀ / d + 1)³, in place (a third of the time of `** 3`)."""
    k = a @ b.T
    k /= a.shape[1]
    k += 1
    cube = k * k
    cube *= k
    return cube


def _mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """The unbiased MMD² of two m-row samples from their kernel matrices: the mean of k(x, x') and of k(y, y')
    over distinct pairs (diagonals left out), less twice the mean of k(x, y) over all m² pairs."""
    m = len(k_xx)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


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
    return _load_or_train(cache_dir, "digit_classifier", DigitClassifier, CLASSIFIER_VERSION,
                          lambda: train_digit_classifier(seed), seed)


def _load_or_train(cache_dir: str | Path, stem: str, make, version: int, train, seed: int):
    """(model, info) from `cache_dir`/`stem`.safetensors and .json if they hold `version` trained under `seed`;
    else `train()` → (model, info), written there first (info["cached"] tells which)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir)
    weights, meta = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    if weights.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("version") == version and info.get("seed") == seed:
                model = make()
                model.load_state_dict(load_file(weights))
                return model.eval(), {**info, "cached": True}
        except (OSError, ValueError, RuntimeError, SafetensorError):
            pass  # unreadable or stale: train again
    model, info = train()
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


# ----------------------------------------------------------------------------- Fashion-MNIST classifier

FASHION_CLASSIFIER_VERSION = 1  # bump when its architecture or training recipe changes: the cache is rebuilt


class FashionClassifier(nn.Module):
    """A small CNN for 1×28×28 Fashion-MNIST images in [-1, 1]: two 3×3 convolutions (16 and 32 channels, each
    followed by ReLU and 2×2 max-pooling) and one hidden layer of 128 units, `features(x)`, the feature space."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 16 × 14 × 14
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 × 7 × 7
            nn.Flatten(), nn.Linear(32 * 49, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def batched_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """`accuracy` in batches (10,000 images at once would hold half a gigabyte of activations)."""
    model.eval()
    hits = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / len(x)


def train_fashion_classifier(seed: int = 0, epochs: int = 6, batch_size: int = 128, lr: float = 3e-3,
                             folder: str | Path | None = None, say=None):
    """Train `FashionClassifier` on Fashion-MNIST's 60,000 training images (from `folder`, default Debian's
    /usr/share/datasets/fashion-mnist), on the CPU, deterministically under `seed` (weights init and shuffling
    from seeded generators): Adam with a one-cycle learning rate peaking at `lr`. 6 epochs reach 91.5 % on the
    10,000 test images in about 2 minutes on one CPU core. Returns (model, info) as `train_digit_classifier`."""
    import time

    from .data import FASHION_DIR, load_idx_folder

    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_idx_folder(FASHION_DIR if folder is None else folder)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FashionClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        if say is not None:
            say(f"fashion classifier: epoch {epoch + 1}/{epochs}, {time.perf_counter() - start:.0f} s")
    model.eval()
    info = {"version": FASHION_CLASSIFIER_VERSION, "seed": seed, "epochs": epochs,
            "train_accuracy": batched_accuracy(model, x_train[:10_000], y_train[:10_000]),  # the first 10,000
            "test_accuracy": batched_accuracy(model, x_test, y_test), "test_images": len(x_test),
            "feature_dim": FashionClassifier.feature_dim, "train_seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads()}
    return model, info


def load_or_train_fashion_classifier(cache_dir: str | Path, seed: int = 0, say=None):
    """(model, info) from `cache_dir` (fashion_classifier.safetensors and .json, beside the digits' classifier),
    training and caching it first if the cache is missing or stale; `say` (print) hears the training's progress."""
    def train():
        model, info = train_fashion_classifier(seed, say=say)
        if say is not None:
            say(f"fashion classifier: test accuracy {100 * info['test_accuracy']:.2f} % "
                f"({info['train_seconds']} s to train)")
        return model, info

    return _load_or_train(cache_dir, "fashion_classifier", FashionClassifier, FASHION_CLASSIFIER_VERSION, train,
                          seed)


class FashionFeatures:
    """Images in [-1, 1] (N, 1, 28, 28) → the Fashion-MNIST classifier's 128 features, after quantising to `bins`."""

    name = "fashion-classifier"
    shape = (1, 28, 28)

    def __init__(self, model: FashionClassifier, bins: int = 256, device="cpu"):
        self.model, self.bins, self.device = model.to(device).eval(), bins, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
        if tuple(images.shape[1:]) != self.shape:
            raise UserError(f"the Fashion-MNIST classifier scores 1x28x28 images, got {tuple(images.shape[1:])}; "
                            f"give --inception for other data")
        out = [self.model.features(quantize(images[i:i + batch_size], self.bins).to(self.device)).double().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- the floor from sample size

def real_floor(features, train: torch.Tensor, test: torch.Tensor, n: int, seed: int = 0,
               reference_features: np.ndarray | None = None) -> dict:
    """The scores of `n` random training images (a seeded draw without replacement) against the test images, in
    `features`: real against real, disjoint sets, so what a model that samples the data's own distribution
    scores with `n` samples. {"images", "fd", "kid", "kid_std"}; `reference_features` saves recomputing the
    test images' features over several n."""
    if not 2 <= n <= len(train):
        raise UserError(f"the floor needs 2 <= n <= {len(train)} training images, got {n}")
    g = torch.Generator().manual_seed(seed)
    ours = features(train[torch.randperm(len(train), generator=g)[:n]])
    theirs = features(test) if reference_features is None else reference_features
    kid, kid_std = kernel_inception_distance(ours, theirs, seed=seed)
    return {"images": n, "fd": frechet_distance_features(ours, theirs), "kid": kid, "kid_std": kid_std}


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
