"""spo-agents: train tool-calling LLM agents with Single-stream Policy Optimization.

Importing the package registers the built-in environments (`spo/...`) and any third-party
environments advertised through the `spo_agents.envs` entry-point group, so
`gymnasium.make("spo/Calculator-v0")` works after `import spo_agents`, and
`gymnasium.make("spo_agents:spo/Calculator-v0")` works from a fresh interpreter.
"""

from spo_agents.catalog import register_builtin_envs
from spo_agents.env.registry import load_plugins

__version__ = "0.1.0"

register_builtin_envs()
load_plugins()
