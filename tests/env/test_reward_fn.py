"""Single-turn training data + a Python reward function (`reward/RewardFn-v0`, TRL users' path)."""

import json
import math

import gymnasium
import pytest

import spo_agents  # noqa: F401  (registration)
from spo_agents.env import RewardFnEnv, Task, load_reward_fn

CALLS = []


def recording_reward(prompt, completion, answer, **row):
    CALLS.append((prompt, completion, answer, row))
    return 1.0 if completion == answer else 0.25


@pytest.fixture
def dataset(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Say {i}.", "answer": str(i), "level": i % 3} for i in range(30)]
    rows.append({"id": "conv", "prompt": [{"role": "system", "content": "One word."},
                                          {"role": "user", "content": "Say yes."}], "answer": "yes", "level": 0})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reward_function_scores_the_reply_with_the_row(dataset, tmp_path):
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text("def score(prompt, completion, answer, level, **row):\n"
                           "    return float(completion == answer) + level / 10\n")
    env = gymnasium.make("reward/RewardFn-v0", dataset=str(dataset), reward=f"{reward_file}:score",
                         heldout_fraction=0.2)
    base = env.unwrapped
    assert set(base.splits) == {"train", "heldout"} and len(base.splits["heldout"]) > 0
    assert base.splits["train"].disjoint_from(base.splits["heldout"])
    observation, info = env.reset(options={"task_id": "r4"})
    assert observation == "Say 4." and info["tools"] == [] and info["system_prompt"] == ""
    _, reward, terminated, truncated, _ = env.step("4")
    assert (reward, terminated, truncated) == (1.1, True, False)  # one reply, one reward; level 1 in **row
    observation, info = env.reset(options={"task_id": "conv"})  # a TRL conversational row
    assert observation == "Say yes." and info["system_prompt"] == "One word."
    _, reward, *_ = env.step('<tool_call>{"name": "x", "arguments": {}}</tool_call>')  # no tools: graded as a reply
    assert reward == 0.0


def test_callable_reward_and_tasks_in_process():
    CALLS.clear()
    tasks = [Task(task_id="a", prompt="p", answer="yes", metadata={"source": "s"})]
    env = RewardFnEnv(recording_reward, tasks=tasks, heldout_fraction=0)
    env.reset(options={"task_id": "a"})
    assert env.step("no")[1] == 0.25
    assert CALLS == [("p", "no", "yes", {"source": "s"})]


@pytest.mark.parametrize("body, error", [("raise RuntimeError('bug')", "RuntimeError: bug"),
                                         ("return float('nan')", "returned nan"),
                                         ("return 'high'", "ValueError")])
def test_a_broken_reward_scores_zero_and_says_why(dataset, tmp_path, body, error):
    (tmp_path / "bad.py").write_text(f"def score(prompt, completion, **row):\n    {body}\n")
    env = RewardFnEnv(f"{tmp_path / 'bad.py'}:score", dataset)
    env.reset(options={"task_id": env.tasks[0].task_id})
    _, reward, terminated, _, info = env.step("x")
    assert reward == 0.0 and terminated and error in info["grader_error"]


@pytest.mark.parametrize("spec, message", [("nocolon", "must be 'module:function'"),
                                           ("no_such_module_x:f", "cannot import"),
                                           ("math:no_such_function", "has no function"),
                                           ("/no/such/file.py:f", "no file")])
def test_reward_specs_that_cannot_work(spec, message):
    with pytest.raises(ValueError, match=message):
        load_reward_fn(spec)
    assert load_reward_fn("math:sqrt") is math.sqrt


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        RewardFnEnv("math:sqrt", tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="exactly one of"):
        RewardFnEnv("math:sqrt")
