"""Episode-length statistics of an environment under its scripted oracle policy.

Why: the long-horizon environments are built so that episode lengths vary by one or two
orders of magnitude from task to task; `spo-agents envs show ID --stats` shows that
distribution (turns and tokens per episode) before any model is involved, which is also the
shape of the workload such an environment puts on the rollout engine.

Tokens are approximate and tokenizer-free: ceil(characters / 4) of the text, counted for the
assistant's turns (what a policy would generate) and for the whole episode (system prompt,
prompt, every turn and observation: roughly the final context length, without the tool
schemas a chat template would add). Tasks are sampled
without replacement from the chosen split with a seeded generator, so the numbers are
reproducible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium
import numpy as np

PERCENTILES = (("min", 0), ("p10", 10), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
CHARS_PER_TOKEN = 4


def approx_tokens(text: str) -> int:
    """ceil(len(text) / 4): the usual rule of thumb for English text and code."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class EpisodeStats:
    task_id: str
    turns: int
    assistant_tokens: int
    episode_tokens: int
    reward: float
    truncated: bool


def play_oracle(env: gymnasium.Env, task_id: str) -> EpisodeStats:
    """One episode of `task_id` played by `env.unwrapped.oracle_action()`."""
    base = env.unwrapped
    env.reset(options={"task_id": task_id})
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, _ = env.step(base.oracle_action())
        total += float(reward)
    transcript = list(base.transcript)
    return EpisodeStats(
        task_id=task_id,
        turns=sum(1 for role, _ in transcript if role == "assistant"),
        assistant_tokens=sum(approx_tokens(text) for role, text in transcript if role == "assistant"),
        episode_tokens=sum(approx_tokens(text) for _, text in transcript),
        reward=total,
        truncated=bool(truncated),
    )


def sample_oracle_episodes(env_id: str, samples: int = 200, seed: int = 0, split: str = "train",
                           **env_kwargs: Any) -> list[EpisodeStats]:
    """Oracle episodes of `samples` distinct tasks of `split` (all of them if fewer)."""
    env = gymnasium.make(env_id, split=split, **env_kwargs)
    try:
        base = env.unwrapped
        if not hasattr(base, "oracle_action"):
            raise TypeError(f"{env_id} has no scripted oracle_action()")
        ids = list(base.tasks.ids)
        order = np.random.default_rng(seed).permutation(len(ids))[: max(samples, 0)]
        return [play_oracle(env, ids[int(i)]) for i in order]
    finally:
        env.close()


def summarize(values: Sequence[float]) -> dict[str, float]:
    """min, p10, p50, p90, p99, max (percentiles by linear interpolation) and mean."""
    if not values:
        return {name: 0.0 for name, _ in PERCENTILES} | {"mean": 0.0}
    array = np.asarray(values, dtype=float)
    summary = {name: round(float(np.percentile(array, q)), 3) for name, q in PERCENTILES}
    summary["mean"] = round(float(array.mean()), 3)
    return summary


def histogram(values: Sequence[int], width: int = 40) -> list[str]:
    """A text histogram with power-of-two bins (..., 2-3, 4-7, 8-15, ...), suited to heavy tails."""
    if not values:
        return []
    top, smallest = max(int(v) for v in values), max(min(int(v) for v in values), 1)
    edges = [1 << (smallest.bit_length() - 1)]  # the largest power of two <= the smallest value
    while edges[-1] <= top:
        edges.append(edges[-1] * 2)
    below = sum(1 for v in values if v < 1)
    rows = [("0", below)] if below else []
    for low, high in zip(edges, edges[1:]):
        rows.append((f"{low}" if high - low == 1 else f"{low}-{high - 1}", sum(1 for v in values if low <= v < high)))
    peak = max(count for _, count in rows) or 1
    label_width = max(len(label) for label, _ in rows)
    return [f"{label:>{label_width}} | {'#' * math.ceil(width * count / peak) if count else '':<{width}} {count}"
            for label, count in rows]


def stats_report(env_id: str, episodes: Sequence[EpisodeStats]) -> dict[str, Any]:
    """The machine-readable summary (the JSON line printed last)."""
    return {
        "env_id": env_id,
        "episodes": len(episodes),
        "mean_reward": round(float(np.mean([e.reward for e in episodes])), 4) if episodes else 0.0,
        "truncated": sum(e.truncated for e in episodes),
        "turns": summarize([e.turns for e in episodes]),
        "assistant_tokens": summarize([e.assistant_tokens for e in episodes]),
        "episode_tokens": summarize([e.episode_tokens for e in episodes]),
        "token_estimate": f"ceil(characters / {CHARS_PER_TOKEN})",
    }


def format_report(report: dict[str, Any], turns: Sequence[int]) -> str:
    """A readable table and a histogram of turns, then one JSON line last."""
    columns = [name for name, _ in PERCENTILES] + ["mean"]
    lines = [
        f"{report['env_id']}: {report['episodes']} oracle episodes, mean reward {report['mean_reward']:.3f}, "
        f"{report['truncated']} truncated; tokens = {report['token_estimate']}",
        "",
        f"{'per episode':<18}" + "".join(f"{name:>10}" for name in columns),
    ]
    for key in ("turns", "assistant_tokens", "episode_tokens"):
        lines.append(f"{key.replace('_', ' '):<18}" + "".join(f"{report[key][name]:>10.1f}" for name in columns))
    lines += ["", "turns per episode:"] + histogram(turns) + ["", json.dumps(report, sort_keys=True)]
    return "\n".join(lines)
