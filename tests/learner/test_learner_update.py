"""The PPO update on the tiny real model: direction of change, accumulation equivalence."""

import copy

import numpy as np
import pytest
import torch

from spo_agents.backends.models import load_model
from spo_agents.learner.update import OptimConfig, PolicyUpdater, microbatches
from spo_agents.rollout.episode import TrainingSample


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


def sample_for(updater, prompt, completion):
    ids = prompt + completion
    logprobs = updater.logprobs([ids])[0]
    mask = [0] * len(prompt) + [1] * len(completion)
    return TrainingSample(ids, mask, [float(lp) if m else 0.0 for lp, m in zip(logprobs, mask)])


def sequence_logprob(updater, sample):
    logprobs = updater.logprobs([sample.token_ids])[0]
    return float(np.sum(logprobs * np.array(sample.loss_mask)))


def test_microbatches_respect_token_budget():
    lengths = [5, 100, 7, 60, 8, 90]
    groups = microbatches(lengths, token_budget=200)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        assert max(lengths[i] for i in group) * len(group) <= 200 or len(group) == 1


def test_step_raises_positive_and_lowers_negative_advantage_episodes(tiny):
    model = copy.deepcopy(tiny.model)
    updater = PolicyUpdater(model, OptimConfig(lr=1e-2, grad_clip=10.0))
    prompt = tiny.tokenizer.encode("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    good = sample_for(updater, prompt, tiny.tokenizer.encode("the answer is 42"))
    bad = sample_for(updater, prompt, tiny.tokenizer.encode("no idea at all"))
    before = sequence_logprob(updater, good), sequence_logprob(updater, bad)
    metrics = updater.step([good, bad], [1.0, -1.0])
    after = sequence_logprob(updater, good), sequence_logprob(updater, bad)
    assert after[0] > before[0] and after[1] < before[1]
    assert updater.version == 1 and metrics["train_tokens"] == sum(good.loss_mask) + sum(bad.loss_mask)
    # first step is on-policy: ratios are 1, nothing clipped
    assert metrics["loss/clip_frac_high"] == 0.0 and metrics["loss/clip_frac_low"] == 0.0
    assert abs(metrics["loss/ratio_mean"] - 1.0) < 1e-4


def test_accumulating_one_episode_at_a_time_equals_one_batch_step(tiny):
    prompt = tiny.tokenizer.encode("<|im_start|>user\nadd 2 and 3<|im_end|>\n<|im_start|>assistant\n")
    base = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=64))
    samples = [sample_for(base, prompt, tiny.tokenizer.encode(text)) for text in ("5", "six", "it is 5 ok")]
    advantages = [0.7, -1.2, 0.5]

    batched = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=4096))
    batched.step(samples, advantages)
    streamed = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=64))
    for sample, advantage in zip(samples, advantages):
        streamed.accumulate([sample], [advantage])
    streamed.apply()
    for p_batched, p_streamed in zip(batched.model.parameters(), streamed.model.parameters()):
        torch.testing.assert_close(p_batched, p_streamed, rtol=1e-4, atol=1e-6)
