"""MathGrader reward tables, backends, threads, worker lifecycle and latency."""

import os
import pickle
import signal
import statistics
import threading
import time
import warnings

import pytest

from spo_agents.grading import MathGrader, math_verify_available
from spo_agents.grading import math_grader as math_grader_module
from spo_agents.grading import workers as workers_module

needs_math_verify = pytest.mark.skipif(not math_verify_available(), reason="math-verify not installed")

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "\\\\boxed{42}"}}</tool_call>'

# (model output, reference, expected reward) for every backend.
COMMON_TABLE = [
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("The answer is \\boxed{41}.", "42", 0.0),
    ("The answer is 42.", "42", 0.0),  # no box
    ("\\boxed{}", "0", 0.0),  # empty box
    ("\\boxed{ }", "0", 0.0),
    ("\\boxed{42", "42", 0.0),  # unclosed
    ("\\boxed{1} no wait \\boxed{2}", "2", 1.0),  # the last box counts
    ("\\boxed{2} no wait \\boxed{1}", "2", 0.0),
    ("\\boxed{42} \\boxed{", "42", 0.0),  # last box unclosed
    # reward hacking: answers inside tool calls, tool output and code
    (CALL, "42", 0.0),
    ("<tool_response>\\boxed{42}</tool_response>", "42", 0.0),
    ("I got <tool_response>\\boxed{42}</tool_response>, so \\boxed{41}", "42", 0.0),
    ("\\boxed{42} <tool_call>\\boxed{7}</tool_call>", "42", 1.0),
    ("<tool_call>\\boxed{42}", "42", 0.0),  # unclosed tool call hides the rest
    ("```python\nprint('\\\\boxed{42}')\n```", "42", 0.0),
    ("```\\boxed{41}``` so \\boxed{42}", "42", 1.0),
    # hedging
    ("\\boxed{1 \\text{ or } 2}", "1", 0.0),
    ("\\boxed{1 or 2}", "2", 0.0),
    ("\\boxed{1, 2}", "1", 0.0),
    ("\\boxed{\\pm 2}", "2", 0.0),
    ("\\boxed{x}", "3", 0.0),
    ("\\boxed{x = 5 = 6}", "5", 0.0),  # math-verify reads a chain as its last value only
    ("\\boxed{5 \\lor 6}", "5", 0.0),
    # percent (documented: the sign is notation, and the value counts too)
    ("\\boxed{50\\%}", "50", 1.0),
    ("\\boxed{50}", "50\\%", 1.0),
    ("\\boxed{0.5}", "50\\%", 1.0),
    ("\\boxed{5\\%}", "50", 0.0),
    # forms of the same number
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{1/2}", "\\frac12", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{\\$1,000}", "1000", 1.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("\\boxed{5.0}", "5", 1.0),
    ("\\boxed{0.333333}", "\\frac{1}{3}", 1.0),
    ("\\boxed{0.33}", "\\frac{1}{3}", 0.0),
    ("\\boxed{12 \\text{ cm}}", "12", 1.0),
    ("\\fbox{7}", "7", 1.0),
    ("$\\boxed 7$", "7", 1.0),
    ("\\boxed{\\text{(B)}}", "B", 1.0),
    ("\\boxed{3}", "\\boxed{3}", 1.0),  # boxed reference
    ("\\boxed{123456789012345678901}", "123456789012345678902", 0.0),  # no float rounding of ints
    ("\\boxed{3\\pi}", "9\\pi", 0.0),
]

# Symbolic equivalence: right with math-verify, unknown (so 0) to the fallback.
SYMBOLIC_TABLE = [
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{2, 1}", "1, 2", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}\\sqrt{3}", 1.0),
    ("\\boxed{\\frac{\\pi}{4}}", "45^\\circ", 0.0),
    ("\\boxed{x^2}", "x^3", 0.0),
]


@pytest.mark.parametrize("output, reference, reward", COMMON_TABLE + SYMBOLIC_TABLE)
def test_reward_table_math_verify(grader, output, reference, reward):
    assert grader.grade(output, reference) == reward


@pytest.mark.parametrize(
    "output, reference, reward", COMMON_TABLE + [(o, r, 0.0) for o, r, _ in SYMBOLIC_TABLE]
)
def test_reward_table_fallback(fallback_grader, output, reference, reward):
    assert fallback_grader.grade(output, reference) == reward


def test_fallback_backend_starts_no_process(fallback_grader):
    assert fallback_grader.backend == "fallback"
    assert fallback_grader.grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}") == 0.0
    assert fallback_grader.worker_pids() == []


def test_auto_without_math_verify_uses_fallback(monkeypatch):
    monkeypatch.setattr(math_grader_module, "math_verify_available", lambda: False)
    with MathGrader() as g:
        assert g.backend == "fallback"
        assert g.grade("\\boxed{0.5}", "\\frac12") == 1.0
    with pytest.raises(ImportError):
        MathGrader("math_verify")
    with pytest.raises(ValueError):
        MathGrader("sympy")  # type: ignore[arg-type]


@needs_math_verify
def test_worker_that_cannot_start(monkeypatch, tmp_path):
    broken = tmp_path / "broken_worker.py"
    broken.write_text("import sys; sys.exit(3)\n")
    monkeypatch.setattr(workers_module, "WORKER_SCRIPT", str(broken))
    with MathGrader("auto", startup_timeout_s=10) as g:
        with pytest.warns(RuntimeWarning, match="fallback"):
            assert g.grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}") == 0.0
        assert g.backend == "fallback"
        assert g.grade("\\boxed{2}", "2") == 1.0
    with MathGrader("auto", startup_timeout_s=10) as g:
        with pytest.warns(RuntimeWarning, match="fallback"):
            g.warm_up()
        assert g.backend == "fallback"
    with MathGrader("math_verify", startup_timeout_s=10) as g:
        with pytest.raises(RuntimeError, match="did not start"):
            g.grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")


@needs_math_verify
def test_frozen_worker_is_killed_and_replaced():
    """A worker stuck where no signal reaches it (SIGSTOP stands in for C code) is SIGKILLed."""
    with MathGrader("math_verify", timeout_s=1.0, workers=1) as g:
        g.warm_up()
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        start = time.perf_counter()
        assert g.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 0.0
        assert time.perf_counter() - start < 1.0 + 1.0
        assert g.kills == 1
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
        assert g.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0
        assert g.worker_pids() != [pid]


def test_slow_sympy_is_stopped_inside_the_worker(grader):
    """The worker's own timer (80% of timeout_s) ends slow sympy work: no kill, no restart."""
    pids, kills = grader.worker_pids(), grader.kills
    start = time.perf_counter()
    assert grader.grade("\\boxed{9^{9^{9^{9}}}}", "1") == 0.0
    assert time.perf_counter() - start < grader.timeout_s
    assert grader.kills == kills
    assert grader.worker_pids() == pids


@needs_math_verify
def test_dead_worker_is_restarted():
    with MathGrader("math_verify", workers=1) as g:
        g.warm_up()
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        assert g.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0


@needs_math_verify
def test_close_kills_workers_and_refuses_work():
    g = MathGrader("math_verify", workers=2)
    g.warm_up()
    pids = g.worker_pids()
    assert len(pids) == 2
    g.close()
    time.sleep(0.05)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        g.grade("\\boxed{1}", "1")


@needs_math_verify
def test_pickled_grader_starts_its_own_workers(grader):
    copy = pickle.loads(pickle.dumps(grader))
    try:
        assert copy.worker_pids() == []
        assert copy.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0
        assert set(copy.worker_pids()).isdisjoint(grader.worker_pids())
    finally:
        copy.close()


def test_many_threads_at_once(grader):
    cases = (COMMON_TABLE + SYMBOLIC_TABLE) * 3
    failures: list[str] = []

    def run(chunk):
        for output, reference, reward in chunk:
            got = grader.grade(output, reference)
            if got != reward:
                failures.append(f"{output!r} vs {reference!r}: {got}")

    threads = [threading.Thread(target=run, args=(cases[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_grading_from_a_non_main_thread(grader):
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=grader.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}")))
    thread.start()
    thread.join(timeout=30)
    assert result == {"r": 1.0}


def test_shared_grader_is_one_instance():
    first = math_grader_module.shared_math_grader()
    assert math_grader_module.shared_math_grader() is first
    assert first.grade("\\boxed{4}", "4") == 1.0


def test_latency_p50_on_typical_answers(grader):
    """Bar: p50 <= 10 ms (integers, fractions, simple equivalent expressions, wrong answers)."""
    cases = []
    for i in range(1, 61):
        cases += [
            (f"So \\boxed{{{i * 7}}}.", str(i * 7)),
            (f"\\boxed{{\\frac{{{i}}}{{{i + 1}}}}}", f"{i}/{i + 1}"),
            (f"\\boxed{{{i / 4}}}", f"\\frac{{{i}}}{{4}}"),
            (f"\\boxed{{{i}\\sqrt{{2}}}}", f"\\sqrt{{{2 * i * i}}}"),
            ("\\boxed{17}", f"\\frac{{{i}}}{{{i + 2}}}"),
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latencies = []
        for output, reference in cases:
            start = time.perf_counter()
            grader.grade(output, reference)
            latencies.append((time.perf_counter() - start) * 1000)
    assert statistics.median(latencies) <= 10.0, f"p50 {statistics.median(latencies):.2f} ms"
