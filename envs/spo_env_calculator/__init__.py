"""Built-in environment spo/Calculator-v0 (see env.py)."""

from spo_env_calculator.env import CalculatorEnv, calculator, exact_integer_reward
from spo_env_calculator.tasks import generate_tasks

__all__ = ["CalculatorEnv", "calculator", "exact_integer_reward", "generate_tasks"]
