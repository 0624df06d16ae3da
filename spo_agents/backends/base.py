"""The one protocol every generation backend speaks: prompt token ids in, token ids and log-probs out.

Why token ids and not text: a multi-turn episode is trained on exactly the tokens the policy
sampled. A backend that took text would re-tokenise history and could silently produce a
different sequence than the one whose log-probs it reports (PEERS.md item 2). So the protocol is
ids in, ids out, with the behaviour log-prob of every sampled token.

This module is plain data only (no torch, no transformers), so the rollout engine, the learner's
tests and a future HTTP client can import it without loading a model. What it leaves out:
batching, scheduling and weight transport are a backend's own business; chat formatting lives in
`spo_agents.chat`.

Log-prob convention (every backend follows it): the recorded behaviour log-prob of a sampled
token is `log_softmax(logits / T)` of the raw model logits, where T is the sampling temperature
(T = 1 when decoding greedily, T = 0). Top-k and top-p truncation change which tokens may be
sampled but are *not* folded into the recorded log-prob, because the trainer recomputes
`log_softmax(logits / T)` over the full vocabulary and the two must be comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Protocol, runtime_checkable

__all__ = [
    "FinishReason",
    "SamplingParams",
    "GenerationRequest",
    "GenerationResult",
    "Backend",
    "BackendClosedError",
]


class FinishReason(str, Enum):
    """Why a completion (one turn of generation) ended."""

    STOP = "stop"  # an end-of-turn token or a stop string other than the tool-call one
    TOOL_CALL = "tool_call"  # stopped right after a tool call closed (`</tool_call>`)
    LENGTH = "length"  # hit max_new_tokens or the model's context window
    ABORT = "abort"  # the backend was closed or the request was cancelled


class BackendClosedError(RuntimeError):
    """Raised when a request is submitted to a backend that has been closed."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    `temperature == 0` means greedy decoding (argmax); its log-probs are recorded at T = 1.
    `top_k == 0` and `top_p == 1.0` disable those filters. `stop_token_ids=None` lets the backend
    use the model's own end-of-sequence ids; an empty tuple means "no stop tokens". A stop
    (token or string) whose text ends with `tool_call_stop` finishes with FinishReason.TOOL_CALL.
    The tokens that complete a stop string are kept in the output: ids are never cut mid-token.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    tool_call_stop: str | None = "</tool_call>"

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain an empty string")
        # Accept lists from callers (and JSON) but store tuples so the params stay hashable.
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        """The T of `log_softmax(logits / T)` used for the recorded behaviour log-probs."""
        return 1.0 if self.greedy else self.temperature


@dataclass
class GenerationRequest:
    """One completion to generate: the full prompt as token ids and how to sample."""

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("prompt_ids must not be empty")


@dataclass
class GenerationResult:
    """The sampled tokens, their behaviour log-probs and why generation ended.

    `policy_version` is the weights version when generation of this completion *started*: the
    oldest weights that contributed a token, which is what a staleness bound must use.
    `final_policy_version` is the version that produced the last token; it differs from
    `policy_version` only when a weight update landed while the request was in flight (the
    log-probs are still exact: each was recorded under the weights that sampled its token).
    `stop_reason` is the stop token id or stop string that ended generation, None otherwise
    (the same field vLLM's server returns).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    policy_version: int
    final_policy_version: int = -1
    stop_reason: int | str | None = None
    prompt_len: int = 0

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"token_ids ({len(self.token_ids)}) and logprobs ({len(self.logprobs)}) differ in length"
            )
        self.finish_reason = FinishReason(self.finish_reason)
        if self.final_policy_version < 0:
            self.final_policy_version = self.policy_version


@runtime_checkable
class Backend(Protocol):
    """What the rollout engine needs from a policy.

    `generate` is awaited by many asyncio tasks at once; a backend batches them as it sees fit.
    `update_weights` swaps in new weights between decode steps without dropping in-flight
    requests and sets `policy_version` to `version`. `weights` is a state dict (name -> tensor)
    or a model object whose state dict is taken.
    """

    policy_version: int

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult: ...

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None: ...
