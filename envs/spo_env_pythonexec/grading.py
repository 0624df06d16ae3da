"""Grading a submitted solution with hidden tests, in a way the solution cannot forge.

The threat: a policy under RL will find any way to make the tests "pass". Code under test
that runs in the same process as its tests can do anything the test harness can: call
`os._exit(0)` before the first assert, print "all tests passed", replace `assert`-raising
helpers or builtins, return an object whose `__eq__` is always true, or walk the stack and
the garbage collector to read the expected values out of the test code. So nothing the
sandboxed process says about *success* is trusted. The scheme:

1. A test is an expression (`triangular(4)`) and an expected value held **only in the
   parent** (the environment process). Expected values never enter the sandbox, so there is
   nothing to read there, and no comparison runs where the solution could patch it.
2. Grading is one fresh, stateless sandbox call, separate from the model's tool calls (also
   in stateful mode, so nothing the model ran earlier is in the interpreter). The harness
   execs the solution as module `solution` (its `if __name__ == "__main__"` block does not
   run), then evaluates each test expression under a per-test timer and writes one line per
   test, `NONCE INDEX ok REPR` or `NONCE INDEX error TYPE`, where REPR is `repr()` of the
   value, allowed only when the value is built from plain types (int, float, complex, str,
   bytes, bool, None, list, tuple, dict, set, frozenset; exact types, so no subclass with a
   custom `__eq__` or `__repr__`). The solution's own prints go to a sink.
3. The parent keeps only complete lines that start with the per-call random nonce (a line cut
   at the output cap could turn "12" into "1"), requires each test index once and in order,
   parses REPR with `ast.literal_eval` (plain data only) and compares it with the expected
   value itself (`values_match`). A solution that learns the
   nonce and writes extra lines makes the report inconsistent, which scores 0; a forged line
   can only pass if it carries the right value, which the solution would have had to compute.
   Exit codes are ignored; a solution that exits early simply leaves tests without a line
   (failed).

What this does not cover: test expressions and their arguments are visible to the solution
(they are inputs, not answers); the example shown in the prompt is not among the hidden
tests, but a solution may still special-case inputs it guesses. A per-test timer runs in the
sandboxed process, so a solution can disable it; the call's wall-clock limit
(`grade_timeout_s`) still ends the run, and unfinished tests fail.
"""

from __future__ import annotations

import ast
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from spo_agents.env import strip_tool_calls

FENCE = "```"
PYTHON_TAGS = frozenset({"python", "py", "python3"})
MAX_REPR_CHARS = 20_000  # a result longer than this counts as failed (it is never that long)

_HARNESS = r'''
import os as _os, signal as _signal, sys as _sys


def _harness(nonce, solution, setup, tests, test_timeout_s, max_repr):
    out = _os.dup(1)
    plain_types = (int, float, complex, str, bytes, bool, type(None))

    def emit(text):
        data = (nonce + " " + text + "\n").encode("utf-8", "backslashreplace")
        while data:
            data = data[_os.write(out, data):]

    def plain(value, depth=0):
        kind = type(value)
        if kind in plain_types:
            return True
        if depth > 50:
            return False
        if kind in (list, tuple, set, frozenset):
            return all(plain(item, depth + 1) for item in value)
        if kind is dict:
            return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
        return False

    class Sink:
        def write(self, text):
            return len(text)

        def flush(self):
            pass

    def on_alarm(signum, frame):
        raise TimeoutError(f"test took longer than {test_timeout_s:g} s")

    _sys.stdout = _sys.stderr = Sink()
    _signal.signal(_signal.SIGALRM, on_alarm)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
        if setup:
            exec(compile(setup, "test_setup.py", "exec"), namespace)
    except BaseException as exc:
        emit("load_error " + type(exc).__name__)
        return
    for index, expression in enumerate(tests):
        try:
            _signal.setitimer(_signal.ITIMER_REAL, test_timeout_s)
            value = eval(compile(expression, f"test_{index}.py", "eval"), namespace)
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            if type(value) is frozenset:
                value = set(value)
            if not plain(value):
                raise TypeError(f"unsupported result type {type(value).__name__}")
            text = repr(value)
            if len(text) > max_repr:
                raise ValueError("result too long")
            emit(f"{index} ok {text}")
        except BaseException as exc:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            emit(f"{index} error {type(exc).__name__}")
    emit("done")
'''


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


def build_harness(solution: str, setup: str, expressions: list[str], nonce: str, test_timeout_s: float) -> str:
    """The snippet run in the sandbox: the harness plus its arguments as literals."""
    args = (nonce, solution, setup, list(expressions), float(test_timeout_s), MAX_REPR_CHARS)
    return f"{_HARNESS}\n_harness(*{args!r})\n"


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
        if body.startswith("load_error ") and next_index == 0 and not outcomes:
            report.outcomes, report.error = ["fail"] * len(expected), f"the solution raised {body[11:]} on import"
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

    Floats compare with a relative and absolute tolerance of 1e-6; an int and a float compare
    by value; lists and tuples are interchangeable (JSON has no tuples); bool is not a number.
    """
    if depth > 100:
        return False
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        if isinstance(expected, float) or isinstance(got, float):
            return math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-6)
        return expected == got
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(expected) == len(got) and all(values_match(e, g, depth + 1) for e, g in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(values_match(v, got[k], depth + 1) for k, v in expected.items())
    if isinstance(expected, (set, frozenset)) and isinstance(got, (set, frozenset)):
        return set(expected) == set(got)
    return type(expected) is type(got) and expected == got
