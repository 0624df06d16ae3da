"""Built-in environment spo/ChainCalc-v0 (see env.py)."""

from spo_env_chaincalc.env import ChainCalcEnv, calculator, reported_value
from spo_env_chaincalc.tasks import ChainConfig, chain_values, generate_tasks

__all__ = ["ChainCalcEnv", "ChainConfig", "calculator", "chain_values", "generate_tasks", "reported_value"]
