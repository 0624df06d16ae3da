"""Forgetting factor rho, the stored-episode drift cache, and the cheap estimator."""

import json
import math

import numpy as np
import pytest

from spo_agents.learner.config import RhoMode, TrackerConfig
from spo_agents.learner.drift import (
    DriftCache,
    behaviour_ratio_drift,
    forgetting_factor,
    mean_abs_logprob_diff,
    rho_from_drift,
)


@pytest.mark.parametrize(
    "drift, expected",
    [
        (0.0, 0.96),  # first visit: 1 clipped to rho_max
        (0.002, 0.96),  # 2^(-1/30) = 0.9772, clipped
        (0.006, 2 ** -0.1),  # 0.93303, inside the band
        (0.01, 2 ** (-1 / 6)),  # 0.89090, inside the band
        (0.06, 0.875),  # 0.5, clipped to rho_min
        (1.0, 0.875),
    ],
)
def test_rho_from_drift_inside_and_outside_the_clip(drift, expected):
    assert rho_from_drift(drift) == pytest.approx(expected, rel=1e-12)


def test_rho_band_edges_and_array_input():
    low_edge = -0.06 * math.log2(0.96)  # 0.00353
    high_edge = -0.06 * math.log2(0.875)  # 0.01156
    assert low_edge == pytest.approx(0.0035, abs=1e-4)
    assert high_edge == pytest.approx(0.0116, abs=1e-4)
    rho = rho_from_drift(np.array([0.0, low_edge, 0.008, high_edge, 0.5]))
    assert rho == pytest.approx([0.96, 0.96, 2 ** (-0.008 / 0.06), 0.875, 0.875])


def test_forgetting_factor_modes():
    assert forgetting_factor(0.006, TrackerConfig()) == pytest.approx(2 ** -0.1)
    constant = TrackerConfig(rho_mode=RhoMode.CONSTANT)
    assert forgetting_factor(0.006, constant) == 0.875
    assert forgetting_factor(0.0, TrackerConfig(rho_mode="constant", constant_rho=0.9)) == 0.9


class LinearPolicy:
    """Toy context-free policy: logp(token) = -0.1 * theta * token. Counts its calls."""

    def __init__(self, theta=1.0):
        self.theta = theta
        self.calls = 0

    def __call__(self, token_ids_list, loss_masks):
        self.calls += 1
        assert len(token_ids_list) == len(loss_masks)
        return [[-0.1 * self.theta * tok for tok in ids] for ids in token_ids_list]


def test_stored_episode_drift_matches_hand_computation():
    policy = LinearPolicy(theta=1.0)
    cache = DriftCache()
    ids, mask = [5, 1, 2, 3], [0, 1, 1, 1]
    first = cache.measure_and_store(["x"], [ids], [mask], policy, policy_version=1)
    assert first.tolist() == [0.0]  # first visit
    assert policy.calls == 1
    policy.theta = 1.5
    # then (theta 1): -0.1,-0.2,-0.3 on policy tokens; now: -0.15,-0.3,-0.45 -> D = 0.1
    assert cache.drifts(["x", "unseen"], policy) == pytest.approx([0.1, 0.0])
    second = cache.measure_and_store(["x"], [[7, 7]], [[1, 1]], policy, policy_version=2)
    assert second == pytest.approx([0.1])
    assert policy.calls == 3  # one call per measure_and_store: old and new episodes together
    stored = cache.get("x")
    assert stored.token_ids.tolist() == [7, 7] and stored.policy_version == 2
    assert stored.policy_logprobs == pytest.approx([-1.05, -1.05])  # under theta 1.5


def test_duplicated_tasks_measure_against_the_same_stored_episode():
    policy = LinearPolicy()
    cache = DriftCache()
    cache.measure_and_store(["x"], [[1, 2]], [[1, 1]], policy)
    policy.theta = 2.0
    drifts = cache.measure_and_store(["x", "x"], [[3], [4]], [[1], [1]], policy)
    assert drifts == pytest.approx([0.15, 0.15])  # |(-0.1,-0.2) - (-0.2,-0.4)| mean
    assert cache.get("x").token_ids.tolist() == [4]  # the last one is kept


def test_lru_eviction_by_task_count_and_total_tokens():
    policy = LinearPolicy()
    cache = DriftCache(max_tasks=2, max_tokens_per_episode=10, max_total_tokens=7)
    cache.store("a", [1, 2, 3], [1, 1, 1], [0.0] * 3)
    cache.store("b", [1, 2, 3], [1, 1, 1], [0.0] * 3)
    cache.store("a", [1, 2], [1, 1], [0.0] * 2)  # re-storing makes "a" most recent
    cache.store("c", [1], [1], [0.0])  # 3 tasks > 2: evict least recent ("b")
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.store("d", [1, 2, 3, 4, 5, 6], [1] * 6, [0.0] * 6)  # a+c+d = 9 > 7 tokens: evict "a"
    assert "a" not in cache and "c" in cache and "d" in cache
    assert cache.total_tokens == 7 and cache.evictions == 2
    policy.theta = 3.0
    assert cache.drifts(["b"], policy).tolist() == [0.0]  # evicted: like a first visit


def test_long_episodes_are_truncated_to_an_exact_prefix():
    policy = LinearPolicy(theta=1.0)
    cache = DriftCache(max_tokens_per_episode=3)
    cache.measure_and_store(["x"], [[9, 1, 2, 8, 8]], [[0, 1, 1, 1, 1]], policy)
    assert cache.get("x").num_tokens == 3
    policy.theta = 2.0
    # only tokens 1 and 2 of the prefix count: |0.1-0.2|, |0.2-0.4| -> 0.15
    assert cache.drifts(["x"], policy) == pytest.approx([0.15])


def test_drift_cache_state_round_trips_through_json_with_lru_order():
    policy = LinearPolicy()
    cache = DriftCache(max_tasks=3)
    ids, masks = [[1, 2], [3], [4, 5]], [[0, 1], [1], [1, 1]]
    cache.measure_and_store(["a", "b", "c"], ids, masks, policy, policy_version=4)
    cache.store("a", [6, 7], [1, 1], [-0.6, -0.7])
    restored = DriftCache()
    restored.load_state_dict(json.loads(json.dumps(cache.state_dict())))
    assert restored.state_dict() == cache.state_dict()
    policy.theta = 1.7
    assert restored.drifts(["a", "b", "c"], policy) == pytest.approx(
        cache.drifts(["a", "b", "c"], policy), abs=0
    )
    restored.store("d", [1], [1], [0.0])  # evicts "b", the least recently stored
    assert "b" not in restored and "a" in restored


def test_torch_tensors_are_accepted_from_logprob_fn_and_estimators():
    import torch

    theta = {"value": 1.0}

    def tensor_policy(token_ids_list, loss_masks):
        scale = -0.1 * theta["value"]
        return [scale * torch.tensor(ids, dtype=torch.float32) for ids in token_ids_list]

    cache = DriftCache()
    cache.measure_and_store(["x"], [[5, 1, 2, 3]], [[0, 1, 1, 1]], tensor_policy)
    theta["value"] = 1.5
    assert cache.drifts(["x"], tensor_policy) == pytest.approx([0.1], rel=1e-6)
    cheap = behaviour_ratio_drift(
        torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0]), torch.tensor([True, True])
    )
    assert cheap == pytest.approx(0.25)


def test_mean_abs_logprob_diff_ignores_unmasked_and_handles_empty_masks():
    assert mean_abs_logprob_diff([0.0, -1.0, -2.0], [5.0, -1.5, -1.0], [0, 1, 1]) == 0.75
    assert mean_abs_logprob_diff([0.0], [1.0], [0]) == 0.0


def _categorical_logprobs(logits):
    return logits - np.log(np.exp(logits).sum())


def test_behaviour_ratio_agrees_with_stored_episode_when_its_assumptions_hold():
    """Both estimate E_{y~pi_then}|log pi_then(y) - log pi_now(y)| per token when the current
    episode was generated by the policy that followed the task's last visit."""
    rng = np.random.default_rng(0)
    vocab = 64
    logits_then = rng.normal(size=vocab)
    logits_now = logits_then + rng.normal(scale=0.02, size=vocab)
    logp_then, logp_now = _categorical_logprobs(logits_then), _categorical_logprobs(logits_now)
    params = {"logp": logp_then}

    def logprob_fn(token_ids_list, loss_masks):  # context-free policy
        return [params["logp"][np.asarray(ids)] for ids in token_ids_list]

    length = 20_000
    last_visit = rng.choice(vocab, size=length, p=np.exp(logp_then)).tolist()
    cache = DriftCache(max_tokens_per_episode=length)
    cache.measure_and_store(["x"], [last_visit], [[1] * length], logprob_fn)
    params["logp"] = logp_now  # the policy moved
    stored_d = cache.drifts(["x"], logprob_fn)[0]

    current = rng.choice(vocab, size=length, p=np.exp(logp_then))  # generated by pi_then
    cheap_d = behaviour_ratio_drift(logp_then[current], logp_now[current], [1] * length)
    exact_d = float(np.sum(np.exp(logp_then) * np.abs(logp_then - logp_now)))
    assert stored_d == pytest.approx(exact_d, rel=0.05)
    assert cheap_d == pytest.approx(stored_d, rel=0.05)
    assert rho_from_drift(cheap_d) == pytest.approx(rho_from_drift(stored_d), abs=0.005)

    # The documented caveat: an on-policy episode (behaviour = current) shows no drift.
    on_policy = rng.choice(vocab, size=length, p=np.exp(logp_now))
    assert behaviour_ratio_drift(logp_now[on_policy], logp_now[on_policy], [1] * length) == 0.0
    assert stored_d > 0.005


def test_stored_episode_from_the_training_forward_reads_off_or_rescores():
    """D = mean |logp_then - logp_now| on the stored episode's policy tokens, `now` read off the
    new episode's forward where it repeats the stored one up to its last policy token."""
    policy = LinearPolicy(theta=1.0)
    cache = DriftCache()
    stored = {"a": ([5, 1, 2, 9], [0, 1, 1, 0]), "b": ([5, 3, 4], [0, 1, 1]), "c": ([5, 6], [0, 1])}
    ids = [v[0] for v in stored.values()]
    masks = [v[1] for v in stored.values()]
    drifts, counts = cache.measure_and_store_from_forward(list(stored), ids, masks, policy(ids, masks), policy)
    assert drifts.tolist() == [0.0, 0.0, 0.0] and counts["revisits"] == 0 and policy.calls == 1  # the forward
    policy.theta = 2.0
    new_ids = [[5, 1, 2, 7, 7],  # a: repeats 5 1 2 (its last policy token), then differs: read off
               [5, 3, 8],  # b: differs at a policy token: re-scored
               [5, 6, 6]]  # c: longer, same prefix: read off
    new_masks = [[0, 1, 1, 0, 1], [0, 1, 1], [0, 1, 1]]
    forward = policy(new_ids, new_masks)  # the training forward under theta 2
    drifts, counts = cache.measure_and_store_from_forward(list(stored), new_ids, new_masks, forward, policy)
    # per policy token |-0.1 t - (-0.2 t)| = 0.1 t: a (1, 2) -> 0.15; b (3, 4) -> 0.35; c (6) -> 0.6
    assert drifts == pytest.approx([0.15, 0.35, 0.6])
    assert counts == {"revisits": 3.0, "read_off_forward": 2.0, "rescored": 1.0}
    assert policy.calls == 3  # the two forwards and one pass over b's stored episode only
    assert cache.get("b").token_ids.tolist() == [5, 3, 8]
    assert cache.get("b").policy_logprobs == pytest.approx([-0.6, -1.6])  # the forward's, theta 2


def test_read_off_needs_the_same_tokens_before_the_last_policy_token():
    policy = LinearPolicy()
    cache = DriftCache()
    cache.measure_and_store_from_forward(["a"], [[5, 1, 2]], [[0, 1, 1]], policy([[5, 1, 2]], [[0, 1, 1]]), policy)
    calls = policy.calls
    # the prompt token differs (an env observation changed): the forward scored another context
    cache.measure_and_store_from_forward(["a"], [[4, 1, 2]], [[0, 1, 1]], policy([[4, 1, 2]], [[0, 1, 1]]), policy)
    assert policy.calls == calls + 2


def test_d_half_and_the_clip_come_from_the_tracker_config():
    # 2 ** (-0.006 / 0.12) = 0.9659 with d_half 0.12 (0.9330 at the default 0.06)
    assert forgetting_factor(0.006, TrackerConfig(d_half=0.12, rho_max=0.99)) == pytest.approx(2 ** -0.05)
    assert forgetting_factor(0.0, TrackerConfig(rho_max=0.99)) == 0.99  # rho_max clips a first visit
    assert forgetting_factor(1.0, TrackerConfig(rho_min=0.5)) == 0.5  # rho_min clips a large drift
