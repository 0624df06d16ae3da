"""Built-in environment spo/MathVerify-v0 (see env.py)."""

from spo_env_mathverify.env import MathVerifyEnv, gsm8k_answer, math_reward
from spo_env_mathverify.problems import bundled_problems

__all__ = ["MathVerifyEnv", "bundled_problems", "gsm8k_answer", "math_reward"]
