"""A benchmark environment whose tool costs a fixed amount of CPU work (or a fixed sleep).

Why its own env: to measure how environment throughput scales with env actors, the tool must
cost the same *work* however contended the machine is. A tool that spins until a wall-clock
deadline would look perfectly parallel on any number of cores; this one runs a fixed number of
pure-Python loop iterations (holding the GIL, like a grader or a Python tool in-process), so
two of them in one process take twice as long and two in two processes take as long as one
only when two cores are free. `mode="sleep"` instead waits (like a remote API or a sandbox
round trip), which needs no cores at all.

Task `b{k}` asks for the product of two numbers; the tool `busy_multiply(a, b)` does the work
and returns a*b; the reward is 1 for the boxed product. Made by
`gymnasium.make("spo_agents.distributed.bench_env:spo-bench/Busy-v0", work_units=..., mode=...)`,
which imports this module in whichever process (or Ray actor) makes it.
"""

from __future__ import annotations

import random
import re
import time

import gymnasium

from spo_agents.env import Task, ToolEnv, extract_last_boxed

ENV_ID = "spo_agents.distributed.bench_env:spo-bench/Busy-v0"
_INTEGER = re.compile(r"\d+")


def spin(work_units: int) -> int:
    """A fixed amount of pure-Python work (GIL held throughout)."""
    total = 0
    for i in range(work_units):
        total += i * i % 7
    return total


def calibrate(milliseconds: float, probe_units: int = 200_000) -> int:
    """Loop iterations that cost about `milliseconds` of CPU time on this machine.

    Measured in thread CPU time, not wall time, so other jobs on shared cores do not shrink it.
    """
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        spin(probe_units)
        best = min(best, time.thread_time() - started)
    return max(1, int(probe_units * milliseconds / 1000 / max(best, 1e-6)))


def make_busy_env(work_units: int = 100_000, mode: str = "cpu", sleep_s: float = 0.02, num_tasks: int = 64,
                  seed: int = 0, **kwargs) -> ToolEnv:
    if mode not in ("cpu", "sleep"):
        raise ValueError(f"mode must be 'cpu' or 'sleep', got {mode!r}")

    def busy_multiply(a: int, b: int) -> str:
        """Multiply two integers (slowly, on purpose).

        Args:
            a: The first factor.
            b: The second factor.
        """
        if mode == "cpu":
            spin(work_units)
        else:
            time.sleep(sleep_s)
        return str(a * b)

    rng = random.Random(seed)
    tasks = []
    for k in range(num_tasks):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        tasks.append(Task(task_id=f"b{k}", prompt=f"Compute {a} * {b} with the tool.", answer=str(a * b)))
    return ToolEnv(tasks, tools=[busy_multiply],
                   grader=lambda reply, task: float(extract_last_boxed(reply) == task.answer), max_turns=3, **kwargs)


def busy_policy(turns: list[tuple[str, str]]) -> str:
    """Call the tool with the question's two numbers, then box what it returned."""
    role, content = turns[-1]
    if role == "tool" or content.startswith("<tool_response>"):
        value = content.replace("<tool_response>", "").replace("</tool_response>", "").strip()
        return f"The product is \\boxed{{{value}}}."
    a, b = (_INTEGER.findall(content) + ["0", "0"])[:2]
    return f'<tool_call>{{"name": "busy_multiply", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call>'


gymnasium.register(id="spo-bench/Busy-v0", entry_point=make_busy_env)
