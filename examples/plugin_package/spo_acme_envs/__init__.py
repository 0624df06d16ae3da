"""An example third-party environment package (entry point `spo_agents.envs` -> register_envs)."""

import gymnasium

from spo_agents.env import Task, ToolEnv, extract_last_boxed


def shout(text: str) -> str:
    """Return the text in upper case.

    Args:
        text: Any text.
    """
    return text.upper()


def make_echo_env(**kwargs) -> ToolEnv:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    tasks = [Task(task_id=w, prompt=f"Write '{w}' in upper case.", answer=w.upper()) for w in words]
    return ToolEnv(
        {"train": tasks[:6], "heldout": tasks[6:]},
        tools=[shout],
        grader=lambda reply, task: float(extract_last_boxed(reply) == task.answer),
        max_turns=3,
        **kwargs,
    )


def register_envs() -> None:
    gymnasium.register(id="acme/Echo-v0", entry_point="spo_acme_envs:make_echo_env")
