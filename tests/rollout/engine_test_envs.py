"""Small environments for engine tests (importable by spawned env processes via PYTHONPATH)."""

import os
import time

import gymnasium

from spo_agents.env import Task, ToolEnv, extract_last_boxed


def nap(seconds: float) -> str:
    """Sleep, then say so.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return f"slept {seconds}"


def make_sleepy_env(**kwargs):
    """Task `t{k}` asks for a nap of k/10 s (via the tool); the answer is k."""
    tasks = [Task(task_id=f"t{k}", prompt=f"nap {k / 10} then report {k}", answer=str(k)) for k in range(50)]
    return ToolEnv(tasks, tools=[nap], grader=lambda reply, task: float(extract_last_boxed(reply) == task.answer),
                   max_turns=4, **kwargs)


class CrashyEnv(ToolEnv):
    """`boom` tasks raise from step, `exit` tasks kill the process, `hang` tasks block far past
    the step timeout."""

    def __init__(self, **kwargs):
        tasks = [Task(task_id=name, prompt=f"task {name}", answer="1") for name in ("ok", "boom", "exit", "hang")]
        super().__init__(tasks, grader=lambda reply, task: 1.0, **kwargs)

    def step(self, action):
        if self.task.task_id == "boom":
            raise RuntimeError("environment bug")
        if self.task.task_id == "exit":
            os._exit(3)
        if self.task.task_id == "hang":
            time.sleep(6)  # well past the engine's step timeout; finite so no thread outlives the tests
        return super().step(action)


class CycleTasks:
    """A task source cycling through ids; records releases (engine and Ray tests)."""

    def __init__(self, ids):
        self.ids, self.index, self.released = list(ids), 0, []

    def next_task(self):
        task_id = self.ids[self.index % len(self.ids)]
        self.index += 1
        return task_id

    def release(self, task_id):
        self.released.append(task_id)


gymnasium.register(id="test/Sleepy-v0", entry_point="engine_test_envs:make_sleepy_env")
gymnasium.register(id="test/Crashy-v0", entry_point="engine_test_envs:CrashyEnv")
