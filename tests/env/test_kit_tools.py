"""Typed tool functions -> JSON schema + pydantic validation; tool-call parsing."""

import copy
import pickle
import time

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
    assert len(parsed.calls) == 8 and len(parsed.errors) == 1  # one error for every call past the cap
    assert parsed.errors[0].index == 8 and "at most 8" in parsed.errors[0].message
    big = '<tool_call>{"name": "a", "arguments": {"s": "' + "x" * 5000 + '"}}</tool_call>'
    parsed = parse_tool_calls(big, max_call_chars=1000)
    assert not parsed.calls and "too large" in parsed.errors[0].message


def test_nested_tag_in_string_keeps_code_intact():
    text = '<tool_call>{"name": "py", "arguments": {"code": "s = \'<tool_call>x</tool_call>\'"}}</tool_call> \\boxed{3}'
    parsed = parse_tool_calls(text)
    assert parsed.calls[0].arguments["code"] == "s = '<tool_call>x</tool_call>'"
    assert strip_tool_calls(text) == " \\boxed{3}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("<tool_call>" + "[" * 1000, "unclosed"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "nested deeper than 64"),
        ('<tool_call>{"name": "a", "arguments": {"x": ' + "[" * 65 + "]" * 65 + "}}</tool_call>", "nested deeper"),
        ('<tool_call>{"name": "a", "arguments": ' + '"' + "[" * 5000 + '"}</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "a", "arguments": {"x": ' + "9" * 5000 + "}}</tool_call>", "digit"),
        ('<tool_call>{"name": "a", "parameters": {"path": "/etc"}}</tool_call>', "unexpected key 'parameters'"),
        ('<tool_call>{"name": "a", "args": {"path": "/etc"}}</tool_call>', "unexpected key 'args'"),
        ('<tool_call>{"name": "a", "arguments": {}, "id": 1}</tool_call>', "unexpected key 'id'"),
        ('<tool_call>{"name": "a", "arguments": "{} extra"}</tool_call>', "text after the JSON value"),
    ],
)
def test_hostile_calls_become_errors(text, message):
    parsed = parse_tool_calls(text)
    assert parsed.calls == [] and len(parsed.errors) == 1
    assert message in parsed.errors[0].message
    strip_tool_calls(text)  # never raises either


def test_wrong_key_error_names_the_expected_key():
    parsed = parse_tool_calls('<tool_call>{"name": "ls", "parameters": {"path": "/etc"}}</tool_call>')
    assert '"arguments"' in parsed.errors[0].message


def test_deep_but_allowed_nesting_and_odd_characters_decode():
    nested = "[" * 60 + "1" + "]" * 60
    text = '<tool_call>{"name": "a", "arguments": {"x": ' + nested + ', "s": "\\ud800\\u0000"}}</tool_call>'
    (call,) = parse_tool_calls(text).calls
    assert call.arguments["s"] == "\ud800\x00"


@pytest.mark.parametrize("unit", ["<tool_call>{</tool_call>", "<tool_call>x</tool_call>", '<tool_call>{"</tool_call>',
                                  '<tool_call>\\"</tool_call>', '<tool_call>"\\</tool_call>',
                                  '<tool_call>{"name": "a"}</tool_call>'])
def test_parsing_is_linear_in_the_text(unit):
    """200,000 blocks (about 5 MB): the old parser was quadratic (about 5 s for 20,000)."""
    text = unit * 200_000
    start = time.perf_counter()
    parse_tool_calls(text)
    assert strip_tool_calls(text) == ""
    assert time.perf_counter() - start < 5.0


def test_raw_control_character_in_a_string_is_an_error():
    parsed = parse_tool_calls('<tool_call>{"name": "a", "arguments": {"s": "\x00"}}</tool_call>')
    assert "Invalid control character" in parsed.errors[0].message


class _Counter:
    def __init__(self):
        self.calls = 0

    def bump(self, by: int = 1) -> str:
        """Add to the counter.

        Args:
            by: How much to add.
        """
        self.calls += by
        return str(self.calls)


def test_tools_pickle_and_deepcopy():
    assert pickle.loads(pickle.dumps(lookup)) is lookup  # a module-level @tool: by reference
    bound = Tool.from_function(_Counter().bump, description="Count.")
    bound({"by": 2})
    for twin in (pickle.loads(pickle.dumps(bound)), copy.deepcopy(bound)):
        assert (twin.name, twin.description, twin.schema) == (bound.name, bound.description, bound.schema)
        assert twin({"by": 3}) == "5" and bound.fn.__self__.calls == 2  # its own copy of the object
        with pytest.raises(ToolError, match="invalid arguments"):
            twin({"by": "x"})
