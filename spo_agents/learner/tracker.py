"""SPO's per-task value tracker: a Beta(alpha, beta) success estimate with forgetting.

SPO replaces GRPO's group baseline by a persistent estimate of each task's success
probability, kept across policy updates:

    v(x) = alpha / (alpha + beta),   N_eff(x) = alpha + beta
    binary r:      alpha <- rho * alpha + r,   beta <- rho * beta + (1 - r)
    r in [0, 1]:   v <- v + eta * (r - v),   eta = 1 / (rho * N_eff + 1),   N_eff <- rho * N_eff + 1

For binary rewards the two forms are the same update; the EMA form is what makes non-binary
rewards possible. The paper proposes it but did not test it, so treat non-binary SPO runs as
experimental. The tracker also loads the offline estimate table (n0 episodes per task from the
initial policy) and saves its state exactly (JSON-serialisable, floats round-trip bit-exact).

Left out on purpose: the forgetting factor rho is an argument here, computed by the caller from
the policy drift (see `drift.py`); sampling lives in `sampler.py`; the tracker never sees a model,
an environment or a token.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

TaskId = str
# (successes k, samples n0) per task; k may be a float sum when rewards are not binary.
ValueTable = dict[TaskId, tuple[float, int]]


@dataclass(frozen=True)
class TrackerUpdate:
    """What one `update` did, for metrics (calibration: v_before vs reward)."""

    task_id: TaskId
    reward: float
    rho: float
    v_before: float
    v_after: float
    n_eff_before: float
    n_eff_after: float


def init_alpha_beta(
    successes: float, samples: int, rho_min: float = 0.875, smoothed: bool = True
) -> tuple[float, float]:
    """Initial (alpha0, beta0) from k successes in n0 samples of the initial policy.

    N0 = 1 / (1 - rho_min) (8 at rho_min = 0.875): the offline estimate counts as much as the
    steady-state memory of the most forgetful tracker. v0 = (k + 0.5) / (n0 + 1) when smoothed
    (reference code), k / n0 otherwise (paper). A task with n0 = 0 has no estimate; the
    caller should leave it at the prior (see `ValueTracker.init_from_table`).
    """
    if samples <= 0:
        raise ValueError(f"need at least one sample to initialise a task, got n0={samples}")
    if not 0.0 <= successes <= samples:
        raise ValueError(f"successes must lie in [0, n0={samples}], got {successes}")
    n0_eff = 1.0 / (1.0 - rho_min)
    v0 = (successes + 0.5) / (samples + 1) if smoothed else successes / samples
    return n0_eff * v0, n0_eff * (1.0 - v0)


class ValueTracker:
    """Per-task Beta(alpha, beta) estimates of the success probability, with forgetting.

    Unseen tasks read as the prior (alpha = beta = 0.5 by default: v = 0.5, N_eff = 1) and are
    created on their first update. Task ids are strings (they are JSON keys in the state).
    """

    def __init__(self, prior_alpha: float = 0.5, prior_beta: float = 0.5):
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior alpha and beta must be positive")
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self._alpha: dict[TaskId, float] = {}
        self._beta: dict[TaskId, float] = {}
        self._visits: dict[TaskId, int] = {}

    # ---- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._alpha)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._alpha

    def task_ids(self) -> list[TaskId]:
        return list(self._alpha)

    def alpha_beta(self, task_id: TaskId) -> tuple[float, float]:
        return (
            self._alpha.get(task_id, self.prior_alpha),
            self._beta.get(task_id, self.prior_beta),
        )

    def value(self, task_id: TaskId) -> float:
        """v = alpha / (alpha + beta): the estimated success probability."""
        alpha, beta = self.alpha_beta(task_id)
        return alpha / (alpha + beta)

    def n_eff(self, task_id: TaskId) -> float:
        """N_eff = alpha + beta: the effective number of observations."""
        alpha, beta = self.alpha_beta(task_id)
        return alpha + beta

    def visits(self, task_id: TaskId) -> int:
        """How many rewards this task has absorbed (the offline init does not count)."""
        return self._visits.get(task_id, 0)

    def values(self, task_ids: Sequence[TaskId]) -> np.ndarray:
        """v for each task id, shape (len(task_ids),), float64."""
        return np.array([self.value(t) for t in task_ids], dtype=np.float64)

    def n_effs(self, task_ids: Sequence[TaskId]) -> np.ndarray:
        return np.array([self.n_eff(t) for t in task_ids], dtype=np.float64)

    def stats(self) -> dict[str, float]:
        """Summary for metrics over the tasks the tracker holds."""
        if not self._alpha:
            return {"tracker/num_tasks": 0.0}
        alpha = np.fromiter(self._alpha.values(), dtype=np.float64)
        beta = np.fromiter(self._beta.values(), dtype=np.float64)
        v = alpha / (alpha + beta)
        return {
            "tracker/num_tasks": float(len(alpha)),
            "tracker/v_mean": float(v.mean()),
            "tracker/n_eff_mean": float((alpha + beta).mean()),
            "tracker/uncertain_fraction": float(np.mean((v > 0.05) & (v < 0.95))),
        }

    # ---- writing -------------------------------------------------------------------------
    def update(self, task_id: TaskId, reward: float, rho: float) -> TrackerUpdate:
        """Absorb one reward with forgetting factor rho in (0, 1].

        Read `value(task_id)` for the advantage BEFORE calling this: the baseline must not
        depend on the episode's own reward.
        """
        _check_task_id(task_id)
        reward = float(reward)
        if not 0.0 <= reward <= 1.0 or math.isnan(reward):
            raise ValueError(f"SPO rewards must lie in [0, 1], got {reward} for task {task_id!r}")
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must lie in (0, 1], got {rho}")
        alpha, beta = self.alpha_beta(task_id)
        v_before, n_before = alpha / (alpha + beta), alpha + beta
        if reward in (0.0, 1.0):
            alpha, beta = rho * alpha + reward, rho * beta + (1.0 - reward)
        else:
            alpha, beta = _ema_update(v_before, n_before, reward, rho)
        self._alpha[task_id], self._beta[task_id] = alpha, beta
        self._visits[task_id] = self._visits.get(task_id, 0) + 1
        return TrackerUpdate(
            task_id=task_id,
            reward=reward,
            rho=float(rho),
            v_before=v_before,
            v_after=alpha / (alpha + beta),
            n_eff_before=n_before,
            n_eff_after=alpha + beta,
        )

    def set_alpha_beta(self, task_id: TaskId, alpha: float, beta: float) -> None:
        _check_task_id(task_id)
        # one of them may be 0: the paper's unsmoothed init gives v0 = 0 (or 1) for a task the
        # initial policy never (or always) solved; v and N_eff stay defined and updates work
        if alpha < 0 or beta < 0 or not alpha + beta > 0:
            raise ValueError(f"alpha and beta must be >= 0 with a positive sum, got {alpha}, {beta}")
        self._alpha[task_id], self._beta[task_id] = float(alpha), float(beta)

    def init_from_table(
        self,
        table: Mapping[TaskId, tuple[float, int]],
        rho_min: float = 0.875,
        smoothed: bool = True,
    ) -> int:
        """Set (alpha0, beta0) of every task in `table` from its (k, n0); returns tasks set.

        Tasks with n0 = 0 keep the prior (as the reference code does when n0 = 0).
        """
        count = 0
        for task_id, (successes, samples) in table.items():
            if samples <= 0:
                continue
            self.set_alpha_beta(task_id, *init_alpha_beta(successes, samples, rho_min, smoothed))
            count += 1
        return count

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain, JSON-serialisable state; `load_state_dict` restores it bit-exactly."""
        return {
            "prior_alpha": self.prior_alpha,
            "prior_beta": self.prior_beta,
            "tasks": {
                t: [self._alpha[t], self._beta[t], self._visits.get(t, 0)] for t in self._alpha
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.prior_alpha = float(state["prior_alpha"])
        self.prior_beta = float(state["prior_beta"])
        self._alpha, self._beta, self._visits = {}, {}, {}
        for task_id, (alpha, beta, visits) in state["tasks"].items():
            self._alpha[task_id], self._beta[task_id] = float(alpha), float(beta)
            if int(visits):
                self._visits[task_id] = int(visits)


def _ema_update(v: float, n_eff: float, reward: float, rho: float) -> tuple[float, float]:
    """EMA form for a reward in [0, 1]; returns the new (alpha, beta) = (v N, (1 - v) N)."""
    eta = 1.0 / (rho * n_eff + 1.0)
    v_new = v + eta * (reward - v)
    n_new = rho * n_eff + 1.0
    return v_new * n_new, (1.0 - v_new) * n_new


def _check_task_id(task_id: object) -> None:
    if not isinstance(task_id, str):
        raise TypeError(f"task ids are strings, got {type(task_id).__name__} {task_id!r}")


# ---- the offline estimate table (JSONL: {"task_id", "successes", "samples"} per line) ------


def read_value_table(path: str | os.PathLike) -> ValueTable:
    """Read the offline estimate table written by `spo-agents estimate-values`.

    A later line for the same task replaces an earlier one (a resumed run may re-estimate).
    A final line without a newline is ignored if it does not parse: the writer was killed
    mid-line, and the resumed run will estimate that task again.
    """
    table: ValueTable = {}
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # unterminated last line: a torn write
                break
            raise ValueError(f"{path}:{number}: not a JSON line: {line[:80]!r}") from None
        table[str(row["task_id"])] = (_number(row["successes"]), int(row["samples"]))
    return table


def write_value_table(
    path: str | os.PathLike, table: Mapping[TaskId, tuple[float, int]], append: bool = False
) -> None:
    """Write (or append) rows of the offline estimate table, one JSON object per line."""
    with open(path, "a" if append else "w", encoding="utf-8") as handle:
        for row in value_table_rows(table):
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def value_table_rows(table: Mapping[TaskId, tuple[float, int]]) -> Iterable[dict]:
    for task_id, (successes, samples) in table.items():
        yield {"task_id": task_id, "successes": _number(successes), "samples": int(samples)}


def _number(value: float) -> float | int:
    value = float(value)
    return int(value) if value.is_integer() else value
