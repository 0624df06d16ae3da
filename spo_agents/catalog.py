"""The catalogue of built-in environments: one flat list of registrations.

Entry points are strings, so registering imports no environment; an environment's module is
imported only when it is made. Each registration states the environment's default turn cap,
which tests/env/test_env_contract.py checks against the environment itself. The environments
live in the top-level `envs/` folder as packages named `spo_env_*` (see docs/architecture.md
for why).
"""

from gymnasium.envs.registration import registry

from spo_agents.env.registry import register_tool_env


def register_builtin_envs() -> None:
    """Register the built-in environments, each with its default turn cap (`max_episode_steps`)."""
    if "spo/Calculator-v0" in registry:
        return
    register_tool_env("spo/Calculator-v0", "spo_env_calculator:CalculatorEnv", max_turns=6)
    register_tool_env("spo/MathVerify-v0", "spo_env_mathverify:MathVerifyEnv", max_turns=1)
    register_tool_env("spo/PythonExec-v0", "spo_env_pythonexec:PythonExecEnv", max_turns=8)
    register_tool_env("spo/ToolMath-v0", "spo_env_toolmath:ToolMathEnv", max_turns=9)
    register_tool_env("spo/FileSearch-v0", "spo_env_filesearch:FileSearchEnv", max_turns=64)
    register_tool_env("spo/ChainCalc-v0", "spo_env_chaincalc:ChainCalcEnv", max_turns=3 * 64 + 8)
    # a dataset of prompts and a reward function (env kwargs `dataset`, `reward`); not under spo/,
    # whose environments all run without arguments; single-turn
    register_tool_env("reward/RewardFn-v0", "spo_agents.env.reward_fn:RewardFnEnv", max_turns=1)
