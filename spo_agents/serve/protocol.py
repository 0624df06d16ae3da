"""Wire format of `spo-agents serve`: OpenAI/vLLM request bodies in, vLLM-shaped responses out.

Why vLLM's shape and not only OpenAI's: the point of the server is to let the HTTP backend (and
anything written for a vLLM server) train on exact token ids. OpenAI's completions API returns
text; vLLM adds what an RL client needs: prompts as token ids, `return_tokens_as_token_ids`
(log-prob tokens as `"token_id:123"`), `stop_token_ids`, `include_stop_str_in_output`,
`skip_special_tokens`, `ignore_eos`, and `stop_reason` (the stop string or id that matched).
This module mirrors those fields, so a client that works against `spo-agents serve` works
against `vllm serve` unchanged.

Extensions of our own, on every choice (documented in docs/backends.md):
- `token_ids`: the sampled ids, always (vLLM returns the same field when `return_token_ids`);
- `policy_version` / `final_policy_version`: the weights version when the request started and
  when its last token was sampled (see `spo_agents.backends.base.GenerationResult`).

This module is pure translation (pydantic models, SamplingParams, dicts); the FastAPI routes live
in `spo_agents.serve.app`. Left out: streaming, `n > 1`, `echo`, `best_of`, penalties, logit bias
and top-k alternatives in `logprobs` (only the sampled token's log-prob exists in the backend).
"""

from __future__ import annotations

from typing import Annotated, Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spo_agents.backends.base import FinishReason, GenerationResult, SamplingParams
from spo_agents.chat.tool_calls import openai_tool_calls

__all__ = [
    "CompletionRequest",
    "ChatCompletionRequest",
    "LoadWeightsRequest",
    "RequestError",
    "LOGPROB_FLOOR",
    "sampling_params",
    "completion_choice",
    "chat_choice",
    "message_text",
    "openai_finish_reason",
]

# vLLM clamps -inf log-probs to this value so responses stay valid JSON; we do the same.
LOGPROB_FLOOR = -9999.0
TOOL_CALL_STOP = "</tool_call>"
# bounds a tensor or a torch generator can hold: a larger number is a 400, not an overflow inside the backend
_TokenId = Annotated[int, Field(ge=0, lt=2**31)]
_SEED_RANGE = {"ge": -(2**63), "lt": 2**64}  # what torch.Generator.manual_seed accepts


class RequestError(ValueError):
    """A request the server understands but cannot serve (becomes HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _SamplingFields(BaseModel):
    """Fields shared by completions and chat completions (unknown fields are ignored, as in vLLM)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # NaN / Infinity are JSON to Python, not to us

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, ge=-1, lt=2**31)  # 0 or -1 disables, as in vLLM
    stop: str | list[str] | None = None
    stop_token_ids: list[_TokenId] | None = None
    ignore_eos: bool = False
    seed: int | None = Field(None, **_SEED_RANGE)
    n: int = 1
    stream: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    return_token_ids: bool | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported (send one request per sample)")
        return n

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, stream: bool) -> bool:
        if stream:
            raise ValueError("streaming is not supported by spo-agents serve")
        return stream


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`: `prompt` is a string, a list of token ids, or a list of either."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    return_tokens_as_token_ids: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _sampled_logprob_only(cls, logprobs: int | None) -> int | None:
        if logprobs is not None and not 0 <= logprobs <= 1:
            raise ValueError("logprobs must be 0 or 1: the server returns the sampled token's log-prob only")
        return logprobs

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported by spo-agents serve")
        return echo

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: one entry per choice."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise RequestError("prompt must not be empty", "prompt")
        if isinstance(prompt[0], int):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`: messages rendered with the chat template, then generated."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"message {i} has no string `role`")
        return messages

    @field_validator("top_logprobs")
    @classmethod
    def _no_alternatives(cls, top_logprobs: int | None) -> int | None:
        if top_logprobs:
            raise ValueError("top_logprobs > 0 is not supported: the server returns the sampled token's log-prob only")
        return top_logprobs


class LoadWeightsRequest(BaseModel):
    """`POST /v1/load_weights`: a safetensors file (or a folder holding them) and its version."""

    path: str = Field(max_length=4096, description="a .safetensors file, or a folder with model.safetensors or "
                      "*.safetensors shards, inside the server's weights folder (absolute, or relative to it)")
    version: int = Field(ge=0, lt=2**63, description="the policy version these weights are (above the current one)")


# ---------------------------------------------------------------------------- requests -> params
def sampling_params(
    request: _SamplingFields,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
) -> SamplingParams:
    """The backend's SamplingParams for a request, with vLLM's stop semantics.

    As in vLLM, `stop_token_ids` are added to the model's EOS ids unless `ignore_eos` is set, so
    `ignore_eos=true, stop_token_ids=[...]` stops on exactly the ids given.
    """
    stop_ids = list(request.stop_token_ids or ())
    if not request.ignore_eos:
        stop_ids = list(dict.fromkeys([*eos_token_ids, *stop_ids]))
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or ())
    try:
        return SamplingParams(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(0, request.top_k or 0),
            max_new_tokens=max_new_tokens,
            stop_token_ids=tuple(stop_ids),
            stop_strings=tuple(stops),
            seed=request.seed,
            tool_call_stop=TOOL_CALL_STOP,
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from exc


def message_text(content: Any) -> str:
    """An OpenAI message `content`: a string, None, or a list of `{"type": "text", "text": ...}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError("only text message parts are supported", "messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise RequestError(f"unsupported message content of type {type(content).__name__}", "messages")


# ---------------------------------------------------------------------------- results -> choices
def openai_finish_reason(reason: FinishReason) -> str:
    """vLLM's finish reasons: a tool-call stop is an ordinary "stop" (its stop_reason says which)."""
    return {FinishReason.LENGTH: "length", FinishReason.ABORT: "abort"}.get(reason, "stop")


def _reported_stop_reason(result: GenerationResult, requested_stop_ids: Sequence[int]) -> int | str | None:
    """vLLM reports None when the model's own EOS ended generation, the id or string otherwise."""
    reason = result.stop_reason
    if isinstance(reason, int) and reason not in requested_stop_ids:
        return None
    return reason


def _visible_text(tokenizer: Any, result: GenerationResult, include_stop: bool, skip_special: bool) -> str:
    """The completion text with vLLM's stop handling: ids are kept, the text may drop the stop."""
    ids = list(result.token_ids)
    stopped = result.finish_reason in (FinishReason.STOP, FinishReason.TOOL_CALL)
    if stopped and isinstance(result.stop_reason, int) and not include_stop and ids:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=skip_special)
    if stopped and isinstance(result.stop_reason, str):
        at = text.find(result.stop_reason)
        if at >= 0:
            text = text[: at + len(result.stop_reason)] if include_stop else text[:at]
    return text


def _token_strings(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    return list(tokenizer.batch_decode([[t] for t in token_ids], skip_special_tokens=False))


def _completion_logprobs(tokenizer: Any, result: GenerationResult, as_token_ids: bool) -> dict[str, Any]:
    pieces = _token_strings(tokenizer, result.token_ids)
    tokens = [f"token_id:{t}" for t in result.token_ids] if as_token_ids else pieces
    values = [max(float(lp), LOGPROB_FLOOR) for lp in result.logprobs]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return {
        "text_offset": offsets,
        "token_logprobs": values,
        "tokens": tokens,
        "top_logprobs": [{token: value} for token, value in zip(tokens, values)],
    }


def _extensions(result: GenerationResult, prompt_ids: Sequence[int], return_token_ids: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "token_ids": list(result.token_ids),
        "policy_version": result.policy_version,
        "final_policy_version": result.final_policy_version,
    }
    if return_token_ids:
        out["prompt_token_ids"] = list(prompt_ids)
    return out


def completion_choice(
    index: int,
    request: CompletionRequest,
    result: GenerationResult,
    prompt_ids: Sequence[int],
    tokenizer: Any,
) -> dict[str, Any]:
    """One `choices[i]` entry of a completion response, vLLM-shaped, plus our extension fields."""
    logprobs = None
    if request.logprobs is not None:
        logprobs = _completion_logprobs(tokenizer, result, bool(request.return_tokens_as_token_ids))
    return {
        "index": index,
        "text": _visible_text(tokenizer, result, request.include_stop_str_in_output, request.skip_special_tokens),
        "logprobs": logprobs,
        "finish_reason": openai_finish_reason(result.finish_reason),
        "stop_reason": _reported_stop_reason(result, request.stop_token_ids or ()),
        **_extensions(result, prompt_ids, bool(request.return_token_ids)),
    }


def chat_choice(
    request: ChatCompletionRequest,
    result: GenerationResult,
    prompt_ids: Sequence[int],
    tokenizer: Any,
) -> dict[str, Any]:
    """The `choices[0]` entry of a chat completion: the assistant message and, if asked, log-probs."""
    logprobs = None
    if request.logprobs:
        pieces = _token_strings(tokenizer, result.token_ids)
        logprobs = {
            "content": [
                {"token": piece, "logprob": max(float(lp), LOGPROB_FLOOR),
                 "bytes": list(piece.encode("utf-8")), "top_logprobs": []}
                for piece, lp in zip(pieces, result.logprobs)
            ]
        }
    text = _visible_text(tokenizer, result, request.include_stop_str_in_output, request.skip_special_tokens)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish_reason = openai_finish_reason(result.finish_reason)
    if request.tools:  # <tool_call> blocks -> OpenAI tool_calls (chat/tool_calls.py)
        content, calls = openai_tool_calls(_visible_text(tokenizer, result, True, request.skip_special_tokens))
        if calls:
            message, finish_reason = {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
    return {
        "index": 0,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": _reported_stop_reason(result, request.stop_token_ids or ()),
        **_extensions(result, prompt_ids, bool(request.return_token_ids)),
    }
