"""The trainer: wires sampler, rollout engine, learner, backend, checkpoints and metrics.

Public API: `train(config)` and `evaluate(model, env_id, ...)` (trainer/api.py), what the CLI runs.
"""

from spo_agents.trainer.config import Algo, GRPOMode, SPOUpdate, TrainConfig, load_config
from spo_agents.trainer.api import SetupError, evaluate, train  # noqa: E402  (after config: api imports the runtime)

__all__ = ["Algo", "GRPOMode", "SPOUpdate", "SetupError", "TrainConfig", "evaluate", "load_config", "train"]
