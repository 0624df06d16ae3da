"""User task files for spo/PythonExec-v0: JSONL or Parquet records with a prompt and tests.

A record needs a prompt and tests; an entry point and a reference solution are optional:

    {"task_id": "add", "prompt": "Write add(a, b) returning the sum.", "entry_point": "add",
     "tests": [{"input": [1, 2], "output": 3}, {"input": [-1, 1], "output": 0}],
     "reference": "def add(a, b):\\n    return a + b\\n"}

`tests` may be:
- a list of input/output pairs: `{"input": [args...], "output": value}` (`args`/`expected`
  also accepted; an input that is not a list is a single argument); needs `entry_point`;
- assert statements (MBPP `test_list` style), as a list of strings or one string:
  `assert add(1, 2) == 3`. Each must compare an expression with a literal (`==`, either
  side); top-level imports are kept as setup code run after the solution.

Why only these shapes: the grader keeps expected values outside the sandbox and compares them
itself (see grading.py), so every test must split into "an expression the solution computes"
and "a value it must equal". An assert of any other shape (`assert f(x)`, `assert
math.isclose(...)`) would have to be judged inside the process the solution controls, so it
is refused at load time with the line that caused it. HumanEval's `check(candidate)`
functions are not read either; convert them to asserts.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from spo_agents.env import Task, load_tasks

from spo_env_pythonexec.tasks import call_expression


def tests_from_asserts(source: str) -> tuple[list[dict[str, str]], list[str]]:
    """(tests, setup statements) from assert statements; ValueError for unsupported ones."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"tests are not valid Python: {exc}") from None
    tests, setup = [], []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            setup.append(ast.unparse(node))
            continue
        test = _equality_test(node)
        if test is None:
            raise ValueError(f"unsupported test {ast.unparse(node)[:120]!r}: write `assert <expression> == <literal>` "
                             "or an input/output pair")
        tests.append(test)
    return tests, setup


def _equality_test(node: ast.stmt) -> dict[str, str] | None:
    if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return None
    left, right = node.test.left, node.test.comparators[0]
    for expression, literal in ((left, right), (right, left)):
        try:
            value = ast.literal_eval(literal)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        return {"expr": ast.unparse(expression), "expected": repr(value)}
    return None


def _io_test(test: dict[str, Any], entry_point: str | None) -> dict[str, str]:
    if not entry_point:
        raise ValueError("input/output tests need an entry_point")
    args = test.get("input", test.get("args"))
    if "output" in test:
        expected = test["output"]
    elif "expected" in test:
        expected = test["expected"]
    else:
        raise ValueError(f"test {test!r} has no 'output'")
    args = tuple(args) if isinstance(args, list) else (args,)
    return {"expr": call_expression(entry_point, args), "expected": repr(expected)}


def normalize_tests(raw: Any, entry_point: str | None) -> tuple[list[dict[str, str]], str]:
    """(tests as expression/expected pairs, setup code) from any supported `tests` value."""
    items = [raw] if isinstance(raw, str) else list(raw or [])
    tests: list[dict[str, str]] = []
    setup: list[str] = []
    for item in items:
        if isinstance(item, str):
            found, imports = tests_from_asserts(item)
            tests += found
            setup += [line for line in imports if line not in setup]
        elif isinstance(item, dict):
            tests.append(_io_test(item, entry_point))
        else:
            raise ValueError(f"unsupported test {item!r}")
    if not tests:
        raise ValueError("no tests")
    for test in tests:
        ast.literal_eval(test["expected"])  # must round-trip (e.g. no float('nan'))
    return tests, "\n".join(setup)


def load_python_tasks(path: str | Path, prompt_field: str = "prompt", tests_field: str = "tests",
                      entry_point_field: str = "entry_point", reference_field: str = "reference",
                      setup_field: str = "setup", id_field: str | None = "task_id", prefix: str = "") -> list[Task]:
    """Programming tasks from a local JSONL or Parquet file (see module doc for the format).

    MBPP-style files load with `tests_field="test_list", reference_field="code",
    setup_field="test_setup_code", id_field="task_id", prompt_field="text"`.
    """
    tasks = []
    for task in load_tasks(path, prompt_field, reference_field, id_field, prefix):
        meta = task.metadata
        entry_point = meta.get(entry_point_field) or None
        try:
            tests, imports = normalize_tests(meta.get(tests_field), entry_point)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"{path}: task {task.task_id!r}: {exc}") from None
        setup = "\n".join(part for part in (imports, str(meta.get(setup_field) or "")) if part)
        metadata = {"entry_point": entry_point, "tests": tests, "setup": setup, "source": str(path)}
        tasks.append(task.model_copy(update={"metadata": metadata}))
    return tasks
