"""The learner computes a micro-batch's shared prompt prefix once (optim.share_prefix).

The claim is exactness: the same log-probs and the same gradients as the plain padded forward
(up to float rounding), on untied and tied-embedding models and on LoRA adapters, while the
model really sees the prefix once (one single-row call) and every row's suffix on top of it.
"""

import copy

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from spo_agents.backends.models import build_tiny_tokenizer, load_model
from spo_agents.learner.shared_prefix import MIN_SHARED_PREFIX, common_prefix_length, shared_prefix_length
from spo_agents.learner.update import OptimConfig, PolicyUpdater
from spo_agents.rollout.episode import TrainingSample

HEADER = "<|im_start|>system\nYou are a careful calculator.<|im_end|>\n<|im_start|>user\n"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


def tied_qwen2(tokenizer):
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         initializer_range=0.1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def episodes(tokenizer):
    """Rows with a common chat header, their own question, and completions of varied length."""
    rows = []
    for question, answer in (("2+3?", "5"), ("7*8?", "it is 56"), ("9-4?", "five, no: 5"), ("1+1?", "2 of course")):
        prompt = tokenizer.encode(HEADER + question + "<|im_end|>\n<|im_start|>assistant\n")
        completion = tokenizer.encode(answer + "<|im_end|>")
        rows.append(TrainingSample(prompt + completion, [0] * len(prompt) + [1] * len(completion),
                                   [0.0] * len(prompt) + [-2.0] * len(completion)))
    return rows


def calls(model):
    """Record the (rows, tokens) of every forward the model runs."""
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    return seen


def step_both_ways(model, samples, advantages):
    out = {}
    for share in (False, True):
        updater = PolicyUpdater(copy.deepcopy(model), OptimConfig(lr=1e-3, share_prefix=share))
        seen = calls(updater.model)
        updater.accumulate(samples, advantages)
        grads = [p.grad.clone() for p in updater.model.parameters() if p.grad is not None]
        logprobs = updater.last_logprobs
        rescored = updater.logprobs([s.token_ids for s in samples], [s.loss_mask for s in samples])
        out[share] = grads, logprobs, rescored, seen
    return out


def assert_same(out):
    (grads, logprobs, rescored, _), (grads_s, logprobs_s, rescored_s, _) = out[False], out[True]
    assert len(grads) == len(grads_s) > 0
    for plain, shared in zip(grads, grads_s):
        assert torch.allclose(plain, shared, rtol=1e-4, atol=1e-5 * float(plain.abs().max())), \
            float((plain - shared).abs().max())
    for plain, shared in zip(logprobs + rescored, logprobs_s + rescored_s):
        assert np.allclose(plain, shared, atol=1e-5)


def test_shared_prefix_length_stops_at_the_first_difference_padding_or_limit():
    ids = torch.tensor([[5] * 10 + [1, 2, 0], [5] * 10 + [1, 3, 4], [5] * 10 + [1, 2, 4]])
    mask = torch.tensor([[1] * 12 + [0], [1] * 13, [1] * 13])
    assert shared_prefix_length(ids, mask, limit=12) == 11
    assert shared_prefix_length(ids, mask, limit=9) == 9
    assert shared_prefix_length(ids[:1], mask[:1], limit=12) == 0  # one row: nothing to share
    assert shared_prefix_length(ids, mask, limit=MIN_SHARED_PREFIX - 1) == 0  # too short to pay
    padded = mask.clone()
    padded[1, 9:] = 0  # a row that ends inside the common tokens
    assert shared_prefix_length(ids, padded, limit=12) == 9


def test_shared_prefix_forward_equals_the_plain_forward(tiny):
    samples = episodes(tiny.tokenizer)
    out = step_both_ways(tiny.model, samples, [1.0, -0.5, 0.3, -1.2])
    assert_same(out)
    header = len(tiny.tokenizer.encode(HEADER))
    plain_calls, shared_calls = out[False][3], out[True][3]  # the model's calls with share_prefix off, on
    assert all(rows == len(samples) for rows, _ in plain_calls)
    prefix_calls = [c for c in shared_calls if c[0] == 1]
    assert len(prefix_calls) == 2 and all(tokens >= header for _, tokens in prefix_calls)  # forward + rescore
    widest = max(len(s) for s in samples)
    assert all(tokens == widest - prefix_calls[0][1] for rows, tokens in shared_calls if rows == len(samples))


def test_shared_prefix_on_a_tied_embedding_model_and_lora_adapters():
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tiny_tokenizer(seed=0)
    samples = episodes(tokenizer)
    advantages = [0.4, -1.0, 1.3, -0.2]
    tied = tied_qwen2(tokenizer)
    assert tied.get_input_embeddings().weight is tied.get_output_embeddings().weight
    assert_same(step_both_ways(tied, samples, advantages))
    adapted = get_peft_model(copy.deepcopy(tied), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False))
    out = step_both_ways(adapted, samples, advantages)
    assert_same(out)
    assert any(rows == 1 for rows, _ in out[True][3])


def test_the_token_budget_counts_the_shared_prefix_once(tiny):
    samples = episodes(tiny.tokenizer)
    ids, masks = [s.token_ids for s in samples], [s.loss_mask for s in samples]
    header = len(tiny.tokenizer.encode(HEADER))
    shared = common_prefix_length(ids, masks)
    assert header <= shared < min(m.index(1) for m in masks)
    assert common_prefix_length(ids[:1], masks[:1]) == 0  # nothing to share alone
    assert common_prefix_length([ids[0], ids[0][:3] + [0] * 20], [masks[0], [0] * 22 + [1]]) == 0  # too short
    budget = max(len(s) for s in samples) * 2  # two full rows, or all four rows' own parts
    assert all(len(s) - shared <= budget // len(samples) for s in samples)
    groups = {}
    for share in (False, True):
        updater = PolicyUpdater(copy.deepcopy(tiny.model), OptimConfig(microbatch_tokens=budget, share_prefix=share))
        groups[share] = updater.microbatch_groups(ids, masks)
        seen = calls(updater.model)
        updater.accumulate(samples, [1.0, -0.5, 0.3, -1.2])
        assert len([c for c in seen if c[0] > 1]) == len(groups[share])  # one call per micro-batch of rows
    assert len(groups[False]) == 2 and len(groups[True]) == 1
