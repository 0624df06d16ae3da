"""spo/ToolMath-v0: problems that need computing, the python tool, boxed-answer rewards, loaders."""

import copy
import json
import pickle
import re

import gymnasium
import pytest

import spo_agents  # noqa: F401
from spo_agents.sandbox import ExecResult
from spo_env_toolmath import ToolMathEnv, bundled_problems, load_math_tasks
from spo_env_toolmath.problems import solve


def make(**kwargs) -> ToolMathEnv:
    return gymnasium.make("spo/ToolMath-v0", **kwargs).unwrapped


def call(code: str) -> str:
    return "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) + "</tool_call>"


def test_problem_set_is_stable_computed_and_split():
    problems = bundled_problems(400)
    assert len(problems) == 400 and problems == bundled_problems(400)
    assert len({p.metadata["template"] for p in problems}) == 13
    assert bundled_problems(3, seed=1)[0].prompt != problems[0].prompt
    assert all(str(solve(p.metadata["code"])) == p.answer for p in problems[:60])
    assert sum(len(p.answer) >= 4 for p in problems) > 300  # answers are not guessable small numbers
    env = make()
    assert env.splits["train"].disjoint_from(env.splits["heldout"]) and len(env.splits["heldout"]) >= 50
    assert env.max_turns == 9


def test_answers_agree_with_sympy():
    sympy = pytest.importorskip("sympy")
    checked = 0
    for problem in bundled_problems(400):
        kind, prompt, answer = problem.metadata["template"], problem.prompt, int(problem.answer)
        numbers = [int(x) for x in re.findall(r"\d+", prompt)]
        if kind == "divisors":
            n = numbers[0]
            assert answer == (sympy.divisor_count(n) if "How many" in prompt else sympy.divisor_sigma(n))
        elif kind == "primes":
            primes = list(sympy.primerange(2, numbers[0] + 1))
            assert answer == (len(primes) if "How many" in prompt else sum(primes))
        elif kind == "count_divisible":
            _, _, a, b, c = numbers
            small = re.sub(r"N = \d+", "N = 5000", problem.metadata["code"])
            assert solve(small) == sum(1 for i in range(1, 5001) if (i % a == 0 or i % b == 0) and i % c)
        elif kind == "totient_sum" and numbers[1] <= 1000:
            assert answer == sum(sympy.totient(k) for k in range(1, numbers[1] + 1))
        elif kind == "modpow":
            assert answer == pow(numbers[0], numbers[1], numbers[2])
        else:
            continue
        checked += 1
    assert checked >= 100


def test_oracle_computes_with_the_tool_then_boxes_the_result():
    env = make()
    for seed in range(4):
        env.reset(seed=seed)
        observation, reward, terminated, truncated, info = env.step(env.oracle_action())
        assert observation == env.task.answer and info["messages"][0]["role"] == "tool"
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert env.step(env.oracle_action())[1:4] == (1.0, True, False)


@pytest.mark.parametrize("reply, reward", [
    ("The answer is \\boxed{ANSWER}.", 1.0),
    ("\\boxed{0} no, \\boxed{ANSWER}", 1.0),
    ("\\boxed{ANSWER} or maybe \\boxed{1}", 0.0),
    ("ANSWER", 0.0),
    ("\\boxed{}", 0.0),
    ("<tool_response>\\boxed{ANSWER}</tool_response> so I am not sure.", 0.0),  # copied tool output
    ("```python\nprint('\\\\boxed{ANSWER}')\n```\nDone.", 0.0),  # a box inside code
    ("\\boxed{ANSWER \\text{ or } 7}", 0.0),  # hedging
    ("\\boxed{" + "9^{" * 50 + "9" + "}" * 51, 0.0),  # power tower
])
def test_reward_table(reply, reward):
    env = make()
    env.reset(seed=0)
    text = reply.replace("ANSWER", env.task.answer)
    assert env.step(text)[1:4] == (reward, True, False)


def test_boxed_answer_in_a_tool_call_or_tool_output_does_not_count():
    env = make(max_turns=2)
    env.reset(seed=0)
    answer = env.task.answer
    observation, reward, _, truncated, _ = env.step(call(f"print('\\\\boxed{{{answer}}}')"))
    assert observation == f"\\boxed{{{answer}}}" and (reward, truncated) == (0.0, False)
    _, reward, terminated, truncated, _ = env.step(call(f"x = 1  # \\boxed{{{answer}}}"))
    assert (reward, terminated, truncated) == (0.0, False, True)


def test_eight_tool_turns_then_the_answer_still_counts():
    env = make()
    env.reset(seed=0)
    for turn in range(8):
        assert env.step(call(f"print({turn})"))[1:4] == (0.0, False, False)
    assert env.step(f"\\boxed{{{env.task.answer}}}")[1:4] == (1.0, True, False)
    env.reset(seed=0)
    results = [env.step(call("print(1)")) for _ in range(9)]
    assert results[-1][1:4] == (0.0, False, True)


def test_tool_output_keeps_head_and_tail_within_the_limit():
    env = make(max_tool_output_chars=500)
    env.reset(seed=0)
    observation = env.step(call("for i in range(5000):\n    print('line', i)"))[0]
    assert len(observation) <= 500
    assert observation.startswith("line 0\nline 1") and observation.endswith("line 4999")
    assert "omitted" in observation


def test_tool_errors_are_observations_and_the_episode_goes_on():
    env = make(sandbox={"timeout_s": 1.0})
    env.reset(seed=0)
    observation, reward, terminated, truncated, _ = env.step(call("1 / 0"))
    assert "ZeroDivisionError" in observation and not (terminated or truncated)
    observation, *_ = env.step(call("import ctypes\nctypes.string_at(0)"))
    assert "segmentation fault" in observation
    observation, *_ = env.step(call("while True:\n    pass"))
    assert "timed out" in observation
    assert env.step(call("print(2 ** 100)"))[0] == str(2**100)


def test_stateful_option():
    env = make(stateful=True)
    env.reset(seed=0)
    env.step(call("n = 12"))
    assert env.step(call("print(n * 2)"))[0] == "24"
    env.reset(seed=1)
    assert "NameError" in env.step(call("print(n)"))[0]


class FailingPool:
    def run(self, code, timeout_s=None, stdin=None):
        return ExecResult.sandbox_failure("sandbox setup failed: no namespaces")


def test_sandbox_failure_truncates_the_episode(monkeypatch):
    env = make()
    env.reset(seed=0)
    monkeypatch.setattr(env, "sandbox_pool", lambda: FailingPool())
    _, reward, terminated, truncated, info = env.step(call("print(1)"))
    assert (reward, terminated, truncated) == (0.0, False, True) and "no namespaces" in info["sandbox_error"]
    monkeypatch.undo()
    env.reset(seed=0)
    assert env.step(env.oracle_action())[0] == env.task.answer


# ----- user data sets -----------------------------------------------------------------------
def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    return str(path)


def test_gsm8k_and_plain_jsonl(tmp_path):
    gsm8k = _write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 3 apples and buys 1,200 more. How many?", "answer": "3 + 1200 = 1203\n#### 1,203"},
        {"question": "What is 2 + 2?", "answer": "#### 4"},
    ])
    tasks = load_math_tasks(gsm8k, answer_format="gsm8k")
    assert [t.answer for t in tasks] == ["1203", "4"]
    env = make(dataset_path=gsm8k, answer_format="gsm8k", heldout_fraction=0.0)
    env.reset(options={"task_id": tasks[0].task_id})
    assert env.step(env.oracle_action())[1:3] == (1.0, True)  # no code: the oracle boxes the reference
    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"id": 7, "problem": "1+1?", "solution": "2"}])
    assert load_math_tasks(plain, prompt_field="problem", answer_field="solution")[0].task_id == "7"


def test_dapo_math_records(tmp_path):
    path = _write_jsonl(tmp_path / "dapo.jsonl", [
        {"data_source": "math_dapo", "prompt": [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "What is $3^4$?"}],
         "reward_model": {"ground_truth": "81", "style": "rule-math"}},
        {"prompt": [{"role": "user", "content": "No answer here."}], "reward_model": {"style": "rule"}},
    ])
    tasks = load_math_tasks(path, answer_format="dapo", id_field=None)
    assert [(t.prompt, t.answer) for t in tasks] == [("What is $3^4$?", "81")]  # records without an answer dropped
    with pytest.raises(ValueError, match="answer_format"):
        load_math_tasks(path, answer_format="csv")


def test_parquet_file(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"question": ["What is 6*7?"], "answer": ["42"]}), path)
    assert [t.answer for t in load_math_tasks(path)] == ["42"]


@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_stateful_copies_mid_episode_open_their_own_session(copier):
    """Issue 16 item 15 for ToolMath: the copy works on, in a fresh interpreter that says so."""
    env = make(stateful=True)
    env.reset(seed=1)
    env.step(call("total = 6 * 7"))
    twin = pickle.loads(pickle.dumps(env)) if copier == "pickle" else copy.deepcopy(env)
    observation = twin.step(call("print(globals().get('total'))"))[0]
    assert observation.startswith("None") and "[the session was restarted" in observation, observation
    assert env.step(call("print(total)"))[0] == "42"
    _, reward, terminated, _, _ = twin.step(f"The answer is \\boxed{{{twin.task.answer}}}.")
    assert (reward, terminated) == (1.0, True)
    twin.close()
    env.close()
