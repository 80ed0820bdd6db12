"""Confidence intervals for the accuracy gate: Wilson score intervals for proportions (top-1 agreement, task
accuracy) and a paired bootstrap for the accuracy drop (the same samples scored by both models)."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %
BOOTSTRAP_ROUNDS = 2000


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``successes / n`` (sound near 0 and 1, unlike the normal
    approximation); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_drop_ci(
    reference_correct: np.ndarray,
    candidate_correct: np.ndarray,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the accuracy drop in points, ``100 * (mean(ref) - mean(cand))``,
    resampling samples (pairs) with replacement: only the samples where the two models differ move it, as in
    McNemar's test."""
    ref = np.asarray(reference_correct, dtype=np.int8)
    cand = np.asarray(candidate_correct, dtype=np.int8)
    n = len(ref)
    if n == 0:
        return 0.0, 0.0
    diff = (ref - cand).astype(np.float64)
    if not diff.any():
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    chunk = max(1, min(rounds, 4_000_000 // n))
    means = []
    for start in range(0, rounds, chunk):
        k = min(chunk, rounds - start)
        idx = rng.integers(0, n, size=(k, n))
        means.append(diff[idx].mean(axis=1))
    values = 100.0 * np.concatenate(means)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
