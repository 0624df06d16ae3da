"""spo/ChainCalc-v0: chain generation, step-by-step reports, reward tables, partial credit, limits."""

import time

import gymnasium
import numpy as np
import pytest

import spo_agents  # noqa: F401
from spo_agents.cli.env_stats import sample_oracle_episodes
from spo_env_chaincalc.env import reported_value
from spo_env_chaincalc.tasks import ChainConfig, chain_values, chaincalc_splits, generate_tasks


def make(**kwargs):
    return gymnasium.make("spo/ChainCalc-v0", **kwargs).unwrapped


def task_with_length(env, length):
    return next(t for t in env.tasks if t.metadata["length"] == length)


def calculator_call(expression):
    return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


# ----- task generation ----------------------------------------------------------------------
def test_generation_is_deterministic_with_stable_ids_and_exact_answers():
    tasks = generate_tasks(300)
    assert tasks == generate_tasks(300)
    assert generate_tasks(600)[:300] == tasks  # ids keep their chain as the set grows
    assert tasks[0].task_id == "chain-00000"
    assert generate_tasks(3, seed=1)[0].prompt != tasks[0].prompt
    for task in tasks:
        values = chain_values(task.metadata["start"], task.metadata["steps"])
        assert str(values[-1]) == task.answer and len(values) == task.metadata["length"]
        assert all(0 < v < 10**16 for v in values)  # positive, below 4 * digits digits


def test_splits_are_disjoint():
    splits = chaincalc_splits(2000)
    assert splits["train"].disjoint_from(splits["heldout"])
    assert len(splits["heldout"]) >= 300


def test_chain_lengths_are_heavy_tailed_between_1_and_64():
    lengths = np.array([t.metadata["length"] for t in generate_tasks(2000)])
    assert lengths.min() == 1 and lengths.max() == 64
    assert np.median(lengths) <= 4 and (lengths >= 32).sum() >= 20
    fixed = [t.metadata["length"] for t in generate_tasks(50, config=ChainConfig(min_steps=8, max_steps=8))]
    assert set(fixed) == {8}
    with pytest.raises(ValueError, match="min_steps"):
        ChainConfig(min_steps=9, max_steps=3)


# ----- reports ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, reward",
    [
        ("The result is \\boxed{VALUE}.", 1.0),
        ("\\boxed{VALUE_COMMAS}", 1.0),
        ("\\boxed{VALUE.0}", 1.0),
        ("\\boxed{ VALUE }", 1.0),
        ("\\boxed{1} no: \\boxed{VALUE}", 1.0),  # the last box counts
        ("\\boxed{VALUE} or \\boxed{WRONG}", 0.0),
        ("\\boxed{WRONG}", 0.0),
        ("VALUE", 0.0),  # a report needs a box
        ("\\boxed{}", 0.0),
        ("\\boxed{VALUE or WRONG}", 0.0),
        ("\\boxed{VALUE/1}", 0.0),
        ("\\boxed{9^{9^{9^{9}}}}", 0.0),
        ("\\boxed{" + "9" * 100_000 + "}", 0.0),
    ],
)
def test_reward_table_for_a_one_step_chain(reply, reward):
    env = make()
    env.reset(options={"task_id": task_with_length(env, 1).task_id})
    value = env.task.answer
    text = reply.replace("VALUE_COMMAS", f"{int(value):,}").replace("VALUE", value)
    text = text.replace("WRONG", str(int(value) + 1))
    start = time.perf_counter()
    observation, got, terminated, truncated, info = env.step(text)
    assert time.perf_counter() - start < 0.5
    assert (got, terminated, truncated) == (reward, True, False)
    assert info["steps_correct"] == int(reward) and info["steps_total"] == 1


@pytest.mark.parametrize(
    "action",
    [
        calculator_call("VALUE") + " \\boxed{VALUE}",  # a box beside a tool call is not a report
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1", "note": "\\\\boxed{VALUE}"}}</tool_call>',
        '<tool_call>{"name": "calculator", "arguments": {"expression": "\\\\boxed{VALUE}"',  # unclosed
    ],
)
def test_answers_inside_or_beside_tool_calls_are_not_reports(action):
    env = make(max_turns=1)
    env.reset(options={"task_id": task_with_length(env, 1).task_id})
    _, reward, terminated, truncated, _ = env.step(action.replace("VALUE", env.task.answer))
    assert (reward, terminated, truncated) == (0.0, False, True)


def test_a_correct_report_reveals_the_next_step_as_a_user_message():
    env = make()
    env.reset(options={"task_id": task_with_length(env, 5).task_id})
    env.step(env.oracle_action())
    observation, reward, terminated, truncated, info = env.step(env.oracle_action())
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert observation.startswith("Correct.") and "Step 2 of 5:" in observation
    assert info["messages"] == [{"role": "user", "content": observation}]
    assert (info["steps_correct"], info["steps_total"]) == (1, 5)


@pytest.mark.parametrize("partial_credit, expected", [(False, 0.0), (True, 2 / 5)])
def test_a_wrong_intermediate_report_ends_the_episode(partial_credit, expected):
    env = make(partial_credit=partial_credit)
    env.reset(options={"task_id": task_with_length(env, 5).task_id})
    for _ in range(4):  # steps 1 and 2: calculator call, correct report
        env.step(env.oracle_action())
    env.step(env.oracle_action())  # step 3: calculator call
    observation, reward, terminated, truncated, info = env.step("I think it is \\boxed{12}.")
    assert (reward, terminated, truncated) == (pytest.approx(expected), True, False)
    assert "Step 3 is incorrect" in observation and info["steps_correct"] == 2


# ----- oracle, lengths, limits --------------------------------------------------------------
@pytest.mark.parametrize("partial_credit", [False, True])
def test_oracle_solves_every_sampled_task_in_two_turns_per_step(partial_credit):
    episodes = sample_oracle_episodes("spo/ChainCalc-v0", samples=300, seed=0, partial_credit=partial_credit)
    env = make()
    assert all(e.reward == 1.0 and not e.truncated for e in episodes)
    lengths = np.array([env.find_task(e.task_id).metadata["length"] for e in episodes])
    assert [e.turns for e in episodes] == list(2 * lengths)
    assert lengths.min() == 1 and lengths.max() >= 48 and np.median(lengths) <= 4


def test_default_turn_limit_fits_the_longest_chain():
    assert make().max_turns == 3 * 64 + 8
    assert make(max_steps=10).max_turns == 38
    assert make(max_turns=5).max_turns == 5


@pytest.mark.parametrize("partial_credit, expected", [(False, 0.0), (True, 1 / 10)])
def test_turn_limit_is_truncation(partial_credit, expected):
    env = make(max_turns=3, partial_credit=partial_credit)
    env.reset(options={"task_id": task_with_length(env, 10).task_id})
    results = [env.step(env.oracle_action()) for _ in range(3)]  # call, report, call
    assert [r[3] for r in results] == [False, False, True]
    assert [r[2] for r in results] == [False, False, False]
    assert results[-1][1] == pytest.approx(expected) and results[0][1] == results[1][1] == 0.0


@pytest.mark.parametrize(
    "reply, value",
    [("\\boxed{1,234}", 1234), ("\\boxed{1\\,234}", 1234), ("\\boxed{$-5$}", -5), ("\\boxed{12.5}", None),
     ("\\boxed{0x10}", None), ("no box", None), ('<tool_call>{"a": "\\\\boxed{3}"}</tool_call>', None)],
)
def test_reported_value(reply, value):
    assert reported_value(reply) == value


def test_without_instructions_the_prompt_is_the_first_step_and_the_tasks_are_the_same():
    kwargs = {"digits": 1, "max_steps": 6, "num_tasks": 400}
    plain = gymnasium.make("spo/ChainCalc-v0", **kwargs, instructions=False).unwrapped
    full = gymnasium.make("spo/ChainCalc-v0", **kwargs).unwrapped
    for split in ("train", "heldout"):
        assert [t.task_id for t in plain.splits[split]] == [t.task_id for t in full.splits[split]]
        for short, long in zip(plain.splits[split], full.splits[split]):
            assert short.prompt.startswith("Step 1 of ") and long.prompt.endswith("\n\n" + short.prompt)
            assert short.answer == long.answer
    observation, _ = plain.reset(options={"task_id": plain.splits["train"][0].task_id})
    assert observation == plain.splits["train"][0].prompt
    while True:  # the oracle still solves it: the protocol does not depend on the wording
        _, reward, terminated, truncated, _ = plain.step(plain.oracle_action())
        if terminated or truncated:
            break
    assert reward == 1.0
