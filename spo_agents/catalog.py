"""The catalogue of built-in environments: one flat list of registrations.

Entry points are strings, so registering imports nothing; an environment's module is imported
only when it is made. The environments live in the top-level `envs/` folder as packages named
`spo_env_*` (see docs/architecture.md for why).
"""

from gymnasium.envs.registration import register, registry


def register_builtin_envs() -> None:
    if "spo/Calculator-v0" in registry:
        return
    register(id="spo/Calculator-v0", entry_point="spo_env_calculator:CalculatorEnv")
    register(id="spo/MathVerify-v0", entry_point="spo_env_mathverify:MathVerifyEnv")
    register(id="spo/PythonExec-v0", entry_point="spo_env_pythonexec:PythonExecEnv")
    register(id="spo/ToolMath-v0", entry_point="spo_env_toolmath:ToolMathEnv")
    register(id="spo/FileSearch-v0", entry_point="spo_env_filesearch:FileSearchEnv")
    register(id="spo/ChainCalc-v0", entry_point="spo_env_chaincalc:ChainCalcEnv")
