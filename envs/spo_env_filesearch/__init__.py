"""Built-in environment spo/FileSearch-v0 (see env.py)."""

from spo_env_filesearch.env import FileSearchEnv, exact_answer_reward
from spo_env_filesearch.tasks import FileSearchConfig, generate_tasks
from spo_env_filesearch.tree import VirtualTree
from spo_env_filesearch.world import build_files

__all__ = ["FileSearchConfig", "FileSearchEnv", "VirtualTree", "build_files", "exact_answer_reward", "generate_tasks"]
