"""SPO and GRPO advantages and running moments against hand-computed numbers."""

import json

import numpy as np
import pytest
import torch

from spo_agents.learner.advantages import RunningMoments, grpo_advantages, spo_advantages

REWARDS = [1.0, 0.0, 1.0, 0.0]
VALUES = [0.5, 0.5, 0.2, 0.8]  # A = [0.5, -0.5, 0.8, -0.8], mean 0
TOKENS = [1, 2, 3, 4]


def test_spo_episode_normalisation_uses_the_unbiased_std():
    std = np.sqrt((0.25 + 0.25 + 0.64 + 0.64) / 3)  # 0.770281
    expected = np.array([0.5, -0.5, 0.8, -0.8]) / (std + 1e-8)
    assert spo_advantages(REWARDS, VALUES) == pytest.approx(expected)
    assert spo_advantages(REWARDS, VALUES)[0] == pytest.approx(0.649113, abs=1e-6)
    population = spo_advantages(REWARDS, VALUES, ddof=0)
    assert population == pytest.approx(np.array([0.5, -0.5, 0.8, -0.8]) / np.sqrt(1.78 / 4))


def test_spo_token_normalisation_weights_episodes_by_policy_tokens():
    # mean_tok = (0.5 - 1.0 + 2.4 - 3.2)/10 = -0.13
    # var_tok = (0.63^2 + 2*0.37^2 + 3*0.93^2 + 4*0.67^2)/10 = 0.5061
    std = np.sqrt(0.5061)
    expected = (np.array([0.5, -0.5, 0.8, -0.8]) + 0.13) / (std + 1e-8)
    result = spo_advantages(REWARDS, VALUES, num_tokens_B=TOKENS, normalize="token")
    assert result == pytest.approx(expected)
    assert result[0] == pytest.approx(0.885569, abs=1e-6)  # 0.63 / 0.711407
    # token-weighted mean of the result is zero: the token measure is centred
    assert np.dot(result, TOKENS) == pytest.approx(0.0, abs=1e-9)


def test_token_normalisation_with_equal_lengths_is_the_population_episode_one():
    equal = spo_advantages(REWARDS, VALUES, num_tokens_B=[7, 7, 7, 7], normalize="token")
    assert equal == pytest.approx(spo_advantages(REWARDS, VALUES, ddof=0))


def test_spo_none_and_edge_cases():
    raw = spo_advantages(REWARDS, VALUES, normalize="none")
    assert raw == pytest.approx([0.5, -0.5, 0.8, -0.8])
    assert spo_advantages([1.0], [0.3]).tolist() == [0.0]  # one episode: no spread, no nan
    assert spo_advantages([1.0, 1.0], [0.5, 0.5]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        spo_advantages(REWARDS, VALUES, normalize="token")
    with pytest.raises(ValueError):
        spo_advantages(REWARDS, VALUES, num_tokens_B=[0, 0, 0, 0], normalize="token")
    with pytest.raises(ValueError):
        spo_advantages(REWARDS, VALUES, normalize="group")


def test_spo_advantages_keep_torch_in_torch_out():
    rewards = torch.tensor(REWARDS, dtype=torch.float32)
    result = spo_advantages(rewards, torch.tensor(VALUES, dtype=torch.float32))
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
    assert result.numpy() == pytest.approx(spo_advantages(REWARDS, VALUES), rel=1e-6)
    int_rewards = spo_advantages(torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), normalize="none")
    assert int_rewards.dtype == torch.float32


def test_grpo_advantages_and_degenerate_groups():
    rewards = [1, 0, 1, 1, 0, 0, 0, 0, 1, 0]
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 2
    advantages, degenerate = grpo_advantages(rewards, groups)
    # group a: mean 0.75, unbiased std 0.5; group b: all equal; group c: mean 0.5, std sqrt(0.5)
    expected = [0.25 / 0.500001, -0.75 / 0.500001, 0.25 / 0.500001, 0.25 / 0.500001]
    expected += [0.0] * 4
    expected += [0.5 / (np.sqrt(0.5) + 1e-6), -0.5 / (np.sqrt(0.5) + 1e-6)]
    assert advantages == pytest.approx(expected)
    assert degenerate == 1
    centred, _ = grpo_advantages(rewards, groups, scale_by_std=False)
    assert centred[:4] == pytest.approx([0.25, -0.75, 0.25, 0.25])


def test_grpo_singletons_are_degenerate_and_torch_round_trips():
    advantages, degenerate = grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), np.array([1, 2, 2]))
    assert isinstance(advantages, torch.Tensor)
    assert advantages.tolist()[0] == 0.0 and degenerate == 1
    with pytest.raises(ValueError):
        grpo_advantages([1.0, 0.0], ["a"])


def test_welford_matches_batch_statistics_and_the_token_measure():
    moments = RunningMoments("welford")
    moments.update(1.0)
    moments.update([2.0, 3.0, 4.0])
    assert (moments.count, moments.mean, moments.var) == pytest.approx((4, 2.5, 1.25))
    moments.reset()
    raw = np.array([0.5, -0.5, 0.8, -0.8])
    for value, tokens in zip(raw, TOKENS):  # arriving one at a time, weighted by tokens
        moments.update(value, weight=tokens)
    assert moments.mean == pytest.approx(-0.13)
    assert moments.std == pytest.approx(np.sqrt(0.5061))
    assert moments.normalize(raw) == pytest.approx(
        spo_advantages(REWARDS, VALUES, num_tokens_B=TOKENS, normalize="token")
    )
    assert isinstance(moments.normalize(0.5), float)


def test_ema_moments_match_hand_computation_and_forget():
    moments = RunningMoments("ema", ema_decay=0.5)
    moments.update(1.0)
    moments.update(3.0)
    # weights 0.5 and 1 on values 1 and 3: mean 7/3, var (0.5*(4/3)^2 + (2/3)^2)/1.5 = 8/9
    assert moments.mean == pytest.approx(7 / 3)
    assert moments.var == pytest.approx(8 / 9)
    for _ in range(60):
        moments.update(5.0)
    assert moments.mean == pytest.approx(5.0) and moments.std == pytest.approx(0.0, abs=1e-6)


def test_running_moments_state_round_trip():
    moments = RunningMoments("ema", ema_decay=0.9)
    moments.update([0.3, -1.2, 2.5], weight=[1, 2, 3])
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(moments.state_dict())))
    assert restored.state_dict() == moments.state_dict()
    moments.update(0.7)
    restored.update(0.7)
    assert (restored.mean, restored.var) == (moments.mean, moments.var)
    with pytest.raises(ValueError):
        moments.update(1.0, weight=-1)
