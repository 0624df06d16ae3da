"""Boxed-answer extraction and removal of tool/code blocks: behaviour and linear cost."""

import time

import pytest

from spo_agents.grading import answer_region, extract_boxed, strip_code_blocks, strip_tool_calls


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{1} and finally \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{a\\}b}", "a\\}b"),
        ("\\boxed{x \\\\ y}", "x \\\\ y"),
        ("\\boxed{ 7 }", "7"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} \\fbox{8}", "8"),
        ("\\fbox{8} \\boxed{1}", "1"),
        ("$\\boxed 5$", "5"),
        ("\\boxed {3}", "3"),
        ("\\boxed{outer \\boxed{inner}}", "inner"),
        ("\\boxed{2} \\boxedfoo{3}", "2"),
        ("no box here", None),
        ("\\boxed{}", None),
        ("\\boxed{   }", None),
        ("\\boxed{42", None),
        ("\\boxed{42} then \\boxed{", None),
        ("\\boxed", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_max_chars():
    assert extract_boxed("\\boxed{12345}", max_chars=5) == "12345"
    assert extract_boxed("\\boxed{123456}", max_chars=5) is None
    assert extract_boxed("\\boxed 123456", max_chars=5) is None
    assert extract_boxed("\\boxed{" + "{" * 10**6 + "}" * 10**6 + "}", max_chars=1000) is None


def test_extract_boxed_rejects_non_strings():
    assert extract_boxed(None) is None  # type: ignore[arg-type]
    assert extract_boxed(b"\\boxed{1}") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('a <tool_call>{"x": "\\boxed{1}"}</tool_call> b', "a  b"),
        ("a <tool_response>\\boxed{1}</tool_response> b", "a  b"),
        ("a <TOOL_CALL>x</TOOL_CALL> b", "a  b"),
        ("<tool_call>1</tool_call><tool_call>2</tool_call>c", "c"),
        ("keep <tool_call> unclosed \\boxed{1}", "keep "),
        ("stray </tool_call> kept", "stray </tool_call> kept"),
        ("plain", "plain"),
    ],
)
def test_strip_tool_calls(text, expected):
    assert strip_tool_calls(text) == expected


def test_strip_code_blocks():
    assert strip_code_blocks("a ```print('\\boxed{1}')``` b") == "a  b"
    assert strip_code_blocks("a ```unclosed \\boxed{1}") == "a "
    assert strip_code_blocks("no fences") == "no fences"


def test_answer_region_ignores_boxes_in_tool_and_code_blocks():
    reply = (
        "<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"\\\\boxed{9}\"}}</tool_call>"
        "<tool_response>\\boxed{8}</tool_response>```\\boxed{7}```The answer is \\boxed{6}."
    )
    assert extract_boxed(answer_region(reply)) == "6"
    assert extract_boxed(answer_region("<tool_response>\\boxed{8}</tool_response>")) is None


@pytest.mark.parametrize(
    "name, text",
    [
        ("megabyte of garbage", "x{y}\\z" * 200_000),
        ("megabyte of open braces", "\\boxed{" + "{" * 1_000_000),
        ("megabyte of balanced braces", "\\boxed{" + "{" * 500_000 + "}" * 500_001),
        ("thousands of boxes", "\\boxed{1} " * 100_000),
        ("thousands of fake boxes", "\\boxedx" * 200_000 + "\\boxed{5}"),
        ("many tool calls", "<tool_call>\\boxed{1}</tool_call>" * 50_000),
        ("many unclosed tags", "<tool_call>" * 100_000),
        ("many fences", "```" * 300_000),
    ],
)
def test_linear_on_huge_inputs(name, text):
    start = time.perf_counter()
    extract_boxed(answer_region(text))
    extract_boxed(text)
    assert time.perf_counter() - start < 1.0, name
