"""The intervals the summaries report: Wilson, Newcombe (published values) and the t-interval over seeds."""

import numpy as np
import pytest

from spo_agents.trainer.stats import difference_interval, mean_interval, wilson_interval


def test_wilson_and_newcombe_intervals_match_published_values():
    low, high = wilson_interval(81, 263)  # Newcombe (1998), example: 0.2553 to 0.3662
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    low, high = difference_interval(48, 80, 56, 70)  # Newcombe (1998), 56/70 - 48/80, method 10: 0.0524 to 0.3339
    assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)


def test_mean_interval_uses_student_t_for_a_few_seeds():
    low, high = mean_interval([0.5, 0.6, 0.7])  # mean 0.6, sd 0.1, t(2) = 4.303
    assert (low + high) / 2 == pytest.approx(0.6) and high - low == pytest.approx(2 * 4.303 * 0.1 / np.sqrt(3))
    assert mean_interval([0.5]) is None
