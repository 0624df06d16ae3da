"""Evaluation on held-out tasks: pass@k (unbiased), maj@k and avg@k.

pass@k uses the unbiased estimator of Chen et al. (2021): with n samples of which c are
correct, pass@k = 1 - C(n-c, k) / C(n, k). maj@k takes the most frequent final answer (the
last boxed answer of the final reply) among the first k samples and scores it by the reward
of a sample that gave it. avg@k is the mean reward of the first k samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import comb
from typing import Any, Sequence

import numpy as np

from spo_agents.backends.base import Backend, FinishReason
from spo_agents.grading import extract_boxed, strip_tool_calls
from spo_agents.rollout.config import RolloutConfig, RolloutMode
from spo_agents.rollout.engine import Formatter, RolloutEngine
from spo_agents.rollout.episode import Episode


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct."""
    if k > n:
        raise ValueError(f"k ({k}) must not exceed n ({n})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def final_answer(episode: Episode) -> str | None:
    if not episode.turns:
        return None
    return extract_boxed(strip_tool_calls(episode.turns[-1].completion_text))


def maj_at_k(episodes: Sequence[Episode], k: int) -> float:
    first = list(episodes)[:k]
    answers = [(final_answer(e), e.reward) for e in first if final_answer(e) is not None]
    if not answers:
        return 0.0
    top, _ = Counter(a for a, _ in answers).most_common(1)[0]
    return max(r for a, r in answers if a == top)


@dataclass
class EvalResult:
    num_tasks: int
    samples_per_task: int
    metrics: dict[str, float] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)


def score(episodes: list[Episode], ks: Sequence[int]) -> dict[str, float]:
    by_task: dict[str, list[Episode]] = {}
    for episode in episodes:
        by_task.setdefault(episode.task_id, []).append(episode)
    metrics: dict[str, float] = {}
    n = min(len(v) for v in by_task.values())
    for k in [k for k in ks if k <= n]:
        correct = [sum(e.reward >= 1.0 for e in group) for group in by_task.values()]
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(len(g), c, k) for g, c in zip(by_task.values(), correct)]))
        metrics[f"maj@{k}"] = float(np.mean([maj_at_k(g, k) for g in by_task.values()]))
        metrics[f"avg@{k}"] = float(np.mean([np.mean([e.reward for e in g[:k]]) for g in by_task.values()]))
    rewards = [e.reward for e in episodes]
    metrics["accuracy"] = float(np.mean([r >= 1.0 for r in rewards]))
    metrics["reward"] = float(np.mean(rewards))
    metrics["turns/mean"] = float(np.mean([len(e.turns) for e in episodes]))
    metrics["tool_calls/mean"] = float(np.mean([sum(t.finish_reason is FinishReason.TOOL_CALL for t in e.turns)
                                                for e in episodes]))
    metrics["errors"] = float(sum(e.error is not None for e in episodes))
    return metrics


async def evaluate(backend: Backend, formatter: Formatter, env_id: str, env_kwargs: dict[str, Any],
                   task_ids: list[str], samples_per_task: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                   num_slots: int = 16, rollout: RolloutConfig | None = None,
                   ks: Sequence[int] = (1, 4, 8, 16, 32)) -> EvalResult:
    """Play `samples_per_task` episodes of each task and score them."""
    base = rollout.model_dump() if rollout else {}
    base.update(mode=RolloutMode.BATCH, group_size=samples_per_task, num_slots=num_slots, temperature=temperature,
                top_p=top_p)
    engine = RolloutEngine(env_id, backend, formatter, RolloutConfig(**base), env_kwargs=env_kwargs)
    try:
        episodes = await engine.collect_batch(task_ids)
    finally:
        engine.close()
    metrics = score(episodes, ks)
    return EvalResult(len(task_ids), samples_per_task, metrics, episodes)
