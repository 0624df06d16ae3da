"""spo/PythonExec-v0: write a Python function, try code in a sandbox, be graded by hidden tests."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Any, Mapping

from spo_agents.env import Task, split_tasks
from spo_agents.sandbox import SandboxConfig

from spo_env_pythonexec.grading import TestReport, extract_solution, load_failure, new_nonce, parse_report
from spo_env_pythonexec.harness import build_loader, build_test_runner
from spo_env_pythonexec.loader import load_python_tasks
from spo_agents.env.sandbox_tool import SandboxToolEnv
from spo_env_pythonexec.tasks import generate_tasks

SYSTEM_PROMPT = (
    "You write Python functions. You can run code in an isolated Python interpreter with the python tool: "
    '<tool_call>{"name": "python", "arguments": {"code": "print(1 + 1)"}}</tool_call>; it returns what the code '
    "prints. Test your function before you answer. When you are done, reply without a tool call and put the "
    "complete solution in a ```python code block; the last such block of that reply is graded by hidden tests."
)
REWARD_MODES = ("all", "fraction")


class PythonExecEnv(SandboxToolEnv):
    """Multi-turn programming tasks: a sandboxed python tool, then a solution graded by hidden tests.

    ## Description
    Each task asks for one Python function (numbers, strings, lists, dicts) with one example.
    The assistant may run code with the `python` tool, then replies with the solution. The
    bundled set holds 400 tasks from 22 parametrised families with reference solutions; user
    task files (JSONL or Parquet: prompt, tests, entry point) load with `dataset_path`.

    ## Action
    The assistant's text for one turn: tool calls
    `<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>`, or the final reply
    with the solution in a ```python fenced block.

    ## Observation
    The task at reset; after a tool turn, what the code printed (stdout, `[stderr]`, then one
    bracketed line on errors, timeouts or limits; head and tail kept beyond
    `max_tool_output_chars`); an empty string after the final reply.

    ## Tools
    `python(code: str)`: runs the code in the sandbox (spo_agents.sandbox): no network, private
    file system, time, memory, process and output limits. Stateless by default (a fresh
    interpreter per call); `stateful=True` keeps one interpreter per episode.

    ## Rewards
    The last ```python block of the final reply (outside tool calls) is graded in a fresh
    sandbox session of its own: the solution runs in a process that is asked one hidden test
    at a time by a harness it can neither read nor write; expected values never enter the
    sandbox and the comparison happens in the environment process, so exit codes, printed
    "success", patched builtins, stack walks and imports of the task generator earn nothing
    (see grading.py, harness.py). An int answer must be an int. `reward="all"` (default): 1.0
    if every test passes, else 0.0; `reward="fraction"`: the fraction of tests passed. No code
    block: 0.0. `info` reports `tests_passed`, `tests_total` and `grade_error`.

    ## Episode end
    Terminated when the assistant replies without a tool call; truncated after `max_turns`
    turns, or at once with `info["sandbox_error"]` and reward 0 when the sandbox itself fails.

    ## Arguments
    `num_tasks` (400), `seed` (0), `heldout_fraction` (0.2), `split`, `dataset_path` with
    `prompt_field` ("prompt"), `tests_field` ("tests"), `entry_point_field` ("entry_point"),
    `reference_field` ("reference"), `setup_field` ("setup"), `id_field` ("task_id");
    `test_seed` (None: a secret of this process; the inputs of the bundled tasks' hidden
    tests), `reward` ("all" or "fraction"), `sandbox` (a SandboxConfig or a dict of its fields),
    `stateful` (False), `grade_timeout_s` (10, the whole grading), `test_timeout_s` (2, per
    test), `max_solution_chars` (50000), `max_turns` (8), plus every `ToolEnv` argument.

    ## Version history
    - v0: initial release.
    """

    def __init__(self, num_tasks: int = 400, seed: int = 0, heldout_fraction: float = 0.2, split: str = "train",
                 dataset_path: str | Path | None = None, prompt_field: str = "prompt", tests_field: str = "tests",
                 entry_point_field: str = "entry_point", reference_field: str = "reference",
                 setup_field: str = "setup", id_field: str | None = "task_id", test_seed: int | None = None,
                 reward: str = "all",
                 sandbox: SandboxConfig | Mapping[str, Any] | None = None, stateful: bool = False,
                 grade_timeout_s: float = 10.0, test_timeout_s: float = 2.0, max_solution_chars: int = 50_000,
                 max_turns: int = 8, **kwargs):
        if reward not in REWARD_MODES:
            raise ValueError(f"reward must be one of {REWARD_MODES}, got {reward!r}")
        if dataset_path is None:
            tasks = generate_tasks(num_tasks, seed, test_seed)
        elif test_seed is not None:
            raise ValueError("test_seed applies to the bundled tasks; a dataset_path file brings its own tests")
        else:
            tasks = load_python_tasks(dataset_path, prompt_field, tests_field, entry_point_field, reference_field,
                                      setup_field, id_field)
        self.reward_mode = reward
        self.grade_timeout_s = float(grade_timeout_s)
        self.test_timeout_s = float(test_timeout_s)
        self.max_solution_chars = int(max_solution_chars)
        super().__init__(split_tasks(tasks, heldout_fraction), split=split, sandbox=sandbox, stateful=stateful,
                         system_prompt=kwargs.pop("system_prompt", SYSTEM_PROMPT), max_turns=max_turns, **kwargs)

    # ----- grading --------------------------------------------------------------------------
    def run_tests(self, solution: str, task: Task) -> TestReport:
        """Run `task`'s hidden tests against `solution` in a fresh sandbox session (see grading.py)."""
        tests = task.metadata["tests"]
        expected = [ast.literal_eval(test["expected"]) for test in tests]
        load_nonce, test_nonce = new_nonce(), new_nonce()
        started = time.monotonic()
        with self.fresh_session() as run:
            loaded = run(build_loader(solution, task.metadata.get("setup", ""), load_nonce, self.test_timeout_s),
                         timeout_s=self.grade_timeout_s)
            failure = load_failure(loaded.stdout, load_nonce)
            if failure is not None:
                reason = f"{failure} ({loaded.error})" if loaded.error else failure
                return TestReport(total=len(tests), outcomes=["fail"] * len(tests), error=reason)
            remaining = max(self.grade_timeout_s - (time.monotonic() - started), 0.05)
            result = run(build_test_runner([t["expr"] for t in tests], test_nonce, self.test_timeout_s),
                         timeout_s=remaining)
        report = parse_report(result.stdout, test_nonce, expected)
        if result.error and report.error:
            report.error = f"{report.error} ({result.error})"
        return report

    def grade_reply(self, reply: str, task: Task) -> TestReport:
        solution = extract_solution(reply)
        if solution is None:
            return TestReport(total=len(task.metadata["tests"]), error="no ```python code block in the final reply")
        if len(solution) > self.max_solution_chars:
            return TestReport(total=len(task.metadata["tests"]),
                              error=f"the solution is longer than {self.max_solution_chars} characters")
        return self.run_tests(solution, task)

    def grade(self, final_reply: str, task: Task) -> float:
        return self.grade_reply(final_reply, task).reward(self.reward_mode)

    def reply_turn(self, reply: str) -> tuple[str, float, bool, dict[str, Any]]:
        try:
            report = self.grade_reply(reply, self.task)
        except Exception as exc:  # a broken task or grader ends this episode, not the run
            return "", 0.0, True, {"grader_error": f"{type(exc).__name__}: {exc}"}
        info: dict[str, Any] = {"tests_passed": report.passed, "tests_total": report.total}
        if report.error:
            info["grade_error"] = report.error
        return "", report.reward(self.reward_mode), True, info

    # ----- scripted policy ------------------------------------------------------------------
    def oracle_action(self) -> str:
        """Try the reference solution on the example with the tool, then submit it."""
        reference = self.task.answer
        if not reference:
            return "I do not have a solution for this task."
        example = self.task.metadata.get("example")
        if self.turn == 0 and example:
            call = example.split(" == ", 1)[0]
            code = f"{reference}\nprint(repr({call}))"
            return "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) + "</tool_call>"
        return f"Here is my solution.\n\n```python\n{reference.rstrip()}\n```"
