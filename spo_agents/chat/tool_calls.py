"""OpenAI-style tool calling over the `<tool_call>` text convention, for any chat template.

A server that speaks the OpenAI chat API receives `tools=` and assistant messages whose
`tool_calls` are structured, and must answer with structured `tool_calls`; the model reads and
writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` text (Qwen/Hermes). This
module converts both ways:
- requests: when the template renders tools itself (Qwen2.5/Qwen3), messages and `tools=` go
  to it unchanged; otherwise (SmolLM2, Llama-3) the schemas go into the system message
  (`ChatFormatter.tools_in_system`, the same text the trainer uses) and structured tool calls
  of earlier assistant turns become `<tool_call>` text, so the model sees what it was trained on;
- replies: `<tool_call>` blocks are parsed (by the environment kit's parser, the one that
  judges them during training) into OpenAI `tool_calls`; malformed blocks stay in the text.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping, Sequence

from spo_agents.chat.formatter import ChatFormatter, template_renders_tools
from spo_agents.env.parsing import CLOSE_TAG, OPEN_TAG, parse_tool_calls, strip_tool_calls

__all__ = ["chat_messages_with_tools", "inline_tool_calls", "openai_tool_calls", "template_renders_tools"]


def _call_text(call: Mapping[str, Any]) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # kept as the string the client sent
    return f'{OPEN_TAG}\n{json.dumps({"name": function.get("name"), "arguments": arguments})}\n{CLOSE_TAG}'


def inline_tool_calls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Assistant messages' structured `tool_calls` as `<tool_call>` text after their content."""
    out = []
    for message in messages:
        message = dict(message)
        calls = message.pop("tool_calls", None)
        if message.get("role") == "assistant" and calls:
            parts = [message.get("content") or ""] + [_call_text(c) for c in calls]
            message["content"] = "\n".join(p for p in parts if p)
        out.append(message)
    return out


def chat_messages_with_tools(tokenizer: Any, template: str | None, messages: Sequence[Mapping[str, Any]],
                             tools: Sequence[Mapping[str, Any]] | None) -> tuple[list[dict[str, Any]], list | None]:
    """(messages, tools) to hand to `apply_chat_template` so that the model sees tools its way."""
    messages = [dict(m) for m in messages]
    if not tools or template_renders_tools(tokenizer, template):
        return messages, list(tools) if tools else None
    return ChatFormatter.tools_in_system(inline_tool_calls(messages), tools), None


def openai_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a reply: well-formed `<tool_call>` blocks become OpenAI tool
    calls and leave the content; with any malformed block the whole text stays content and no
    call is returned (a client must not run half of what the model wrote)."""
    parsed = parse_tool_calls(text)
    if not parsed.calls or parsed.errors:
        return text, []
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
              "function": {"name": call.name, "arguments": json.dumps(call.arguments)}} for call in parsed.calls]
    return (strip_tool_calls(text).strip() or None), calls
