"""Way 2 of adding an environment: compose typed tool functions, tasks and a grader.

No subclass: `ToolEnv(tasks, tools=[plain functions], grader=...)` behind a factory that
`gymnasium.register` calls. Plain typed functions become tools (schema from type hints and
the docstring, arguments validated by pydantic). Run this file to play one episode.
"""

import gymnasium

from spo_agents.env import Task, ToolEnv, extract_last_boxed


def convert_units(value: float, unit_from: str, unit_to: str) -> str:
    """Convert a length between km, m and cm.

    Args:
        value: The quantity to convert.
        unit_from: One of km, m, cm.
        unit_to: One of km, m, cm.
    """
    scale = {"km": 1000.0, "m": 1.0, "cm": 0.01}
    if unit_from not in scale or unit_to not in scale:
        raise ValueError(f"units must be among {sorted(scale)}")
    return f"{value * scale[unit_from] / scale[unit_to]:g}"


def numeric_reward(final_reply: str, task: Task) -> float:
    answer = extract_last_boxed(final_reply)
    try:
        return float(abs(float(answer) - float(task.answer)) < 1e-9)
    except (TypeError, ValueError):
        return 0.0


def make_unit_env(**kwargs) -> ToolEnv:
    tasks = [
        Task(task_id=f"conv-{km}", prompt=f"How many centimetres are {km} kilometres?", answer=f"{km * 100000:g}")
        for km in range(1, 40)
    ]
    return ToolEnv({"train": tasks[:30], "heldout": tasks[30:]}, tools=[convert_units], grader=numeric_reward,
                   max_turns=3, **kwargs)


gymnasium.register(id="examples/UnitConversion-v0", entry_point=make_unit_env)

if __name__ == "__main__":
    env = gymnasium.make("examples/UnitConversion-v0")
    observation, info = env.reset(seed=0)
    print(observation, "| tools:", [t["function"]["name"] for t in info["tools"]])
    km = info["task_id"].split("-")[1]
    call = f'<tool_call>{{"name": "convert_units", "arguments": {{"value": {km}, "unit_from": "km", "unit_to": "cm"}}}}</tool_call>'
    result, *_ = env.step(call)
    print("tool:", result, "| reward:", env.step(f"\\boxed{{{result}}}")[1])
