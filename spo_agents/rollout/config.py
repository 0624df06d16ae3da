"""Configuration of the rollout engine (pydantic: field docs become `--help` text)."""

from __future__ import annotations

from enum import Enum

import pydantic

from spo_agents.rollout.executors import env_executor_names


class RolloutMode(str, Enum):
    STREAM = "stream"  # any finished episode is delivered at once (SPO)
    GROUP = "group"  # G episodes of one task are delivered together when all are done (GRPO, group-gated)
    BATCH = "batch"  # a whole batch is generated, delivered, and generation waits (GRPO, synchronous)


class EnvExecutor(str, Enum):
    """The executors built into the rollout layer; others register by name (`executors.py`)."""

    THREAD = "thread"  # env.reset/step in a thread pool: cheap, shares the process
    PROCESS = "process"  # each slot's env lives in its own process: isolates CPU-heavy or crashy envs


class RolloutConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    num_slots: int = pydantic.Field(8, ge=1, description="episodes generated concurrently (N)")
    mode: RolloutMode = pydantic.Field(RolloutMode.STREAM, description="stream | group | batch")
    group_size: int = pydantic.Field(8, ge=1, description="episodes per task in group and batch modes (G)")
    max_tokens_per_turn: int = pydantic.Field(512, ge=1, description="cap on sampled tokens in one turn")
    max_tokens_per_episode: int = pydantic.Field(4096, ge=1, description="cap on sampled tokens in one episode; "
                                                 "an episode over it ends truncated")
    max_context_tokens: int = pydantic.Field(8192, ge=16, description="cap on the full token sequence of an episode")
    episode_timeout_s: float = pydantic.Field(600.0, gt=0, description="wall-clock limit of one episode")
    env_step_timeout_s: float = pydantic.Field(120.0, gt=0, description="wall-clock limit of one env.reset/step")
    env_executor: str = pydantic.Field(EnvExecutor.THREAD.value, description="where env.step runs: thread | "
                                       "process | a registered executor (ray: Ray actors)")
    env_workers: int | None = pydantic.Field(None, description="threads for env calls (default: num_slots); with "
                                             "ray: env actors (default: min(num_slots, cluster CPUs))")
    temperature: float = pydantic.Field(1.0, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = pydantic.Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: int = pydantic.Field(0, ge=0, description="top-k sampling (0 = off)")
    max_pending_episodes: int = pydantic.Field(256, ge=1, description="finished episodes buffered for the consumer; "
                                               "slots wait when it is full (bounded memory)")
    max_unconsumed: int | None = pydantic.Field(None, ge=1, description="admission bound of the streaming modes: "
                                                "no new episode (or group) starts while this many started episodes "
                                                "have not been consumed by the learner (`acknowledge`); null = none")
    seed: int = pydantic.Field(0, description="seed for env resets")

    @pydantic.field_validator("env_executor", mode="before")
    @classmethod
    def _registered_executor(cls, value: object) -> str:
        name = value.value if isinstance(value, Enum) else value
        if name not in env_executor_names():
            raise ValueError(f"unknown env executor {name!r}; registered: {env_executor_names()}")
        return name
