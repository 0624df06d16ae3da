"""The final-answer convention of the built-in environments.

The reward grades the last `\\boxed{...}` of the final reply, ignoring boxes inside tool-call
blocks (an answer written into a tool call or copied from tool output does not count).
"""

from __future__ import annotations

from spo_agents.env.parsing import strip_tool_calls
from spo_agents.grading import extract_boxed


def extract_last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{}` outside tool-call blocks, or None."""
    return extract_boxed(strip_tool_calls(text))
