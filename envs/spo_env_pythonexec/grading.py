"""Grading a submitted solution with hidden tests, in a way the solution cannot forge.

The threat: a policy under RL will find any way to make the tests "pass". Code under test
that runs in the same process as its tests can do anything the test harness can: call
`os._exit(0)` before the first assert, print "all tests passed", replace `assert`-raising
helpers or builtins, return an object whose `__eq__` is always true, walk the stack and the
garbage collector to read the tests, or import the task generator to look up its task and
run the reference. So nothing the sandboxed solution says about *success* is trusted. The
scheme:

1. A test is an expression (`triangular(4)`) and an expected value held **only in the
   parent** (the environment process). Expected values never enter the sandbox, so there is
   nothing to read there, and no comparison runs where the solution could patch it.
2. Grading is a fresh sandbox session of its own, separate from the model's tool calls (also
   in stateful mode, so nothing the model ran earlier is in it). The solution runs in a
   process of its own that never holds the tests, the report channel, or the other tests'
   inputs: it is asked one expression at a time by a harness it cannot read or write
   (harness.py). Its answers are `repr()` of plain values (exact plain types, so no object
   with a custom `__eq__` or `__repr__`), or an error type; its own prints go nowhere.
3. The parent keeps only complete lines that start with the call's random nonce (a line cut
   at the output cap could turn "12" into "1"), requires each test index once and in order,
   parses REPR with `ast.literal_eval` (plain data only) and compares it with the expected
   value itself (`values_match`): an int answer must be an int equal to it, floats match
   within 1e-6. Exit codes are ignored; a solution that exits early leaves its tests failed.
4. The project's packages (this one included) are hidden inside the sandbox, and the hidden
   test inputs are drawn with a secret `test_seed` (tasks.py), so a solution can neither
   import the generator nor regenerate its task's tests from a copy of it.

What this does not cover: each test's arguments are visible to the solution when it is
called with them (they are inputs, not answers); the example shown in the prompt is not among
the hidden tests, but a solution may still special-case inputs it guesses.
"""

from __future__ import annotations

import ast
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from spo_agents.env import strip_tool_calls

from spo_env_pythonexec.harness import MAX_REPR_CHARS

FENCE = "```"
PYTHON_TAGS = frozenset({"python", "py", "python3"})

def extract_solution(reply: str) -> str | None:
    """The last closed ```python (or ```py) fenced block of the reply outside tool calls."""
    parts = strip_tool_calls(reply).split(FENCE)
    # parts[1], parts[3], ... are fenced blocks; one is closed if another part follows it
    last_closed = len(parts) - 2 if len(parts) % 2 == 1 else len(parts) - 3
    for index in range(last_closed, 0, -2):
        tag, _, body = parts[index].partition("\n")
        if tag.strip().lower() in PYTHON_TAGS:
            return body
    return None


def new_nonce() -> str:
    return "spo-grade-" + secrets.token_hex(16)


@dataclass
class TestReport:
    """What the harness reported, as understood by the parent."""

    total: int
    outcomes: list[str] = field(default_factory=list)  # per test: "pass", "fail", or "error:Type"
    error: str | None = None  # why nothing (or not everything) ran

    @property
    def passed(self) -> int:
        return sum(outcome == "pass" for outcome in self.outcomes)

    def reward(self, mode: str) -> float:
        if self.total == 0:
            return 0.0
        if mode == "fraction":
            return self.passed / self.total
        return 1.0 if self.passed == self.total else 0.0


def load_failure(stdout: str, nonce: str) -> str | None:
    """Why the solution did not load in grading call 1, or None when it did."""
    for line in stdout.split("\n")[:-1]:
        if line == f"{nonce} loaded":
            return None
        if line.startswith(f"{nonce} load_error "):
            return f"the solution raised {line.rsplit(' ', 1)[-1]} on import"
    return "the solution did not load"


def parse_report(stdout: str, nonce: str, expected: list[Any]) -> TestReport:
    """Read the harness lines of `stdout` and compare values with `expected` (see module doc)."""
    report = TestReport(total=len(expected))
    prefix = nonce + " "
    next_index, outcomes = 0, []
    for line in stdout.split("\n")[:-1]:  # complete lines only: output cut at the cap may end mid-line
        if not line.startswith(prefix):
            continue
        body = line[len(prefix):]
        if body == "done" and next_index == len(expected):
            report.outcomes = outcomes
            return report
        index_text, _, rest = body.partition(" ")
        if index_text != str(next_index) or next_index >= len(expected):
            return _inconsistent(report)
        outcomes.append(_outcome(rest, expected[next_index]))
        next_index += 1
    report.outcomes = outcomes + ["fail"] * (len(expected) - len(outcomes))
    report.error = f"the tests stopped after {len(outcomes)} of {len(expected)}"
    return report


def _inconsistent(report: TestReport) -> TestReport:
    report.outcomes = ["fail"] * report.total
    report.error = "inconsistent test report (output forged by the solution?)"
    return report


def _outcome(rest: str, expected: Any) -> str:
    status, _, payload = rest.partition(" ")
    if status == "error":
        return "error:" + payload[:80]
    if status != "ok" or len(payload) > MAX_REPR_CHARS:
        return "fail"
    try:
        value = ast.literal_eval(payload)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return "fail"
    return "pass" if values_match(expected, value) else "fail"


def values_match(expected: Any, got: Any, depth: int = 0) -> bool:
    """Structural equality of plain data, decided in the parent.

    An expected int needs an int equal to it (a float never matches: `float(v + 1)` is within
    any relative tolerance of a large v); an expected float matches an int or a float within a
    relative and absolute tolerance of 1e-6; lists and tuples are interchangeable (JSON has no
    tuples); bool is not a number.
    """
    if depth > 100:
        return False
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if type(expected) is int:
        return type(got) is int and expected == got
    if isinstance(expected, float) and isinstance(got, (int, float)):
        return math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(expected) == len(got) and all(values_match(e, g, depth + 1) for e, g in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(values_match(v, got[k], depth + 1) for k, v in expected.items())
    if isinstance(expected, (set, frozenset)) and isinstance(got, (set, frozenset)):
        return set(expected) == set(got)
    return type(expected) is type(got) and expected == got
