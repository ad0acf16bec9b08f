"""How the adaptive sampler chooses its probe set S (Kim et al., Algorithm 2; METHOD.md section 3).

At every sampler update one training image is probed at every timestep (or every stratum) before and
after the diffusion update. The row of changes Δ_j = L_j(θ_k) − L_j(θ_{k+1}) (the features) and their
total (the target) go into a FIFO queue; S is the |S| features with the largest univariate regression
F-statistic against the target, i.e. the few timesteps whose change best predicts the change of the
whole bound. The F-statistic is scikit-learn's `f_regression` (with force_finite=False):

    r_j = Σ_i (X_ij − X̄_j)(y_i − ȳ) / (‖X_j − X̄_j‖ ‖y − ȳ‖),    F_j = r_j² / (1 − r_j²) · (n − 2)

It needs n ≥ 3 rows (n − 2 degrees of freedom); a constant column has r = 0/0 = NaN and is never chosen
over a column with a finite score.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

MIN_ROWS = 3


def f_statistic(X, y) -> np.ndarray:
    """F_j of each column of X (n, d) against y (n,), float64; NaN for constant columns (or constant y),
    +inf for a perfectly correlated column. Computed on centred data, which is exact where sklearn's
    Σx² − n·x̄² form cancels."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < MIN_ROWS:
        return np.full(X.shape[1], np.nan)
    Xc, yc = X - X.mean(0), y - y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        # Column-wise sums (not a BLAS product), so identical columns get bit-identical scores and tie.
        r = (Xc * yc[:, None]).sum(0) / (np.sqrt((Xc * Xc).sum(0)) * np.sqrt((yc * yc).sum()))
        r2 = np.minimum(r * r, 1.0)  # rounding can push |r| a hair above 1
        return r2 / (1.0 - r2) * (n - 2)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest scores, ascending. NaN ranks below every number (even −inf); ties go to
    the lower index, so every rank that holds the same queue picks the same S."""
    nan = np.isnan(scores)
    # np.lexsort sorts by its last key first: finite before NaN, then larger score, then lower index.
    order = np.lexsort((np.arange(len(scores)), np.where(nan, 0.0, -scores), nan))
    return sorted(int(i) for i in order[:k])


class ChangeQueue:
    """FIFO of the last `maxlen` change vectors (features) and their targets, kept in float64 on the CPU."""

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self.rows: deque[tuple[torch.Tensor, float]] = deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self.rows)

    def push(self, features: torch.Tensor, target: float) -> None:
        self.rows.append((features.detach().double().cpu().clone(), float(target)))

    def select(self, k: int) -> list[int] | None:
        """The k columns with the largest F-statistic, or None while the queue has fewer than 3 rows
        (or the rows differ in length, which happens only if the scan size changed)."""
        if len(self.rows) < MIN_ROWS or len({len(f) for f, _ in self.rows}) != 1:
            return None
        X = torch.stack([f for f, _ in self.rows]).numpy()
        y = np.array([target for _, target in self.rows])
        return top_k(f_statistic(X, y), k)

    def state_dict(self) -> dict:
        if not self.rows:
            return {"features": torch.zeros(0, 0, dtype=torch.float64), "targets": torch.zeros(0, dtype=torch.float64)}
        return {"features": torch.stack([f for f, _ in self.rows]),
                "targets": torch.tensor([target for _, target in self.rows], dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.rows.clear()
        for features, target in zip(state["features"], state["targets"]):
            self.push(features, float(target))
