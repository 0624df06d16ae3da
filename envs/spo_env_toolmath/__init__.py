"""Built-in environment spo/ToolMath-v0 (see env.py)."""

from spo_env_toolmath.env import ToolMathEnv, gsm8k_answer, load_math_tasks, math_reward
from spo_env_toolmath.problems import bundled_problems

__all__ = ["ToolMathEnv", "bundled_problems", "gsm8k_answer", "load_math_tasks", "math_reward"]
