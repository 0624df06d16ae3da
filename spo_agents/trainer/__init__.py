"""The trainer: wires sampler, rollout engine, learner, backend, checkpoints and metrics."""

from spo_agents.trainer.config import Algo, GRPOMode, SPOUpdate, TrainConfig, load_config

__all__ = ["Algo", "GRPOMode", "SPOUpdate", "TrainConfig", "load_config"]
