"""Typed tool functions -> JSON schema + pydantic validation; tool-call parsing."""

import pytest

from spo_agents.env import Tool, ToolError, parse_tool_calls, strip_tool_calls, tool


@tool
def lookup(city: str, limit: int = 3, metric: bool = True) -> str:
    """Look up the weather.

    Args:
        city: Name of the city.
        limit: How many days to return,
            at most seven.
        metric: Use Celsius.
    """
    return f"{city}:{limit}:{metric}"


def test_schema_from_type_hints_and_docstring():
    schema = lookup.schema
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "lookup" and fn["description"] == "Look up the weather."
    props = fn["parameters"]["properties"]
    assert props["city"] == {"type": "string", "description": "Name of the city."}
    assert props["limit"]["type"] == "integer" and props["limit"]["default"] == 3
    assert props["limit"]["description"] == "How many days to return, at most seven."
    assert fn["parameters"]["required"] == ["city"]


def test_validation_errors_are_tool_errors():
    assert lookup({"city": "Oslo", "limit": "5"}) == "Oslo:5:True"  # lax coercion of numeric strings
    with pytest.raises(ToolError, match="city"):
        lookup({"limit": 2})
    with pytest.raises(ToolError, match="Extra inputs"):
        lookup({"city": "Oslo", "country": "NO"})
    with pytest.raises(ToolError, match="limit"):
        lookup({"city": "Oslo", "limit": "many"})
    with pytest.raises(ToolError, match="JSON object"):
        lookup(["Oslo"])


def test_untyped_parameter_is_rejected_at_definition():
    def bad(x):
        return x

    with pytest.raises(TypeError, match="type hint"):
        Tool.from_function(bad)


@pytest.mark.parametrize(
    "text, names, n_errors",
    [
        ("no calls here", [], 0),
        ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>', ["a"], 0),
        ('<tool_call>{"name": "a", "arguments": {}}</tool_call> then <tool_call>{"name": "b"}</tool_call>', ["a", "b"], 0),
        ('<tool_call>{"name": "a", "arguments": "{\\"x\\": 2}"}</tool_call>', ["a"], 0),
        ("<tool_call>{bad json}</tool_call>", [], 1),
        ('<tool_call>{"name": "a"} trailing</tool_call>', [], 1),
        ('<tool_call>{"arguments": {}}</tool_call>', [], 1),
        ('<tool_call>{"name": "a", "arguments": [1]}</tool_call>', [], 1),
        ('<tool_call>{"name": "a", "arguments": {}}', [], 1),
        ('<tool_call>{bad}</tool_call><tool_call>{"name": "ok", "arguments": {}}</tool_call>', ["ok"], 1),
        ('<tool_call>{"name": "py", "arguments": {"code": "print(\'</tool_call>\')"}}</tool_call>', ["py"], 0),
    ],
)
def test_parse_tool_calls_table(text, names, n_errors):
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == names
    assert len(parsed.errors) == n_errors
    for error in parsed.errors:
        assert error.message.startswith(f"tool call {error.index}:")


def test_call_cap_and_size_cap():
    one = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    parsed = parse_tool_calls(one * 12, max_calls=8)
    assert len(parsed.calls) == 8 and len(parsed.errors) == 4
    assert "at most 8" in parsed.errors[0].message
    big = '<tool_call>{"name": "a", "arguments": {"s": "' + "x" * 5000 + '"}}</tool_call>'
    parsed = parse_tool_calls(big, max_call_chars=1000)
    assert not parsed.calls and "too large" in parsed.errors[0].message


def test_nested_tag_in_string_keeps_code_intact():
    text = '<tool_call>{"name": "py", "arguments": {"code": "s = \'<tool_call>x</tool_call>\'"}}</tool_call> \\boxed{3}'
    parsed = parse_tool_calls(text)
    assert parsed.calls[0].arguments["code"] == "s = '<tool_call>x</tool_call>'"
    assert strip_tool_calls(text) == " \\boxed{3}"
