"""Kernel inception distance (frechet.kernel_inception_distance): the unbiased MMD² with the cubic polynomial
kernel, averaged over random subsets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from timestep_sampling.errors import UserError
from timestep_sampling.frechet import _mmd2_unbiased, kernel_inception_distance


def _naive_mmd2(x, y) -> float:
    """Unbiased MMD² straight from its definition, pair by pair (Bińkowski et al. 2018, eq. 2 with the KID
    kernel): distinct pairs within each set, all pairs across."""
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3
    m = len(x)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_the_estimator_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(15, 4)), rng.normal(0.3, 1.2, size=(15, 4))
    kernel = lambda a, b: (a @ b.T / 4 + 1) ** 3
    assert _mmd2_unbiased(kernel(x, x), kernel(y, y), kernel(x, y)) == pytest.approx(_naive_mmd2(x, y), rel=1e-12)
    # one subset as large as both sets is the whole sets (in some order, which the estimate does not see)
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=15)
    assert mean == pytest.approx(_naive_mmd2(x, y), rel=1e-12) and std == 0


def test_subsets_are_drawn_from_each_set_and_averaged():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)), rng.normal(0.5, 1, size=(30, 3))
    mean, std = kernel_inception_distance(x, y, subsets=5, subset_size=10, seed=7)
    draws = np.random.default_rng(7)
    values = []
    for _ in range(5):
        a, b = x[draws.choice(40, 10, replace=False)], y[draws.choice(30, 10, replace=False)]
        values.append(_naive_mmd2(a, b))
    assert mean == pytest.approx(np.mean(values), rel=1e-10) and std == pytest.approx(np.std(values), rel=1e-8)
    assert kernel_inception_distance(x, y, subsets=5, subset_size=10, seed=7) == (mean, std)  # seeded
    assert kernel_inception_distance(x, y, subsets=5, subset_size=10, seed=8) != (mean, std)


def test_a_set_against_its_other_half_is_about_zero():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(4000, 16))
    mean, std = kernel_inception_distance(f[:2000], f[2000:], subsets=50, subset_size=500)
    assert abs(mean) < 3 * std / np.sqrt(50) + 1e-3, (mean, std)
    shifted, _ = kernel_inception_distance(f[:2000], f[2000:] + 0.3, subsets=50, subset_size=500)
    assert shifted > 20 * abs(mean)


def test_it_grows_with_the_distance_between_two_gaussians():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(1500, 16))
    other = rng.normal(size=(1500, 16))
    values = [kernel_inception_distance(base, other + shift, subsets=20, subset_size=500)[0]
              for shift in (0.0, 0.1, 0.3, 1.0)]
    assert values[1] > 0 and all(a < b for a, b in zip(values, values[1:])), values


def test_it_matches_the_closed_form_for_one_dimensional_gaussians():
    """In one dimension k(x, y) = (xy + 1)³ = x³y³ + 3x²y² + 3xy + 1, so for independent x ~ N(a, 1) and
    y ~ N(b, 1), E k(x, y) = φ(a)·φ(b) with φ(m) = (m³ + 3m, √3 (m² + 1), √3 m) (Gaussian moments), and
    MMD² = ‖φ(a) − φ(b)‖², which the unbiased estimate has as its expectation."""
    phi = lambda m: np.array([m ** 3 + 3 * m, np.sqrt(3) * (m ** 2 + 1), np.sqrt(3) * m])
    a, b = 0.0, 0.5
    expected = float(((phi(a) - phi(b)) ** 2).sum())  # 3.578125
    rng = np.random.default_rng(0)
    x, y = rng.normal(a, 1, size=(20_000, 1)), rng.normal(b, 1, size=(20_000, 1))
    mean, std = kernel_inception_distance(x, y, subsets=100, subset_size=1000)
    # the cubic kernel's heavy tails: over five such draws the estimate spread over 3.40..3.67 (measured)
    assert mean == pytest.approx(expected, rel=0.08), (mean, std, expected)


@pytest.mark.parametrize("args", [
    (np.zeros((10, 3)), np.zeros((10, 4))),
    (np.zeros((1, 3)), np.zeros((10, 3))),
    (np.zeros(10), np.zeros(10)),
])
def test_bad_features_are_a_user_error(args):
    with pytest.raises(UserError, match="feature arrays"):
        kernel_inception_distance(*args)


def test_bad_subsets_are_a_user_error():
    with pytest.raises(UserError, match="subsets"):
        kernel_inception_distance(np.zeros((10, 3)), np.zeros((10, 3)), subsets=0)
