"""Registration of environments: built-ins and third-party plugins.

Built-in environments are one flat list of `register_tool_env` calls in
`spo_agents.catalog`. Third-party packages advertise environments through the entry-point
group `spo_agents.envs`: each entry point names a module (imported, so its top-level
`gymnasium.register` calls run) or a callable (called with no arguments). Importing
`spo_agents` loads both, so `gymnasium.make("spo/...")` finds them; a plugin that fails to
load is reported with a warning and skipped, it never breaks `import spo_agents`.

`register_tool_env` registers a `ToolEnv` with its turn cap as the spec's `max_episode_steps`
(what RL libraries read to size episodes), plus the `TurnLimit` wrapper that keeps gymnasium's
TimeLimit (which `gymnasium.make` then adds) and the environment's own cap one and the same.
"""

from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points
from typing import Any

import gymnasium
from gymnasium.envs.registration import WrapperSpec
from gymnasium.wrappers import TimeLimit

ENTRY_POINT_GROUP = "spo_agents.envs"
NAMESPACE = "spo"


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load every entry point of `group`; return the names that loaded."""
    loaded = []
    for entry in entry_points(group=group):
        try:
            target = entry.load()
            if callable(target) and not inspect.ismodule(target):
                target()
            loaded.append(entry.name)
        except Exception as exc:  # a broken plugin must not break the framework
            warnings.warn(f"spo-agents: environment plugin {entry.name!r} failed to load: {exc!r}", stacklevel=2)
    return loaded


def registered_ids(namespace: str | None = NAMESPACE) -> list[str]:
    """Ids of registered environments, optionally only those of one namespace."""
    ids = [env_id for env_id, spec in gymnasium.registry.items() if namespace is None or spec.namespace == namespace]
    return sorted(ids)


def describe_env(env_id: str) -> dict[str, Any]:
    """One-line description, tools and task counts of a registered environment."""
    env = gymnasium.make(env_id)
    try:
        base = env.unwrapped
        doc = inspect.getdoc(type(base)) or ""
        summary: dict[str, Any] = {"id": env_id, "description": doc.splitlines()[0] if doc else ""}
        describe = getattr(base, "describe", None)
        summary.update(describe() if callable(describe) else {"tools": [], "splits": {}})
        return summary
    finally:
        env.close()


class TurnLimit(gymnasium.Wrapper, gymnasium.utils.RecordConstructorArgs):
    """One turn cap for gymnasium's TimeLimit and a ToolEnv's own `max_turns`.

    gymnasium's TimeLimit sets `truncated=True` at its step count even when the episode
    terminated on that step: a final reply in the last allowed turn, and every step of a
    single-turn environment, would end with both flags. Applied just outside the TimeLimit
    (see `register_tool_env`), this wrapper
    - makes one cap of the two: `make(ID, max_episode_steps=N)` sets the environment's
      `max_turns` to N; otherwise the TimeLimit is rebuilt at the environment's `max_turns`
      (so `make(ID, max_turns=N)` moves both, and `env.spec.max_episode_steps` is the cap
      in force); different values for both are an error;
    - passes on how the environment ended the episode: `terminated` after a final reply,
      `truncated` at the cap without one, never both.
    """

    def __init__(self, env: gymnasium.Env):
        gymnasium.utils.RecordConstructorArgs.__init__(self)
        if isinstance(env, TimeLimit) and hasattr(env.unwrapped, "max_turns"):
            env = TimeLimit(env.env, _agreed_cap(env, env.unwrapped))
        gymnasium.Wrapper.__init__(self, env)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated, truncated and not terminated, info


def _agreed_cap(limit: TimeLimit, base: Any) -> int:
    """The one turn cap of a TimeLimit and the ToolEnv below it; sets the env's `max_turns`."""
    asked_steps = limit.spec.max_episode_steps if limit.spec is not None else None
    env_id = base.spec.id if base.spec is not None else None
    registered = gymnasium.registry[env_id].max_episode_steps if env_id in gymnasium.registry else None
    if asked_steps is None or asked_steps == registered:  # the default: the environment's own cap rules
        return int(base.max_turns)
    asked_turns = (base.spec.kwargs or {}).get("max_turns") if base.spec is not None else None
    if asked_turns is not None and asked_turns != asked_steps:
        raise ValueError(f"{env_id}: max_turns={asked_turns} and max_episode_steps={asked_steps} disagree; "
                         "they are the same turn cap, give one of them")
    base.max_turns = int(asked_steps)
    return int(asked_steps)


def register_tool_env(env_id: str, entry_point: str, max_turns: int, **kwargs: Any) -> None:
    """`gymnasium.register` for a ToolEnv whose default turn cap is `max_turns` (see TurnLimit)."""
    gymnasium.register(
        id=env_id,
        entry_point=entry_point,
        max_episode_steps=max_turns,
        additional_wrappers=(WrapperSpec("TurnLimit", f"{__name__}:TurnLimit", {}),),
        **kwargs,
    )
