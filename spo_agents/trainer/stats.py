"""Binomial intervals for held-out accuracies (Wilson) and their differences (Newcombe).

Shared by the trainer's before/after summary and `spo-agents bench learning`. Written here
rather than imported because scipy/statsmodels would be a heavy dependency for two formulas.
"""

from __future__ import annotations

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                        z: float = 1.96) -> tuple[float, float]:
    """Newcombe's interval for p_b - p_a from the two Wilson intervals (method 10).

    It treats the samples as independent; for the same tasks evaluated twice (positively
    correlated outcomes) it is wider than a paired interval, so it errs on the safe side.
    """
    low_a, high_a = wilson_interval(successes_a, n_a, z)
    low_b, high_b = wilson_interval(successes_b, n_b, z)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    diff = p_b - p_a
    return (float(diff - np.sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2)),
            float(diff + np.sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2)))


# two-sided 95% quantiles of Student's t, by degrees of freedom (1-10); normal beyond
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_interval(values: list[float]) -> tuple[float, float] | None:
    """95% Student-t interval of the mean of a few values (e.g. one per seed); None below two."""
    if len(values) < 2:
        return None
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))
    half = _T95.get(len(values) - 1, 1.96) * sem
    return mean - half, mean + half
