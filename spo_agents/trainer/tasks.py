"""Task sources for the rollout engine: SPO's prioritised sampler and a uniform one (GRPO)."""

from __future__ import annotations

import numpy as np

from spo_agents.learner import NoEligibleTaskError, TaskSampler


class PrioritisedTasks:
    """Adapts the learner's `TaskSampler` to the engine's `next_task`/`release` protocol."""

    def __init__(self, sampler: TaskSampler):
        self.sampler = sampler

    def next_task(self) -> str | None:
        try:
            return self.sampler.sample(1)[0]
        except NoEligibleTaskError:
            return None

    def release(self, task_id: str) -> None:
        self.sampler.release(task_id)


class UniformTasks:
    """Uniform sampling with replacement (GRPO's usual prompt sampler); seeded, resumable."""

    def __init__(self, task_ids: list[str], seed: int = 0):
        self.task_ids = list(task_ids)
        self.rng = np.random.default_rng(seed)

    def next_task(self) -> str | None:
        return self.task_ids[int(self.rng.integers(len(self.task_ids)))]

    def sample(self, n: int) -> list[str]:
        return [self.next_task() for _ in range(n)]

    def release(self, task_id: str) -> None:
        pass

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
