"""Parsing tool calls out of the assistant's text.

Convention (Qwen / Hermes): each call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
several calls per turn are allowed up to a cap. Every malformed call becomes a `ToolCallError`
with a message the model can learn from; well-formed calls in the same turn are still returned.
Parsing never raises.

The JSON body is read with `json.JSONDecoder.raw_decode` starting right after the opening tag,
so a closing tag that appears inside a JSON string (e.g. code that prints "</tool_call>")
does not cut the call short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCallError:
    index: int  # position of the call in the turn (0-based)
    message: str


@dataclass
class ParsedAction:
    """What one assistant turn asked for."""

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[ToolCallError] = field(default_factory=list)

    @property
    def has_tool_calls(self) -> bool:
        """True if the turn tried to call a tool at all (valid or not)."""
        return bool(self.calls or self.errors)


def _decode_call(body: str) -> ToolCall:
    """Decode one call's JSON object; raise ValueError with a model-facing message."""
    try:
        payload, _ = _DECODER.raw_decode(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(payload, dict):
        raise ValueError("the call must be a JSON object with 'name' and 'arguments'")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("missing or non-string 'name'")
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models emit arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"'arguments' of {name!r} is a string that is not valid JSON") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"'arguments' of {name!r} must be a JSON object")
    return ToolCall(name=name, arguments=arguments)


def _json_end(text: str, start: int) -> int | None:
    """Index just past a JSON value starting at `start` (after whitespace), if it decodes."""
    stripped = len(text) - len(text[start:].lstrip())
    try:
        _, end = _DECODER.raw_decode(text, stripped)
    except json.JSONDecodeError:
        return None
    return end


def parse_tool_calls(text: str, max_calls: int = 8, max_call_chars: int = 100_000) -> ParsedAction:
    """Find every `<tool_call>` block in `text`; never raises."""
    parsed = ParsedAction()
    pos, index = 0, 0
    while (start := text.find(OPEN_TAG, pos)) != -1:
        body_start = start + len(OPEN_TAG)
        json_end = _json_end(text, body_start)
        close = text.find(CLOSE_TAG, json_end if json_end is not None else body_start)
        if close == -1:
            parsed.errors.append(ToolCallError(index, f"tool call {index}: unclosed {OPEN_TAG} (add {CLOSE_TAG})"))
            break
        body = text[body_start:close]
        pos = close + len(CLOSE_TAG)
        if index >= max_calls:
            parsed.errors.append(ToolCallError(index, f"tool call {index}: ignored, at most {max_calls} calls per turn"))
        elif len(body) > max_call_chars:
            parsed.errors.append(
                ToolCallError(index, f"tool call {index}: too large ({len(body)} chars, limit {max_call_chars})")
            )
        else:
            try:
                tail = body[json_end - body_start :].strip() if json_end is not None else ""
                if tail:
                    raise ValueError(f"unexpected text after the JSON object: {tail[:40]!r}")
                parsed.calls.append(_decode_call(body.strip()))
            except ValueError as exc:
                parsed.errors.append(ToolCallError(index, f"tool call {index}: {exc}"))
        index += 1
    return parsed


def strip_tool_calls(text: str) -> str:
    """The text with every (closed or unclosed) tool-call block removed."""
    out, pos = [], 0
    while (start := text.find(OPEN_TAG, pos)) != -1:
        out.append(text[pos:start])
        json_end = _json_end(text, start + len(OPEN_TAG))
        close = text.find(CLOSE_TAG, json_end if json_end is not None else start)
        if close == -1:
            return "".join(out)
        pos = close + len(CLOSE_TAG)
    out.append(text[pos:])
    return "".join(out)
