"""The PPO update on the tiny real model: direction of change, accumulation equivalence."""

import copy
import math

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

    # the plain forward on both sides: sharing the prompt across rows only reorders float sums
    # (test_shared_prefix.py), which AdamW's first step can magnify past this tolerance
    batched = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=4096, share_prefix=False))
    batched.step(samples, advantages)
    streamed = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=64))
    for sample, advantage in zip(samples, advantages):
        streamed.accumulate([sample], [advantage])
    streamed.apply()
    for p_batched, p_streamed in zip(batched.model.parameters(), streamed.model.parameters()):
        torch.testing.assert_close(p_batched, p_streamed, rtol=1e-4, atol=1e-6)


# ---- every LossConfig term reaches the loss (issue 16 item 12) ------------------------------

def _updater(tiny, lr=1e-2, **loss):
    from spo_agents.learner.config import LossConfig

    return PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=lr, grad_clip=10.0), LossConfig(**loss))


def _answer_samples(tiny, updater):
    prompt = tiny.tokenizer.encode("<|im_start|>user\nwhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    return [sample_for(updater, prompt, tiny.tokenizer.encode(text)) for text in ("it is 5", "seven or so")]


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _moved(before, model):
    return max(float((a - b.detach()).abs().max()) for a, b in zip(before, model.parameters()))


def test_kl_coef_pulls_the_policy_back_to_the_reference(tiny):
    """Zero advantages: without KL the gradient is 0 and nothing moves; with KL the step lowers
    KL(reference || policy), measured with k3 on the samples' policy tokens."""
    for kl_coef, expect_move in ((0.0, False), (1.0, True)):
        updater = _updater(tiny, lr=1e-5, kl_coef=kl_coef)
        samples = _answer_samples(tiny, updater)
        with torch.no_grad():  # the policy has drifted away from its initial (reference) weights
            generator = torch.Generator().manual_seed(0)
            for param in updater.model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))

        def kl_to_reference():
            total = 0.0
            for sample in samples:
                now = updater.logprobs([sample.token_ids])[0]
                ref = PolicyUpdater(tiny.model).logprobs([sample.token_ids])[0]
                log_ratio = (ref - now)[np.array(sample.loss_mask, dtype=bool)]
                total += float(np.sum(np.exp(log_ratio) - log_ratio - 1))
            return total

        before, params = kl_to_reference(), _params(updater.model)
        metrics = updater.step(samples, [0.0, 0.0])
        if expect_move:
            assert metrics["loss/kl_ref"] > 0 and kl_to_reference() < before
        else:
            assert _moved(params, updater.model) == 0.0 and "loss/kl_ref" not in metrics


def test_entropy_coef_raises_the_policy_entropy(tiny):
    def entropy(updater, sample):  # of the next-token distributions that predict policy tokens
        with torch.no_grad():
            logits = updater.model(input_ids=torch.tensor([sample.token_ids])).logits[0, :-1]
        distribution = torch.distributions.Categorical(logits=logits)
        return float((distribution.entropy() * torch.tensor(sample.loss_mask[1:])).sum())

    for coef, expect_rise in ((0.0, False), (0.5, True)):
        updater = _updater(tiny, entropy_coef=coef)
        samples = _answer_samples(tiny, updater)
        before, params = sum(entropy(updater, s) for s in samples), _params(updater.model)
        metrics = updater.step(samples, [0.0, 0.0])
        after = sum(entropy(updater, s) for s in samples)
        if expect_rise:
            assert after > before + 1e-3 and metrics["loss/entropy"] > 0
        else:
            assert _moved(params, updater.model) == 0.0 and "loss/entropy" not in metrics


def test_tis_cap_replaces_the_clip_by_a_truncated_weight(tiny):
    """A stale episode whose tokens are now 4x likelier than when sampled: the PPO ratio (4) is
    past 1 + clip_high, so without TIS the positive advantage gives no gradient; with TIS the
    ratio is anchored on the step-start log-probs and the weight min(4, cap) keeps the signal."""
    for tis_cap, expect_move in ((None, False), (2.0, True)):
        updater = _updater(tiny, tis_cap=tis_cap)
        good = _answer_samples(tiny, updater)[0]
        stale = TrainingSample(good.token_ids, good.loss_mask,
                               [lp - math.log(4.0) if m else 0.0 for lp, m in zip(good.behaviour_logprobs,
                                                                                    good.loss_mask)])
        before, params = sequence_logprob(updater, good), _params(updater.model)
        metrics = updater.step([stale], [1.0])
        if expect_move:
            assert sequence_logprob(updater, good) > before
            assert metrics["loss/tis_weight_mean"] == pytest.approx(2.0, rel=1e-3)
            assert metrics["loss/tis_truncated_frac"] == 1.0
        else:
            assert _moved(params, updater.model) == 0.0 and metrics["loss/clip_frac_high"] == 1.0


def test_tis_cap_rejects_clip_settings_it_would_ignore():
    from spo_agents.learner.config import LossConfig

    with pytest.raises(ValueError, match="clip_low has no effect with tis_cap"):
        LossConfig(tis_cap=2.0, clip_low=0.1)
    with pytest.raises(ValueError, match="dual_clip has no effect with tis_cap"):
        LossConfig(tis_cap=2.0, dual_clip=None)
    config = LossConfig(tis_cap=2.0)
    assert LossConfig.model_validate(config.model_dump()) == config  # a dumped config loads again


def test_logged_pg_loss_is_the_token_mean(tiny):
    """On-policy first step: every ratio is 1, so loss/pg = -sum_i A_i n_i / sum_i n_i."""
    updater = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=32))
    samples = _answer_samples(tiny, updater)
    advantages = [1.5, -0.5]
    counts = [sum(s.loss_mask) for s in samples]
    metrics = updater.step(samples, advantages)
    expected = -sum(a * n for a, n in zip(advantages, counts)) / sum(counts)
    assert metrics["loss/pg"] == pytest.approx(expected, abs=1e-5)
    assert metrics["loss/total"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("advantage, ratio, setting, moves", [
    (1.0, 4.0, {}, False),  # ratio past 1 + clip_high: clipped, no gradient
    (1.0, 4.0, {"clip_high": 5.0}, True),
    (-1.0, 0.25, {}, False),  # ratio under 1 - clip_low: clipped
    (-1.0, 0.25, {"clip_low": 0.9}, True),
    (-1.0, 20.0, {}, False),  # past the dual clip c = 10: constant loss
    (-1.0, 20.0, {"dual_clip": None}, True),
])
def test_clip_settings_decide_which_tokens_carry_gradient(tiny, advantage, ratio, setting, moves):
    updater = _updater(tiny, **setting)
    sample = _answer_samples(tiny, updater)[0]
    shifted = TrainingSample(sample.token_ids, sample.loss_mask,
                             [lp - math.log(ratio) if m else 0.0 for lp, m in zip(sample.behaviour_logprobs,
                                                                                  sample.loss_mask)])
    params = _params(updater.model)
    updater.step([shifted], [advantage])
    assert (_moved(params, updater.model) > 0) is moves


def test_grad_clip_bounds_the_gradient_the_optimiser_sees(tiny):
    """AdamW is scale-free until the gradient nears its eps (1e-8): clipped to 1e-9 the step is tiny."""
    moved = {}
    for grad_clip in (1.0, 1e-9):
        updater = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, grad_clip=grad_clip))
        sample = _answer_samples(tiny, updater)[0]
        params = _params(updater.model)
        metrics = updater.step([sample], [1.0])
        moved[grad_clip] = _moved(params, updater.model)
        assert metrics["grad_norm"] > 1e-3  # the norm before clipping
    assert moved[1e-9] < 0.1 * moved[1.0]


def test_optim_temperature_scales_the_logits_of_every_log_prob(tiny):
    ids = tiny.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello")
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    scored = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(temperature=0.5)).logprobs([ids])[0]
    assert scored[1:] == pytest.approx(expected, abs=1e-4)


def test_episodes_that_ended_before_their_first_turn_are_skipped(tiny):
    """An env that crashes in reset yields an episode with no tokens: a batch of only those
    steps without crashing, and one in a mixed batch changes nothing."""
    empty = TrainingSample([], [], [])
    only_empty = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3))
    assert only_empty.step([empty, empty], [1.0, -1.0])["train_tokens"] == 0
    assert [len(lp) for lp in only_empty.logprobs([[], []])] == [0, 0]

    prompt = tiny.tokenizer.encode("<|im_start|>user\nadd 2 and 3<|im_end|>\n<|im_start|>assistant\n")
    plain = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=4096))
    mixed = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3, microbatch_tokens=4096))
    samples = [sample_for(plain, prompt, tiny.tokenizer.encode(text)) for text in ("5", "it is 5 ok")]
    plain.step(samples, [0.7, -1.2])
    mixed.step([samples[0], empty, samples[1]], [0.7, 3.0, -1.2])
    assert microbatches([3, 0, 5], 4096) == [[0, 2]]
    for a, b in zip(plain.model.parameters(), mixed.model.parameters()):
        assert torch.equal(a, b)


def test_prompt_positions_are_not_scored_and_the_update_is_unchanged(tiny, monkeypatch):
    """Logits are computed from one position before the first loss token on (a prompt's own
    logits feed nothing); log-probs there and the update equal those of the full forward."""
    import spo_agents.learner.update as update

    prompt = tiny.tokenizer.encode("<|im_start|>user\nadd 2 and 3, then 4<|im_end|>\n<|im_start|>assistant\n")
    base = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3))
    samples = [sample_for(base, prompt[k:], tiny.tokenizer.encode(text))
               for k, text in ((0, "5 then 9"), (3, "it is 9"), (5, "nine"))]
    mask_B_T = torch.tensor([[0.0] * 4 + [1.0] * 3, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert update.first_scored_position(mask_B_T) == 1
    assert update.first_scored_position(torch.zeros(2, 7)) == 5

    ids_B_T = torch.tensor([samples[0].token_ids])
    full_T = update.token_logprobs(base.model, ids_B_T, torch.ones_like(ids_B_T))[0]
    first = len(prompt) - 1
    cut_T = update.token_logprobs(base.model, ids_B_T, torch.ones_like(ids_B_T), first=first)[0]
    assert torch.allclose(cut_T[first + 1:], full_T[first + 1:], atol=1e-5) and not cut_T[: first + 1].any()

    advantages = [0.9, -0.4, 0.6]
    restricted = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3))
    restricted.step(samples, advantages)
    monkeypatch.setattr(update, "first_scored_position", lambda mask: 0)
    everywhere = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(lr=1e-3))
    everywhere.step(samples, advantages)
    for a, b in zip(restricted.model.parameters(), everywhere.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for cut, full, sample in zip(restricted.last_logprobs, everywhere.last_logprobs, samples):
        mask = np.array(sample.loss_mask, dtype=bool)
        assert np.allclose(cut[mask], full[mask], atol=1e-5)
