"""Hostile answers to the math grader (SECURITY.md categories 10 and 12).

Each case scores 0 within timeout + 1 s, from the main thread and from other threads, and
the grader keeps grading correctly afterwards.
"""

import random
import threading
import time

import pytest

from spo_agents.grading import MathGrader, math_verify_available

pytestmark = pytest.mark.skipif(not math_verify_available(), reason="math-verify not installed")

TIMEOUT_S = 1.0
MARGIN_S = 1.0


def _garbage(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    alphabet = "0123456789+-*/^!{}()[]\\_abcxyz ,.$%\u00e9\u4e2d\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(n))


HOSTILE = {
    "power tower 4": "\\boxed{9^{9^{9^{9}}}}",
    "power tower 3": "\\boxed{9^{9^{9}}}",
    "power of power": "\\boxed{10^{10^{10}}}",
    "double exponential": "\\boxed{2^{2^{100}}}",
    "exp tower": "\\boxed{e^{e^{e^{e^{e}}}}}",
    "big base power": "\\boxed{99999999999^{99999999}}",
    "factorial": "\\boxed{100000!}",
    "factorial of a power": "\\boxed{(10^{100000})!}",
    "huge product": "\\boxed{\\prod_{k=1}^{10^{9}} k}",
    "nested braces": "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",
    "deeply nested braces": "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "nested parentheses": "\\boxed{" + "(" * 480 + "1" + ")" * 480 + "}",
    "nested roots": "\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}",
    "long symbol product": "\\boxed{" + "x" * 999 + "}",
    "megabyte of garbage": _garbage(1_000_000),
    "megabyte of garbage in a box": "\\boxed{" + _garbage(1_000_000, seed=1) + "}",
    "box of garbage": "\\boxed{" + _garbage(900, seed=2).replace("{", "").replace("}", "") + "}",
    "ten megabytes": "\\boxed{1}" + " " * 10_000_000,
    "thousands of boxes": "\\boxed{1} " * 5000 + "\\boxed{9^{9^{9^{9}}}}",
    "thousands of wrong boxes": "\\boxed{2} " * 5000,
    "answer only in tool output": "<tool_response>\\boxed{1}</tool_response>" * 1000,
}


@pytest.fixture(scope="module")
def grader():
    with MathGrader("math_verify", timeout_s=TIMEOUT_S, workers=2) as g:
        g.warm_up()
        yield g


def _timed_grade(grader, output, reference="1"):
    start = time.perf_counter()
    reward = grader.grade(output, reference)
    return reward, time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_answer_scores_zero_in_time(grader, name):
    reward, elapsed = _timed_grade(grader, HOSTILE[name])
    assert reward == 0.0
    assert elapsed < TIMEOUT_S + MARGIN_S, f"{name}: {elapsed:.2f} s"


def test_hostile_answers_from_threads(grader):
    """One hostile answer per thread (non-main threads), two at a time (one per worker)."""
    names = ["power tower 4", "factorial of a power", "nested braces", "huge product"]
    results: dict[str, tuple[float, float]] = {}

    def run(name):
        results[name] = _timed_grade(grader, HOSTILE[name])

    for pair in (names[:2], names[2:]):
        threads = [threading.Thread(target=run, args=(name,)) for name in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(results) == sorted(names)
    for name, (reward, elapsed) in results.items():
        assert reward == 0.0, name
        assert elapsed < TIMEOUT_S + MARGIN_S, f"{name}: {elapsed:.2f} s"


def test_grader_keeps_working_after_hostile_answers(grader):
    for name in ("power tower 4", "nested parentheses"):
        grader.grade(HOSTILE[name], "1")
    assert grader.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0
    assert grader.grade("\\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert grader.grade("\\boxed 1 " * 5000 + "\\boxed{7}", "7") == 1.0  # many boxes, last is right
