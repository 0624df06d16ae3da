"""Env executors by name: where a slot's `env.reset` / `env.step` run.

Why a registry: the rollout engine must not know the executors that live in higher or optional
layers (Ray actors in the distributed package, a user's own cluster scheduler). An executor is a
factory `(engine, slot) -> runner`, where a runner has `async call(method, *args, **kwargs)` and
`close(abandoned=False)` (see `env_runner.py`). `thread` and `process` are registered here;
other packages register theirs by name, either as the factory itself or as a `"module:attribute"`
string that is imported on first use (so registering costs nothing and an optional dependency is
imported only by a run that uses it). `spo_agents/__init__.py`, the composition root, registers
`ray` that way. A factory can also be passed straight to `RolloutEngine(runner_factory=...)`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol

from spo_agents.rollout.env_runner import ProcessEnvRunner, ThreadEnvRunner

__all__ = ["EnvRunner", "RunnerFactory", "register_env_executor", "env_executor", "env_executor_names"]


class EnvRunner(Protocol):
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def close(self, abandoned: bool = False) -> None: ...


RunnerFactory = Callable[[Any, int], EnvRunner]  # (engine, slot) -> runner
_REGISTRY: dict[str, RunnerFactory | str] = {}


def register_env_executor(name: str, factory: RunnerFactory | str, *, replace: bool = False) -> None:
    """Make `name` usable as `RolloutConfig.env_executor`.

    `factory` is a callable `(engine, slot) -> runner` or a `"module:attribute"` string naming one.
    Registering a taken name raises unless `replace` (a plugin must not silently shadow another).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"an env executor name must be a non-empty string, got {name!r}")
    if isinstance(factory, str) and factory.count(":") != 1:
        raise ValueError(f"an env executor given by name must look like 'module:attribute', got {factory!r}")
    if not isinstance(factory, str) and not callable(factory):
        raise TypeError(f"an env executor must be callable (engine, slot) -> runner, got {factory!r}")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
        raise ValueError(f"env executor {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = factory


def env_executor_names() -> list[str]:
    return sorted(_REGISTRY)


def env_executor(name: str) -> RunnerFactory:
    """The factory registered as `name` (imported now if it was registered by module path)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown env executor {name!r}; registered: {env_executor_names()}") from None
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except ImportError as exc:  # an optional dependency: say which executor needs it
            raise ImportError(f"env executor {name!r} cannot be loaded from {module_name}: {exc}") from exc
        _REGISTRY[name] = factory
    return factory


def _thread_runner(engine: Any, slot: int) -> ThreadEnvRunner:
    return ThreadEnvRunner(engine.env_id, engine.env_kwargs, engine.thread_pool, engine.config.env_step_timeout_s)


def _process_runner(engine: Any, slot: int) -> ProcessEnvRunner:
    return ProcessEnvRunner(engine.env_id, engine.env_kwargs, engine.thread_pool, engine.config.env_step_timeout_s)


register_env_executor("thread", _thread_runner)
register_env_executor("process", _process_runner)
