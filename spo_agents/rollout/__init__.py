"""Rollouts: episode data (token-exact turns, training view, JSONL logs) and the engine that
plays episodes in N independent slots (`RolloutEngine`, `RolloutConfig`, `RolloutMode`).

The engine is imported lazily from `spo_agents.rollout.engine` so that reading episode logs
does not import the backend protocol's users.
"""

from spo_agents.rollout.config import EnvExecutor, RolloutConfig, RolloutMode
from spo_agents.rollout.episode import (
    Episode,
    FinishReason,
    TrainingSample,
    Turn,
    append_episode_log,
    iter_episode_log,
    read_episode_log,
)

__all__ = [
    "EnvExecutor",
    "Episode",
    "FinishReason",
    "RolloutConfig",
    "RolloutMode",
    "TrainingSample",
    "Turn",
    "append_episode_log",
    "iter_episode_log",
    "read_episode_log",
]
