"""spo/Calculator-v0: tasks, tool, reward table, turn limits."""

import gymnasium
import pytest

import spo_agents  # noqa: F401
from spo_env_calculator.tasks import calculator_splits, eval_integer_expression, generate_tasks


def make(**kwargs):
    return gymnasium.make("spo/Calculator-v0", **kwargs).unwrapped


def test_task_ids_stable_and_splits_disjoint():
    first = generate_tasks(300, level=2, seed=0)
    assert first == generate_tasks(300, level=2, seed=0)
    assert generate_tasks(5, level=2, seed=1)[0].prompt != first[0].prompt
    splits = calculator_splits(2000, level=2)
    assert splits["train"].disjoint_from(splits["heldout"])
    assert len(splits["heldout"]) >= 300  # enough held-out tasks for a 200+ task evaluation
    for task in first:
        assert str(eval_integer_expression(task.metadata["expression"])) == task.answer


def test_difficulty_grows_numbers():
    easy = generate_tasks(50, level=1)
    hard = generate_tasks(50, level=3)
    assert max(len(t.answer) for t in hard) > max(len(t.answer) for t in easy)
    with pytest.raises(ValueError, match="difficulty"):
        generate_tasks(5, level=7)


@pytest.mark.parametrize(
    "reply, reward",
    [
        ("The answer is \\boxed{ANSWER}.", 1.0),
        ("\\boxed{ANSWER_COMMAS}", 1.0),
        ("\\boxed{ANSWER} wait, actually \\boxed{0}", 0.0),  # the last box counts
        ("\\boxed{0} no: \\boxed{ANSWER}", 1.0),
        ("ANSWER", 0.0),  # no box
        ("\\boxed{}", 0.0),
        ("\\boxed{ANSWER1}", 0.0),
        ("\\boxed{ANSWER.0}", 1.0),
        ("\\boxed{$ANSWER$}", 1.0),
        ("\\boxed{ANSWER or 5}", 0.0),  # hedging
    ],
)
def test_reward_table(reply, reward):
    env = make()
    env.reset(seed=0)
    answer = env.task.answer
    with_commas = f"{int(answer):,}"
    text = reply.replace("ANSWER_COMMAS", with_commas).replace("ANSWER", answer)
    assert env.step(text)[1:4] == (reward, True, False)


def test_boxed_answer_inside_tool_call_does_not_count():
    env = make(max_turns=1)
    env.reset(seed=0)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1", "note": "\\\\boxed{%s}"}}</tool_call>'
    _, reward, terminated, truncated, _ = env.step(call % env.task.answer)
    assert (reward, terminated, truncated) == (0.0, False, True)


def test_oracle_solves_in_two_turns_and_tool_output_is_exact():
    env = make()
    for seed in range(5):
        env.reset(seed=seed)
        observation, reward, terminated, _, info = env.step(env.oracle_action())
        assert observation == env.task.answer and info["messages"][0]["role"] == "tool"
        assert (reward, terminated) == (0.0, False)
        _, reward, terminated, truncated, _ = env.step(env.oracle_action())
        assert (reward, terminated, truncated) == (1.0, True, False)


def test_turn_limit_is_truncation():
    env = make(max_turns=3)
    env.reset(seed=0)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
    results = [env.step(call) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
    assert all(r[2] is False and r[1] == 0.0 for r in results)


@pytest.mark.parametrize(
    "expression, fragment",
    [
        ("9**9**9**9", "Error"),
        ("factorial(10**7)", "Error"),
        ("__import__('os')", "Error"),
        ("(1).__class__", "Error"),
        ("1+" * 5000 + "1", "Error"),
        ("(" * 500 + "1" + ")" * 500, "Error"),
        ("10**5000 * 10**5000 * 10**5000", "Error"),
        ("1/0", "Error"),
    ],
)
def test_hostile_calculator_input_is_an_error_observation(expression, fragment):
    import json
    import time

    env = make()
    env.reset(seed=0)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": %s}}</tool_call>' % json.dumps(expression)
    start = time.perf_counter()
    observation, reward, terminated, truncated, _ = env.step(call)
    assert time.perf_counter() - start < 0.5
    assert observation.startswith(fragment) and not terminated
