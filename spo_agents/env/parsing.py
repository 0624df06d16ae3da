"""Parsing tool calls out of the assistant's text.

Convention (Qwen / Hermes): each call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
several calls per turn are allowed up to a cap. Every malformed call becomes a `ToolCallError`
with a message the model can learn from; well-formed calls in the same turn are still returned.
Parsing never raises, whatever the text holds: nesting deeper than the JSON decoder's
recursion limit, integers beyond Python's digit limit, lone surrogates, NUL bytes, megabytes.

A closing tag inside a JSON string (code that prints "</tool_call>") does not cut the call
short: a block ends at the first closing tag outside JSON strings (see `_block_end`), and
only then is its body decoded. A turn costs time linear in its length (decoding from each
opening tag to the end of the text, as this module once did, is quadratic: Python's JSON
errors count the lines before their position).

A call object has only the keys "name" and "arguments" ("arguments" may be left out for a
tool without required arguments). Any other key is an error naming the expected key: models
trained on other formats write "parameters" or "args", and running the tool with no arguments
instead would hide the mistake (FileSearch's `ls` would list `/`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
CALL_KEYS = ("name", "arguments")
# Deeper JSON is refused: honest calls nest a few levels, and deeper values would reach the
# recursion limit of whatever handles them next (pydantic, repr, json.dumps).
MAX_JSON_DEPTH = 64
# Closing tags inside JSON strings that are looked past, per turn (see `_block_end`): honest
# turns have a few (code that prints a tag); a budget per turn keeps hostile turns linear.
MAX_TAGS_IN_STRINGS = 8
_DECODER = json.JSONDecoder()
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The inside of a JSON string (unrolled loop: no backtracking), and the same up to its closing quote.
_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


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


def _too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when lists/objects in `value` nest deeper than `limit` (iterative, no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def decode_json(text: str) -> tuple[Any, int]:
    """The JSON value at the start of `text` (after whitespace) and the index just past it.

    Raises ValueError (with a model-facing message) for anything that is not a JSON value of
    at most MAX_JSON_DEPTH levels, also where `json` itself would raise something else
    (RecursionError on deep nesting) or a bare ValueError (integers beyond the digit limit).
    """
    start = _JSON_WHITESPACE.match(text).end()
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ValueError(f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # an integer literal beyond Python's digit limit
        raise ValueError(f"invalid JSON ({exc})") from None
    if _too_deep(value):
        raise ValueError(f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    return value, end


def _string_arguments(text: str, name: str) -> Any:
    """Arguments given as a JSON string (some models do this): the decoded value."""
    if not text.strip():
        return {}
    try:
        value, end = decode_json(text)
    except ValueError as exc:
        raise ValueError(f"'arguments' of {name!r} is a string that is not valid JSON: {exc}") from None
    if text[end:].strip():
        raise ValueError(f"'arguments' of {name!r} is a string with text after the JSON value")
    return value


def _call_from_payload(payload: Any) -> ToolCall:
    """A ToolCall from a decoded call object; raise ValueError with a model-facing message."""
    if not isinstance(payload, dict):
        raise ValueError('the call must be a JSON object {"name": ..., "arguments": {...}}')
    unexpected = [key for key in payload if key not in CALL_KEYS]
    if unexpected:
        raise ValueError(
            f"unexpected key {unexpected[0][:40]!r}: put the tool's arguments under \"arguments\", "
            'as in {"name": ..., "arguments": {...}}; no other keys are allowed'
        )
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("missing or non-string 'name'")
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):
        arguments = _string_arguments(arguments, name)
    if not isinstance(arguments, dict):
        raise ValueError(f"'arguments' of {name!r} must be a JSON object")
    return ToolCall(name=name, arguments=arguments)


def _block_end(text: str, body_start: int, max_chars: int, skips_left: int) -> tuple[int, int]:
    """(index of the block's closing tag or -1 if unclosed, closing tags looked past).

    The block whose body starts at `body_start` ends at the first closing tag outside JSON
    strings. A string still open at a closing tag extends the block to the next tag, at most
    `skips_left` times; then, or when the string never closes, the first closing tag ends the
    block. Strings are scanned by regular expressions without backtracking, each character
    at most once.
    """
    first = close = text.find(CLOSE_TAG, body_start)
    pos, in_string = body_start, False
    for skipped in range(skips_left + 1):
        if close == -1 or close - body_start > max_chars:
            return first, skipped
        while True:
            if in_string:  # resume the open string where the last window stopped
                rest = _STRING_REST.match(text, pos, close)
                if rest is None:
                    pos = _STRING_BODY.match(text, pos, close).end()
                    break
                pos, in_string = rest.end(), False
            quote = text.find('"', pos, close)
            if quote == -1:
                return close, skipped
            pos, in_string = quote + 1, True
        close = text.find(CLOSE_TAG, close + len(CLOSE_TAG))
    return first, skips_left


def _decode_block(body: str) -> ToolCall:
    """The call in one block's body; raise ValueError with a model-facing message."""
    payload, end = decode_json(body)
    tail = body[end:].strip()
    if tail:
        raise ValueError(f"unexpected text after the JSON object: {tail[:40]!r}")
    return _call_from_payload(payload)


def parse_tool_calls(text: str, max_calls: int = 8, max_call_chars: int = 100_000) -> ParsedAction:
    """Find every `<tool_call>` block in `text`; never raises.

    Calls beyond `max_calls` are not parsed: one error at index `max_calls` says that they and
    every later call of the turn were ignored.
    """
    parsed = ParsedAction()
    pos, index, skips_left = 0, 0, MAX_TAGS_IN_STRINGS
    while (start := text.find(OPEN_TAG, pos)) != -1:
        if index >= max_calls:
            parsed.errors.append(ToolCallError(
                index, f"tool call {index}: ignored with every later call of this turn "
                       f"(at most {max_calls} calls per turn)"))
            break
        body_start = start + len(OPEN_TAG)
        close, skipped = _block_end(text, body_start, max_call_chars, skips_left)
        skips_left -= skipped
        if close == -1:
            parsed.errors.append(ToolCallError(index, f"tool call {index}: unclosed {OPEN_TAG} (add {CLOSE_TAG})"))
            break
        if close - body_start > max_call_chars:
            parsed.errors.append(ToolCallError(
                index, f"tool call {index}: too large ({close - body_start} chars, limit {max_call_chars})"))
        else:
            try:
                parsed.calls.append(_decode_block(text[body_start:close]))
            except ValueError as exc:
                parsed.errors.append(ToolCallError(index, f"tool call {index}: {exc}"))
        pos = close + len(CLOSE_TAG)
        index += 1
    return parsed


def strip_tool_calls(text: str, max_call_chars: int = 100_000) -> str:
    """The text with every (closed or unclosed) tool-call block removed."""
    out, pos, skips_left = [], 0, MAX_TAGS_IN_STRINGS
    while (start := text.find(OPEN_TAG, pos)) != -1:
        out.append(text[pos:start])
        close, skipped = _block_end(text, start + len(OPEN_TAG), max_call_chars, skips_left)
        skips_left -= skipped
        if close == -1:
            return "".join(out)
        pos = close + len(CLOSE_TAG)
    out.append(text[pos:])
    return "".join(out)
