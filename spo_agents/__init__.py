"""spo-agents: train tool-calling LLM agents with Single-stream Policy Optimization.

Importing the package registers the built-in environments (`spo/...`) and any third-party
environments advertised through the `spo_agents.envs` entry-point group, so
`gymnasium.make("spo/Calculator-v0")` works after `import spo_agents`, and
`gymnasium.make("spo_agents:spo/Calculator-v0")` works from a fresh interpreter.

It also registers the optional env executors by module path (imported only when a run uses
them), so the rollout layer never names a higher layer: `ray` -> spo_agents.distributed.
"""

from spo_agents.catalog import register_builtin_envs
from spo_agents.env.registry import load_plugins
from spo_agents.rollout.executors import register_env_executor

__version__ = "0.1.0"

register_builtin_envs()
load_plugins()
register_env_executor("ray", "spo_agents.distributed.env_pool:engine_runner")
