"""OpenAI tool calls <-> the `<tool_call>` text convention (what `spo-agents serve` uses)."""

import json

import pytest

from spo_agents.backends.models import build_tiny_tokenizer
from spo_agents.chat import load_template
from spo_agents.chat.tool_calls import chat_messages_with_tools, inline_tool_calls, openai_tool_calls

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


def test_reply_with_calls_becomes_openai_tool_calls():
    text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' \
           '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
    content, calls = openai_tool_calls(text)
    assert content == "Let me add."
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "add", {"a": 2, "b": 3}), ("function", "add", {"a": 1})]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)
    assert openai_tool_calls('<tool_call>{"name": "add"}</tool_call>')[0] is None


@pytest.mark.parametrize("text", ["no call at all", '<tool_call>{"name": "add", "arguments": {"a": 1}</tool_call>',
                                  '<tool_call>{"name": "add"}</tool_call> and <tool_call>oops</tool_call>'])
def test_plain_or_malformed_replies_stay_text(text):
    assert openai_tool_calls(text) == (text, [])


def test_templates_without_tool_support_get_schemas_and_calls_as_text():
    tokenizer = build_tiny_tokenizer()
    history = [{"role": "user", "content": "2+3?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    smollm2 = load_template("smollm2")  # no tool support: schemas into the system turn, calls as text
    messages, tools = chat_messages_with_tools(tokenizer, smollm2, history, TOOLS)
    assert tools is None and messages[0]["role"] == "system" and '"name": "add"' in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert "tool_calls" not in messages[2]
    same, tools = chat_messages_with_tools(tokenizer, load_template("chatml_tools"), history, TOOLS)
    assert tools == TOOLS and same == history  # a template with tools renders both itself
    assert inline_tool_calls(history[:1]) == history[:1]
