"""Scripted policies: deterministic, model-free backends for tests, demos and benchmarks.

`ScriptedBackend` implements the backend protocol with a Python function from the
conversation so far (text) to the next assistant reply, encoded with a `ByteFormatter`
(one token per UTF-8 byte plus two special tokens). It can simulate generation time
(`seconds_per_token`) so the engine and the throughput benchmark see realistic policy spans
without a model. Log-probs are a fixed value: a scripted policy has no distribution.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Callable

from spo_agents.backends.base import GenerationResult, SamplingParams

IM_START, IM_END = 256, 257
VOCAB_SIZE = 258


class ByteFormatter:
    """ChatML-like rendering with byte tokens: `<|im_start|>role\\ncontent<|im_end|>\\n`."""

    stop_token_ids = (IM_END,)
    stop_strings = ("</tool_call>",)

    def _render(self, role: str, content: str) -> list[int]:
        return [IM_START, *f"{role}\n{content}".encode(), IM_END, *b"\n"]

    def _messages(self, messages: list[dict[str, Any]]) -> list[int]:
        ids: list[int] = []
        for message in messages:
            content = message["content"]
            if message["role"] == "tool":
                content = f"<tool_response>\n{content}\n</tool_response>"
            ids += self._render(message["role"], content)
        return ids

    def assistant_header(self) -> list[int]:
        return [IM_START, *b"assistant\n"]

    def initial_prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
        messages = list(messages)
        if tools:
            tool_text = "\n".join(json.dumps(t) for t in tools)
            system = messages.pop(0)["content"] + "\n\n" if messages and messages[0]["role"] == "system" else ""
            messages.insert(0, {"role": "system", "content": f"{system}# Tools\n<tools>\n{tool_text}\n</tools>"})
        return self._messages(messages) + self.assistant_header()

    def observation_ids(self, messages: list[dict[str, Any]], completion_ids: list[int]) -> list[int]:
        closing = [] if list(completion_ids[-1:]) == [IM_END] else [IM_END]
        return closing + [*b"\n"] + self._messages(messages) + self.assistant_header()

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: list[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    def reply_text(self, token_ids: list[int]) -> str:
        return self.decode(token_ids)  # the end-of-turn id (IM_END) is not a byte: decode drops it

    def turns(self, token_ids: list[int]) -> list[tuple[str, str]]:
        """(role, content) pairs of a rendered conversation (for policies that read it)."""
        text = bytes(t if t < 256 else 0 for t in token_ids).decode("utf-8", errors="replace")
        parts = [p for p in text.split("\x00") if p.strip()]
        pairs = [tuple(p.split("\n", 1)) if "\n" in p else (p, "") for p in parts]
        if pairs and pairs[-1] == ("assistant", ""):  # the open generation header
            pairs.pop()
        return pairs  # type: ignore[return-value]


class ScriptedBackend:
    """A backend whose replies come from `policy(turns) -> str`, where `turns` are the
    (role, content) pairs of the conversation so far."""

    def __init__(self, policy: Callable[[list[tuple[str, str]]], str], seconds_per_token: float = 0.0,
                 logprob: float = -0.5):
        self.policy, self.seconds_per_token, self.logprob = policy, seconds_per_token, logprob
        self.formatter = ByteFormatter()
        self.policy_version = 0
        self.calls = 0

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult:
        self.calls += 1
        reply = self.policy(self.formatter.turns(prompt_ids))
        ids = self.formatter.encode(reply) + [IM_END]
        finish = "stop"
        if len(ids) > params.max_new_tokens:
            ids, finish = ids[: params.max_new_tokens], "length"
        if self.seconds_per_token:
            await asyncio.sleep(self.seconds_per_token * len(ids))
        return GenerationResult(token_ids=ids, logprobs=[self.logprob] * len(ids), finish_reason=finish,
                                policy_version=self.policy_version)

    def update_weights(self, weights: Any = None, version: int | None = None) -> None:
        self.policy_version = self.policy_version + 1 if version is None else version


_INTEGER = re.compile(r"\d+")


def product_policy(turns: list[tuple[str, str]]) -> str:
    """A fixed heuristic: multiply the numbers of the question with the calculator, then box the
    tool's answer. Right on the calculator's plain product tasks, wrong on the others."""
    role, content = turns[-1]
    if role == "tool" or content.startswith("<tool_response>"):
        value = content.replace("<tool_response>", "").replace("</tool_response>", "").strip().split(" ")[0]
        return f"The answer is \\boxed{{{value}}}."
    numbers = _INTEGER.findall(content)[:2] or ["0"]
    expression = "*".join(numbers)
    return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}</tool_call>'
