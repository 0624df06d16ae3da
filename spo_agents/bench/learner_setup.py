"""The shared ground of `spo-agents bench learner --against trl`: one model folder, one prompt
set, one reward, used unchanged by every system the benchmark compares.

- The model: a 3.2M-parameter Qwen2 (4 layers, hidden 256, tied input/output embeddings as
  the small Qwen2 models have) over the in-process byte-level BPE tokenizer of the `tiny`
  preset, random weights under a fixed seed, saved with `save_pretrained` so each system loads
  the same folder the way its users would. Its generation config stops at the same tokens our
  chat formatter stops at (`<|im_end|>`, `<|endoftext|>`, `</tool_call>`), so TRL's
  `generate` and our engine end completions alike.
- The prompts: 256 questions "What is a+b?" (a, b drawn once from a seeded generator).
- The reward: 1 for the right sum as the last number of the reply, 0.2 for some other
  number, 0 for none (graded rewards, so GRPO groups are rarely degenerate and both
  systems do the full loss computation every step).

For our trainer the prompts are a single-turn environment (`spo-bench/WhatIsSum-v0`, no tools,
no system prompt of its own, so the chat template's default system line is what both see).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import gymnasium

from spo_agents.env import Task, TaskSet, ToolEnv

ENV_ID = "spo-bench/WhatIsSum-v0"
NUM_PROMPTS = 256
SEED = 0
# Qwen2 shape: 4 layers x hidden 256 (4 heads, 2 key/value heads), MLP 704: 3.2M parameters
# with the tiny tokenizer's ~1,030 tokens and tied embeddings.
MODEL_SHAPE = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 2}
_NUMBER = re.compile(r"-?\d+")


def sum_tasks(num: int = NUM_PROMPTS, seed: int = SEED) -> list[Task]:
    """`num` distinct questions "What is a+b?" with a, b in 0..99, in a seeded order."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < num:
        pair = (rng.randint(0, 99), rng.randint(0, 99))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return [Task(task_id=f"sum-{i:03d}", prompt=f"What is {a}+{b}?", answer=str(a + b))
            for i, (a, b) in enumerate(pairs)]


def sum_reward(reply: str, answer: str) -> float:
    """1.0 if the last number in `reply` is `answer`, 0.2 for another number, 0.0 for none."""
    numbers = _NUMBER.findall(reply)
    if not numbers:
        return 0.0
    return 1.0 if numbers[-1] == answer else 0.2


class WhatIsSumEnv(ToolEnv):
    """Single-turn "What is a+b?" questions graded by `sum_reward` (the benchmark's task)."""

    def __init__(self, split: str = "train", render_mode: str | None = None):
        super().__init__({"train": TaskSet(sum_tasks())}, tools=(), grader=lambda reply, task: sum_reward(
            reply, task.answer), split=split, system_prompt="", max_turns=1, render_mode=render_mode)


def register_env() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(ENV_ID, entry_point=WhatIsSumEnv)


def stop_token_ids(tokenizer: Any) -> list[int]:
    names = ("<|im_end|>", "<|endoftext|>", "</tool_call>")
    return [int(tokenizer.convert_tokens_to_ids(name)) for name in names]


def build_model_folder(folder: str | Path, seed: int = SEED) -> dict[str, Any]:
    """Write the benchmark's model (weights, tokenizer, generation config) into `folder`.

    Deterministic: the same seed gives byte-identical weights. Returns a short description
    (parameter count, vocabulary) that the benchmark prints.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from spo_agents.backends.models import build_tiny_tokenizer

    folder = Path(folder)
    tokenizer = build_tiny_tokenizer(seed=seed)
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         initializer_range=0.1, bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODEL_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "tied_embeddings": True, **MODEL_SHAPE}
    (folder / "bench_model.json").write_text(json.dumps(info, indent=1))
    return info
