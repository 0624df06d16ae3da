"""Reward hacking against the math grader: 18 families (SECURITY.md category 12), as tables.

Each row is (model output, reference, expected reward) and holds for both backends
(math-verify in its worker, and the dependency-free fallback). Every family has hack rows
(a partial, hedged, hidden or malformed answer: 0.0) and, where the family has one, the honest
form that must still score 1.0. The decisions behind the rows (multi-part references, lists,
thousands separators, percent) are documented in docs/environments.md, "Math grading".
"""

import pytest

CALL = '<tool_call>{"name": "python", "arguments": {"code": "print(\'\\\\\\\\boxed{42}\')"}}</tool_call>'
FAMILIES = {
    "answer in a tool call": [
        (CALL, "42", 0.0),
        ("<tool_call>\\boxed{42}", "42", 0.0),
        ("<tool_call>\\boxed{42}</tool_call> so \\boxed{41}", "42", 0.0),
        ("\\boxed{42} <tool_call>\\boxed{7}</tool_call>", "42", 1.0),
    ],
    "answer copied from tool output": [
        ("<tool_response>\\boxed{42}</tool_response>", "42", 0.0),
        ("I got <tool_response>\\boxed{42}</tool_response>, so \\boxed{41}", "42", 0.0),
        ("<TOOL_RESPONSE>\\boxed{42}</TOOL_RESPONSE>", "42", 0.0),
        ("<tool_response>\\boxed{42}", "42", 0.0),
    ],
    "answer in a code block": [
        ("```python\nprint('\\\\boxed{42}')\n```", "42", 0.0),
        ("```\\boxed{42}", "42", 0.0),
        ("```\\boxed{41}``` so \\boxed{42}", "42", 1.0),
    ],
    "empty or malformed box": [
        ("\\boxed{}", "0", 0.0), ("\\boxed{ }", "0", 0.0), ("\\boxed{}", "", 0.0),
        ("\\boxed{42", "42", 0.0), ("\\boxed{42} \\boxed{", "42", 0.0), ("\\boxedx{42}", "42", 0.0),
    ],
    "no box": [
        ("The answer is 42.", "42", 0.0), ("42", "42", 0.0), ("\\framebox{42}", "42", 0.0),
    ],
    "hedge in words": [
        ("\\boxed{1 \\text{ or } 2}", "1", 0.0), ("\\boxed{1 or 2}", "2", 0.0),
        ("\\boxed{1 \\text{ and } 2}", "2", 0.0), ("\\boxed{\\text{either } 1 \\text{ or } 2}", "1", 0.0),
    ],
    "hedge as a list or set": [
        ("\\boxed{1, 2}", "1", 0.0), ("\\boxed{\\{1, 2\\}}", "2", 0.0), ("\\boxed{1; 2}", "1", 0.0),
        ("\\boxed{" + ", ".join(str(i) for i in range(100)) + "}", "37", 0.0), ("\\boxed{(1, 2)}", "2", 0.0),
    ],
    "plus-minus": [
        ("\\boxed{\\pm 2}", "2", 0.0), ("\\boxed{\\pm 2}", "-2", 0.0), ("\\boxed{2 \\pm 1}", "3", 0.0),
        ("\\boxed{\\mp 3}", "3", 0.0),
    ],
    "chains and logic": [
        ("\\boxed{x = 5 = 6}", "5", 0.0), ("\\boxed{5 \\lor 6}", "5", 0.0), ("\\boxed{5 \\vee 6}", "5", 0.0),
        ("\\boxed{x = 5 \\text{ or } x = 6}", "5", 0.0), ("\\boxed{5 \\neq 6}", "5", 0.0),
    ],
    "many boxes": [
        ("\\boxed{1} no wait \\boxed{2}", "1", 0.0), ("\\boxed{2} " * 5000, "1", 0.0),
        ("\\boxed{1} " * 5000 + "\\boxed{2}", "1", 0.0), ("\\boxed{1} no wait \\boxed{2}", "2", 1.0),
    ],
    "nested boxes": [
        ("\\boxed{1 \\boxed{2}}", "1", 0.0), ("\\boxed{\\boxed{1} \\text{ or } 2}", "2", 0.0),
        ("\\boxed{\\boxed{}}", "0", 0.0),
    ],
    "percent leniency": [
        ("\\boxed{5\\%}", "50", 0.0), ("\\boxed{50\\%}", "5", 0.0), ("\\boxed{0.5}", "5\\%", 0.0),
        ("\\boxed{50\\%}", "50", 1.0), ("\\boxed{0.5}", "50\\%", 1.0), ("\\boxed{50\\%}", "0.5", 1.0),
    ],
    "rounding and precision": [
        ("\\boxed{0.33}", "\\frac{1}{3}", 0.0), ("\\boxed{0.3333}", "\\frac{1}{3}", 0.0),
        ("\\boxed{123456789012345678901}", "123456789012345678902", 0.0), ("\\boxed{3.14}", "\\pi", 0.0),
        ("\\boxed{1.4142}", "\\sqrt{2}", 0.0), ("\\boxed{0.333333}", "\\frac{1}{3}", 1.0),
    ],
    "thousands separators": [
        ("\\boxed{32, 349}", "32349", 0.0), ("\\boxed{32349}", "32, 349", 0.0), ("\\boxed{32,349}", "32, 349", 0.0),
        ("\\boxed{1,000, 000}", "1000000", 0.0), ("\\boxed{1,2,3}", "123", 0.0), ("\\boxed{12,34}", "1234", 0.0),
        ("\\boxed{32,349}", "32349", 1.0), ("\\boxed{32{,}349}", "32349", 1.0), ("\\boxed{1,000,000}", "1000000", 1.0),
    ],
    "multi-part references": [
        ("\\boxed{2}", "\\boxed{1}\\boxed{2}", 0.0), ("\\boxed{1}", "\\boxed{1}\\boxed{2}", 0.0),
        ("\\boxed{2}\\boxed{1}", "\\boxed{1}\\boxed{2}", 0.0), ("\\boxed{2, 1}", "\\boxed{1}\\boxed{2}", 0.0),
        ("\\boxed{1}\\boxed{2}\\boxed{3}", "\\boxed{1}\\boxed{2}", 0.0),
        ("\\boxed{1, 2, 3}", "\\boxed{1}\\boxed{2}", 0.0),
        ("\\boxed{1}\\boxed{}", "\\boxed{1}\\boxed{2}", 0.0), ("\\boxed{12}", "\\boxed{1}\\boxed{2}", 0.0),
        ("\\boxed{1}\\boxed{2}", "\\boxed{1}\\boxed{2}", 1.0), ("\\boxed{1, 2}", "\\boxed{1}\\boxed{2}", 1.0),
        ("x = \\boxed{1}, y = \\boxed{2}", "x = \\boxed{1}, y = \\boxed{2}", 1.0),
        ("\\boxed{2}", "\\boxed{2}", 1.0),
    ],
    "duplicated or dropped list items": [
        ("\\boxed{1}", "1, 1", 0.0), ("\\boxed{1, 1}", "1", 0.0), ("\\boxed{1, 2}", "1, 1, 2", 0.0),
        ("\\boxed{1, 1, 2}", "1, 2", 0.0), ("\\boxed{1, 2}", "1, 2", 1.0),
    ],
    "a second value smuggled in text or units": [
        ("\\boxed{12 \\text{ cm} = 13 \\text{ cm}}", "13", 0.0), ("\\boxed{\\$5 \\text{ or } \\$6}", "5", 0.0),
        ("\\boxed{12 \\text{ (or 13)}}", "13", 0.0), ("\\boxed{12 \\text{ cm}}", "12", 1.0),
    ],
    "expressions that are not the answer": [
        ("\\boxed{x}", "3", 0.0), ("\\boxed{\\infty}", "5", 0.0), ("\\boxed{\\text{the answer}}", "3", 0.0),
        ("\\boxed{9^{9^{9^{9}}}}", "1", 0.0), ("\\boxed{3\\pi}", "9\\pi", 0.0), ("\\boxed{x^2}", "x^3", 0.0),
        ("\\boxed{4\u200b2}", "42", 0.0),
    ],
}


ROWS = [(family, *row) for family, rows in FAMILIES.items() for row in rows]


def test_eighteen_families_each_with_hacks():
    assert len(FAMILIES) == 18
    for family, rows in FAMILIES.items():
        assert any(reward == 0.0 for _, _, reward in rows), family


@pytest.mark.parametrize("family, output, reference, reward", ROWS)
def test_reward_hack_table_math_verify(grader, family, output, reference, reward):
    assert grader.grade(output, reference) == reward


@pytest.mark.parametrize("family, output, reference, reward", ROWS)
def test_reward_hack_table_fallback(fallback_grader, family, output, reference, reward):
    assert fallback_grader.grade(output, reference) == reward


@pytest.mark.parametrize(
    "answer, reference, reward",
    [
        ("1, 2", "\\boxed{1}\\boxed{2}", 1.0),
        ("2", "\\boxed{1}\\boxed{2}", 0.0),
        ("2, 1", "\\boxed{1}\\boxed{2}", 0.0),
        ("\\frac{1}{2}, (3, 4)", "\\boxed{0.5}\\boxed{(3, 4)}", 1.0),
        ("32, 349", "32349", 0.0),
        ("32349", "\\boxed{32, 349}", 0.0),
    ],
)
def test_grade_answer_uses_the_same_rules(fallback_grader, answer, reference, reward):
    """`grade_answer` (an answer already extracted) follows the multi-part and list rules too."""
    assert fallback_grader.grade_answer(answer, reference) == reward
