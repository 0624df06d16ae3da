"""The environment kit: everything needed to write a multi-turn tool-use environment.

Public API (built-in environments use nothing else from spo_agents.env):
- `TextEnv`, `ToolEnv`: Gymnasium environments with text actions and observations.
- `tool`, `Tool`, `ToolError`: typed Python functions as tools with JSON schemas.
- `parse_tool_calls`, `strip_tool_calls`: the `<tool_call>{...}</tool_call>` convention.
- `Task`, `TaskSet`, `split_tasks`, `load_tasks`, `load_hf_dataset`: task sources.
- `UnicodeText`: a space of any Unicode string (AsyncVectorEnv's shared memory included).
- `register_tool_env`: registration with the turn cap as `max_episode_steps`.
- `RewardFnEnv`, `load_reward_fn`: single-turn training on a dataset with a reward function
  `(prompt, completion, **row) -> float` (registered as `reward/RewardFn-v0`).
- `extract_last_boxed`: the final-answer convention (last box outside tool calls).
"""

from spo_agents.env.answers import extract_last_boxed
from spo_agents.env.base import DEFAULT_SYSTEM_PROMPT, TextEnv, ToolEnv, truncate_middle
from spo_agents.env.latency import LatencyWrapper
from spo_agents.env.parsing import ParsedAction, ToolCall, ToolCallError, parse_tool_calls, strip_tool_calls
from spo_agents.env.registry import ENTRY_POINT_GROUP, describe_env, load_plugins, register_tool_env, registered_ids
from spo_agents.env.reward_fn import RewardFnEnv, load_reward_fn
from spo_agents.env.spaces import UnicodeText
from spo_agents.env.tasks import Task, TaskSet, load_hf_dataset, load_tasks, split_tasks, stable_hash
from spo_agents.env.tools import Tool, ToolError, as_tool, tool

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "RewardFnEnv",
    "load_reward_fn",
    "ENTRY_POINT_GROUP",
    "LatencyWrapper",
    "ParsedAction",
    "Task",
    "TaskSet",
    "TextEnv",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolEnv",
    "ToolError",
    "UnicodeText",
    "as_tool",
    "describe_env",
    "extract_last_boxed",
    "load_hf_dataset",
    "load_plugins",
    "load_tasks",
    "parse_tool_calls",
    "register_tool_env",
    "registered_ids",
    "split_tasks",
    "stable_hash",
    "strip_tool_calls",
    "tool",
    "truncate_middle",
]
