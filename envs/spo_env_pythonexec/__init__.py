"""Built-in environment spo/PythonExec-v0 (see env.py), and the sandboxed `python` tool it shares.

`SandboxToolEnv` and `shared_pool` (spo_agents.env.sandbox_tool) are shared with spo/ToolMath-v0.
"""

from spo_env_pythonexec.env import PythonExecEnv
from spo_env_pythonexec.grading import extract_solution, values_match
from spo_env_pythonexec.loader import load_python_tasks
from spo_agents.env.sandbox_tool import SandboxToolEnv, close_shared_pools, shared_pool
from spo_env_pythonexec.tasks import generate_tasks

__all__ = ["PythonExecEnv", "SandboxToolEnv", "close_shared_pools", "extract_solution", "generate_tasks",
           "load_python_tasks", "shared_pool", "values_match"]
