"""Prioritised task sampling: weights, frequencies, in-flight limits, exact resume."""

import json

import numpy as np
import pytest

from spo_agents.learner.config import SamplerConfig
from spo_agents.learner.sampler import NoEligibleTaskError, TaskSampler, priority_weights
from spo_agents.learner.tracker import ValueTracker


def _tracker() -> ValueTracker:
    tracker = ValueTracker()
    tracker.set_alpha_beta("half", 1.0, 1.0)  # v 0.5, N 2
    tracker.set_alpha_beta("easy", 9.0, 1.0)  # v 0.9, N 10
    tracker.set_alpha_beta("solved", 99.0, 1.0)  # v 0.99, N 100
    return tracker  # "new" is unseen: prior v 0.5, N 1


TASKS = ["half", "easy", "solved", "new"]


def test_weights_match_hand_computation():
    sampler = TaskSampler(TASKS, _tracker())
    # sqrt(v(1-v)) + 0.05
    expected = [0.55, 0.35, np.sqrt(0.0099) + 0.05, 0.55]
    assert sampler.weights() == pytest.approx(expected)
    assert sampler.probabilities() == pytest.approx(np.array(expected) / sum(expected))


def test_unprioritized_sampler_weighs_every_task_the_same():
    sampler = TaskSampler.from_config(TASKS, _tracker(), SamplerConfig(prioritized=False))
    assert sampler.probabilities() == pytest.approx([0.25] * 4)
    draws = [sampler.sample(1)[0] for _ in range(4000) if not sampler.release_all()]
    counts = [draws.count(t) / len(draws) for t in TASKS]
    assert counts == pytest.approx([0.25] * 4, abs=0.03)  # "solved" is drawn as often as "half"


def test_gamma_divides_by_n_eff():
    sampler = TaskSampler(TASKS, _tracker(), eps=0.05, gamma=1.0)
    expected = [0.5 / 2 + 0.05, 0.3 / 10 + 0.05, np.sqrt(0.0099) / 100 + 0.05, 0.5 + 0.05]
    assert sampler.weights() == pytest.approx(expected)
    assert priority_weights(np.array([0.0, 1.0]), np.array([1.0, 1.0]), eps=0.05) == pytest.approx(
        [0.05, 0.05]
    )


def test_unlimited_sampling_frequencies_match_weights():
    sampler = TaskSampler(TASKS, _tracker(), max_in_flight_per_task=None, seed=123)
    n = 200_000
    draws = sampler.sample(n)
    counts = np.array([draws.count(t) for t in TASKS], dtype=float)
    expected = sampler.probabilities() * n
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 16.27  # 99.9% quantile of chi-square with 3 degrees of freedom
    assert sampler.in_flight("half") == counts[0]  # unlimited still counts


def test_limit_one_draws_without_replacement_with_the_right_pair_probabilities():
    tracker = _tracker()
    probabilities = TaskSampler(TASKS, tracker).probabilities()
    sampler = TaskSampler(TASKS, tracker, max_in_flight_per_task=1, seed=7)
    trials = 40_000
    pairs = np.zeros((4, 4))
    for _ in range(trials):
        first, second = sampler.sample(2)
        assert first != second
        pairs[TASKS.index(first), TASKS.index(second)] += 1
        sampler.release(first)
        sampler.release(second)
    # P(first = i, second = j) = p_i * p_j / (1 - p_i)
    expected = np.outer(probabilities, probabilities) / (1 - probabilities)[:, None]
    np.fill_diagonal(expected, 0.0)
    assert pairs / trials == pytest.approx(expected, abs=0.01)


def test_tasks_in_flight_are_excluded_until_released():
    sampler = TaskSampler(TASKS, _tracker(), max_in_flight_per_task=1, seed=0)
    assert sorted(sampler.sample(4)) == sorted(TASKS)
    assert sampler.num_eligible() == 0 and sampler.num_in_flight() == 4
    with pytest.raises(NoEligibleTaskError):
        sampler.sample(1)
    sampler.release("easy")
    assert sampler.sample(1) == ["easy"]
    with pytest.raises(KeyError):
        TaskSampler(TASKS, _tracker()).release("easy")


def test_limit_two_allows_two_copies():
    sampler = TaskSampler(["a"], ValueTracker(), max_in_flight_per_task=2)
    assert sampler.sample(2) == ["a", "a"]
    with pytest.raises(NoEligibleTaskError):
        sampler.sample(1)


def test_state_dict_resumes_the_exact_same_draws():
    config = SamplerConfig(seed=99, max_in_flight_per_task=1)
    sampler = TaskSampler.from_config(TASKS, _tracker(), config)
    sampler.sample(2)
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = sampler.sample(2)
    resumed = TaskSampler.from_config(TASKS, _tracker(), SamplerConfig(seed=1))
    resumed.load_state_dict(state)
    assert resumed.num_in_flight() == 2
    assert resumed.sample(2) == expected


def test_explicit_generator_is_used_and_own_generator_untouched():
    sampler = TaskSampler(TASKS, _tracker(), max_in_flight_per_task=None, seed=5)
    before = json.dumps(sampler.state_dict()["rng"])
    a = sampler.sample(10, rng=np.random.default_rng(3))
    b = TaskSampler(TASKS, _tracker(), max_in_flight_per_task=None).sample(
        10, rng=np.random.default_rng(3)
    )
    assert a == b
    assert json.dumps(sampler.state_dict()["rng"]) == before


def test_invalid_construction():
    with pytest.raises(ValueError):
        TaskSampler([], ValueTracker())
    with pytest.raises(ValueError):
        TaskSampler(["a", "a"], ValueTracker())
    with pytest.raises(ValueError):
        TaskSampler(["a"], ValueTracker(), max_in_flight_per_task=0)
