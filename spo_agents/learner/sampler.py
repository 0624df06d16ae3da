"""Prioritised task sampling from the value tracker (SPO's adaptive curriculum).

    w(x) = sqrt(v(x) * (1 - v(x))) / N_eff(x) ** gamma + eps        eps 0.05, gamma 0

Tasks near v = 0.5 carry the most learning signal (the Bernoulli std is largest there); tasks
the policy always solves or always fails get only the exploration floor eps, which keeps every
task reachable so the tracker notices when they change. Sampling happens before generation, so
unlike DAPO's dynamic sampling nothing is generated and thrown away. Tasks the tracker has not
seen read as the prior (v = 0.5, N_eff = 1), so they are covered from the first draw.

In-flight limit: with streaming rollouts a task can be drawn again while an earlier episode of
it is still running. `max_in_flight_per_task = 1` (default) excludes such tasks until their
episode is released, which is the closest match to the paper's one episode per task per batch
(the reference code draws a batch without replacement from a candidate pool) and stops a few
high-weight tasks from filling every slot when the task set is small. `None` = unlimited: each
draw is i.i.d. proportional to w, and each arrival updates the tracker in arrival order.

Left out: which tasks exist (the caller passes the list), and when episodes finish (the caller
calls `release`). The sampler owns a numpy Generator whose state is saved for exact resume.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from spo_agents.learner.config import SamplerConfig
from spo_agents.learner.tracker import TaskId, ValueTracker


def priority_weights(
    values_N: np.ndarray, n_effs_N: np.ndarray, eps: float = 0.05, gamma: float = 0.0
) -> np.ndarray:
    """w = sqrt(v (1 - v)) / N_eff ** gamma + eps, elementwise; shape (N,)."""
    v_N = np.clip(np.asarray(values_N, dtype=np.float64), 0.0, 1.0)
    n_N = np.asarray(n_effs_N, dtype=np.float64)
    return np.sqrt(v_N * (1.0 - v_N)) / n_N**gamma + eps


class NoEligibleTaskError(RuntimeError):
    """Every task is at its in-flight limit; release episodes or raise the limit."""


class TaskSampler:
    """Draws task ids with probability proportional to the tracker's priority weights."""

    def __init__(
        self,
        task_ids: Sequence[TaskId],
        tracker: ValueTracker,
        eps: float = 0.05,
        gamma: float = 0.0,
        max_in_flight_per_task: int | None = 1,
        seed: int = 0,
        prioritized: bool = True,
    ):
        if not task_ids:
            raise ValueError("a sampler needs at least one task")
        if len(set(task_ids)) != len(task_ids):
            raise ValueError("duplicate task ids")
        if max_in_flight_per_task is not None and max_in_flight_per_task < 1:
            raise ValueError("max_in_flight_per_task must be >= 1 or None")
        if eps < 0 or gamma < 0:
            raise ValueError("eps and gamma must be non-negative")
        self.task_ids = list(task_ids)
        self.tracker = tracker
        self.eps = eps
        self.gamma = gamma
        self.max_in_flight_per_task = max_in_flight_per_task
        self.prioritized = prioritized
        self.rng = np.random.default_rng(seed)
        self._index = {task_id: i for i, task_id in enumerate(self.task_ids)}
        self._in_flight: Counter[TaskId] = Counter()

    @classmethod
    def from_config(
        cls, task_ids: Sequence[TaskId], tracker: ValueTracker, config: SamplerConfig
    ) -> "TaskSampler":
        return cls(
            task_ids, tracker, config.eps, config.gamma, config.max_in_flight_per_task, config.seed,
            config.prioritized,
        )

    # ---- weights -------------------------------------------------------------------------
    def weights(self) -> np.ndarray:
        """Priority weight of every task, in `task_ids` order; shape (N,) (all ones when the
        sampler is not prioritized)."""
        if not self.prioritized:
            return np.ones(len(self.task_ids))
        return priority_weights(
            self.tracker.values(self.task_ids),
            self.tracker.n_effs(self.task_ids),
            self.eps,
            self.gamma,
        )

    def probabilities(self) -> np.ndarray:
        """Probability of each task on a single draw with nothing in flight; shape (N,)."""
        weights_N = self.weights()
        return weights_N / weights_N.sum()

    # ---- in flight -----------------------------------------------------------------------
    def in_flight(self, task_id: TaskId) -> int:
        return self._in_flight[task_id]

    def num_in_flight(self) -> int:
        return sum(self._in_flight.values())

    def release(self, task_id: TaskId) -> None:
        """An episode of `task_id` finished (or was dropped): it no longer blocks the task."""
        if self._in_flight[task_id] <= 0:
            raise KeyError(f"task {task_id!r} has no episode in flight")
        self._in_flight[task_id] -= 1
        if not self._in_flight[task_id]:
            del self._in_flight[task_id]

    def release_all(self) -> None:
        """Forget every in-flight episode (after a resume that did not restore them)."""
        self._in_flight.clear()

    def num_eligible(self) -> int:
        """How many tasks a draw could pick now."""
        return int(self._eligible_mask().sum())

    def _eligible_mask(self) -> np.ndarray:
        eligible_N = np.ones(len(self.task_ids), dtype=bool)
        if self.max_in_flight_per_task is not None:
            for task_id, count in self._in_flight.items():
                if count >= self.max_in_flight_per_task and task_id in self._index:
                    eligible_N[self._index[task_id]] = False
        return eligible_N

    # ---- drawing -------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator | None = None) -> list[TaskId]:
        """Draw n task ids and mark each in flight (call `release` when its episode ends).

        Unlimited in-flight: n i.i.d. draws proportional to w. With a limit, draws are
        sequential and a task at its limit is skipped (limit 1: without replacement).
        Uses the sampler's own generator unless `rng` is given.
        """
        if n < 0:
            raise ValueError("n must be non-negative")
        rng = self.rng if rng is None else rng
        weights_N = self.weights()
        if self.max_in_flight_per_task is None:
            picks = _draw(weights_N, n, rng)
        else:
            picks = self._draw_limited(weights_N, n, rng, self.max_in_flight_per_task)
        chosen = [self.task_ids[i] for i in picks]
        self._in_flight.update(chosen)
        return chosen

    def _draw_limited(
        self, weights_N: np.ndarray, n: int, rng: np.random.Generator, limit: int
    ) -> list[int]:
        eligible_N = self._eligible_mask()
        running = {self._index[t]: c for t, c in self._in_flight.items() if t in self._index}
        pending: Counter[int] = Counter(running)
        picks: list[int] = []
        for _ in range(n):
            if not eligible_N.any():
                raise NoEligibleTaskError(
                    f"all {len(self.task_ids)} tasks have {limit} episode(s) "
                    "in flight; release episodes or raise max_in_flight_per_task"
                )
            index = _draw(np.where(eligible_N, weights_N, 0.0), 1, rng)[0]
            picks.append(index)
            pending[index] += 1
            if pending[index] >= limit:
                eligible_N[index] = False
        return picks

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable: generator state and in-flight counts (weights live in the tracker)."""
        return {
            "rng": self.rng.bit_generator.state,
            "in_flight": dict(self._in_flight),
        }

    def load_state_dict(self, state: Mapping) -> None:
        bit_generator = getattr(np.random, state["rng"]["bit_generator"])()
        bit_generator.state = state["rng"]
        self.rng = np.random.Generator(bit_generator)
        self._in_flight = Counter({str(t): int(c) for t, c in state["in_flight"].items()})


def _draw(weights_N: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """n i.i.d. indices with probability proportional to weights_N (inverse-CDF, exact resume)."""
    cumulative_N = np.cumsum(weights_N)
    total = cumulative_N[-1]
    if not total > 0:
        raise ValueError("all sampling weights are zero; use eps > 0")
    uniforms_n = rng.random(n) * total
    indices = np.searchsorted(cumulative_N, uniforms_n, side="right")
    return np.minimum(indices, len(weights_N) - 1).tolist()
