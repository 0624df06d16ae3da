"""Graders shared by the grading tests: one per test module, closed at the module's end."""

import pytest

from spo_agents.grading import MathGrader, math_verify_available


@pytest.fixture(scope="module")
def grader():
    """math-verify in warm worker processes (the module is skipped without math-verify)."""
    if not math_verify_available():
        pytest.skip("math-verify not installed")
    with MathGrader("math_verify", timeout_s=3.0) as g:
        g.warm_up()
        yield g


@pytest.fixture(scope="module")
def fallback_grader():
    """The dependency-free grader (no process)."""
    with MathGrader("fallback") as g:
        yield g
