"""Injected tool latency: a wrapper that makes any environment's `step` take a random time.

Why: the throughput gain of streaming (SPO) over grouped or synchronous rollouts (GRPO) comes
from heavy-tailed episode durations, and real agent tools (web search, sandboxes, remote
graders) have heavy-tailed latency that the built-in environments, running in-process in
microseconds, do not. `LatencyWrapper` restores it for benchmarks and load tests: before each
`step` it sleeps a time drawn from a configurable distribution (log-normal by median and sigma,
Pareto, constant or empirical; the specs of `spo_agents.distributions.parse_distribution`).

Reproducibility: the delay of turn t of an episode depends only on (wrapper seed, the seed the
episode was reset with, t). The rollout engine resets episode k (in start order) with seed
`rollout.seed + k`, so every method that starts k episodes sees the same k delays, whatever
task, slot or group each episode belongs to. The delay is deliberately not keyed on the task
id: a GRPO group replays one task G times, and identical delays within a group would remove
the very variance the benchmark measures. A reset without a seed draws a fresh episode key
from the wrapper's own generator (seeded, so still reproducible for one env instance).

The rollout engine makes environments by id (`gymnasium.make(env_id, **env_kwargs)`), and a
wrapper cannot be requested through an env's kwargs. So the wrapped environment is itself
registered, as `LATENCY_ENV_ID` ("spo-wrappers/WithLatency-v0", outside the `spo/` namespace
so that environment listings and per-environment tests do not pick it up), with the inner
environment named in its kwargs:

    gymnasium.make("spo-wrappers/WithLatency-v0", inner_env_id="spo/Calculator-v0",
                   latency="lognormal:median=0.2,sigma=1.5", latency_seed=0, split="train")

and in a training config: `env_id: spo-wrappers/WithLatency-v0` with
`env_kwargs: {inner_env_id: spo/Calculator-v0, latency: "pareto:alpha=1.5,scale=0.1"}`.

Delays never go into `info` (wall-clock data there would break `check_env`'s determinism
check); the engine measures `env_seconds` itself, and the wrapper keeps `last_latency_s` and
`injected_seconds` as attributes. Every `step` is delayed, tool call or final answer alike (a
remote grader is as slow as a tool); `reset` is not.

Left out: latency that depends on the action or the tool called, correlated delays (a slow
backend staying slow), and failures (timeouts, errors) of the simulated tool.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import gymnasium
import numpy as np

from spo_agents.distributions import Distribution, parse_distribution

LATENCY_ENV_ID = "spo-wrappers/WithLatency-v0"
DEFAULT_LATENCY = "lognormal:median=0.2,sigma=1.0"
_KEY_MASK = (1 << 63) - 1


class LatencyWrapper(gymnasium.Wrapper):
    """Sleeps a seeded, heavy-tailed random time before each `step` of the wrapped env.

    Args:
        env: any gymnasium environment.
        distribution: a spec (`lognormal:median=0.2,sigma=1`, `pareto:alpha=1.5,scale=0.1`,
            `constant:0.5`, `empirical:0.1,0.2,3`) or an object with `sample(rng, size)`.
        seed: the wrapper's seed; with the episode's reset seed and the turn it fixes each delay.
        max_seconds: cap on one delay (keeps a Pareto tail below the engine's step timeout).
        sleep: the sleeping function (tests pass a recorder instead of `time.sleep`).
    """

    def __init__(self, env: gymnasium.Env, distribution: str | Distribution = DEFAULT_LATENCY, seed: int = 0,
                 max_seconds: float | None = None, sleep: Callable[[float], None] = time.sleep):
        super().__init__(env)
        self.distribution = parse_distribution(distribution) if isinstance(distribution, str) else distribution
        if max_seconds is not None and max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0, got {max_seconds}")
        self.seed, self.max_seconds, self._sleep = int(seed), max_seconds, sleep
        self._keys = np.random.default_rng([self.seed & _KEY_MASK, 0x1A7E])
        self._episode_key: int | None = None
        self._turn = 0
        self.last_latency_s = 0.0
        self.injected_seconds = 0.0

    def latency(self, episode_key: int, turn: int) -> float:
        """The delay of `turn` (0-based) of the episode reset with seed `episode_key`."""
        rng = np.random.default_rng([self.seed & _KEY_MASK, int(episode_key) & _KEY_MASK, int(turn)])
        value = max(float(self.distribution.sample(rng, 1)[0]), 0.0)
        return value if self.max_seconds is None else min(value, self.max_seconds)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._episode_key = int(seed) if seed is not None else int(self._keys.integers(_KEY_MASK))
        self._turn = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._episode_key is None:  # let the inner env report the missing reset
            return self.env.step(action)
        delay = self.latency(self._episode_key, self._turn)
        self._turn += 1
        self.last_latency_s = delay
        self.injected_seconds += delay
        if delay > 0:
            self._sleep(delay)
        return self.env.step(action)


def make_with_latency(inner_env_id: str, latency: str = DEFAULT_LATENCY, latency_seed: int = 0,
                      max_latency_s: float | None = None, **env_kwargs: Any) -> LatencyWrapper:
    """Entry point of `LATENCY_ENV_ID`: make `inner_env_id` with `env_kwargs`, then wrap it."""
    if inner_env_id == LATENCY_ENV_ID:
        raise ValueError("inner_env_id must name the environment to wrap, not the wrapper itself")
    inner = gymnasium.make(inner_env_id, **env_kwargs)
    return LatencyWrapper(inner, latency, seed=latency_seed, max_seconds=max_latency_s)


def register_latency_env() -> None:
    """Register `LATENCY_ENV_ID` (idempotent; run when `spo_agents.env` is imported)."""
    if LATENCY_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=LATENCY_ENV_ID, entry_point=make_with_latency)


register_latency_env()
