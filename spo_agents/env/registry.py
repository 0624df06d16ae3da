"""Registration of environments: built-ins and third-party plugins.

Built-in environments are one flat list of `gymnasium.register` calls in
`spo_agents.catalog`. Third-party packages advertise environments through the entry-point
group `spo_agents.envs`: each entry point names a module (imported, so its top-level
`gymnasium.register` calls run) or a callable (called with no arguments). Importing
`spo_agents` loads both, so `gymnasium.make("spo/...")` finds them; a plugin that fails to
load is reported with a warning and skipped, it never breaks `import spo_agents`.
"""

from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points
from typing import Any

import gymnasium

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
