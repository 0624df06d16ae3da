"""ToolEnv's default system prompt, and tasks from TRL-style conversational rows."""

import json

import gymnasium
import pytest

import spo_agents  # noqa: F401  (registration)
from spo_agents.env import DEFAULT_SYSTEM_PROMPT, Task, ToolEnv
from spo_agents.env.tasks import load_tasks

TASKS = [Task(task_id="t0", prompt="What is 2+2?", answer="4")]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: first
        b: second
    """
    return a + b


def _system(env: ToolEnv, task_id: str = "t0") -> str:
    return env.reset(options={"task_id": task_id})[1]["system_prompt"]


def test_default_system_prompt_only_for_an_env_with_tools():
    assert _system(ToolEnv(TASKS, grader=lambda r, t: 1.0)) == ""  # no tools, no tool instructions
    assert _system(ToolEnv(TASKS, tools=[add], grader=lambda r, t: 1.0)) == DEFAULT_SYSTEM_PROMPT
    assert _system(ToolEnv(TASKS, grader=lambda r, t: 1.0, system_prompt="Be brief.")) == "Be brief."
    assert _system(ToolEnv(TASKS, tools=[add], grader=lambda r, t: 1.0, system_prompt="")) == ""
    own = [Task(task_id="t1", prompt="hi", metadata={"system_prompt": "Task's own."})]
    assert _system(ToolEnv(own, tools=[add], grader=lambda r, t: 1.0, system_prompt="Env's."), "t1") == "Task's own."


@pytest.mark.parametrize("env_id", ["spo/Calculator-v0", "spo/ChainCalc-v0", "spo/FileSearch-v0",
                                    "spo/MathVerify-v0"])
def test_builtin_envs_keep_their_own_system_prompts(env_id):
    env = gymnasium.make(env_id)
    try:
        system = env.reset(seed=0)[1]["system_prompt"]
        assert system and system != DEFAULT_SYSTEM_PROMPT and "boxed" in system
    finally:
        env.close()


def _write(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_tasks_reads_trl_conversational_prompts(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": "Capital of France?"}], "answer": "Paris"},
            {"prompt": [{"role": "user", "content": [{"type": "text", "text": "2+"}, {"type": "text", "text": "2?"}]}],
             "completion": [{"role": "assistant", "content": "4"}], "level": 3}]
    first, second = load_tasks(_write(tmp_path, rows), prompt_field="prompt")
    assert first.prompt == "Capital of France?" and first.answer == "Paris"
    assert first.metadata["system_prompt"] == "Answer in one word."
    assert second.prompt == "2+2?" and "system_prompt" not in second.metadata and second.metadata["level"] == 3
    assert load_tasks(_write(tmp_path, rows[1:]), prompt_field="prompt", answer_field="completion")[0].answer == "4"
    env = ToolEnv([first, second], grader=lambda r, t: 1.0)
    observation, info = env.reset(options={"task_id": first.task_id})
    assert observation == "Capital of France?" and info["system_prompt"] == "Answer in one word."


@pytest.mark.parametrize("prompt, match", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
     "multi-turn prompts are not supported"),
    ([{"role": "assistant", "content": "a"}], r"\[system,\] user"),
    (["not a message"], "messages like"),
    ([{"role": "user", "content": [{"type": "image", "url": "x"}]}], "only text message parts"),
    ({"role": "user", "content": "a"}, "text or a list of messages"),
])
def test_load_tasks_rejects_prompts_it_cannot_use(tmp_path, prompt, match):
    with pytest.raises(ValueError, match=match):
        load_tasks(_write(tmp_path, [{"prompt": prompt, "answer": "1"}]), prompt_field="prompt")
