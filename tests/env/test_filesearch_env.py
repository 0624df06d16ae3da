"""spo/FileSearch-v0: task generation, the virtual tree's tools, reward table, oracle, turn limits."""

import json
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import spo_agents  # noqa: F401
from spo_agents.cli.env_stats import sample_oracle_episodes
from spo_agents.env import ToolError
from spo_env_filesearch.tasks import FileSearchConfig, filesearch_splits, generate_tasks, plan_task
from spo_env_filesearch.tree import MAX_MATCHES, VirtualTree
from spo_env_filesearch.world import build_files


def make(**kwargs):
    return gymnasium.make("spo/FileSearch-v0", **kwargs).unwrapped


def call(tool_name, **arguments):
    return f"<tool_call>{json.dumps({'name': tool_name, 'arguments': arguments})}</tool_call>"


# ----- task generation ----------------------------------------------------------------------
def test_task_generation_is_deterministic_with_stable_ids():
    first = generate_tasks(200, seed=0)
    assert first == generate_tasks(200, seed=0)
    assert [t.task_id for t in first[:3]] == ["fs-00000", "fs-00001", "fs-00002"]
    assert build_files(first[7]) == build_files(first[7])
    assert build_files(first[7]) != build_files(first[8])
    assert generate_tasks(3, seed=1)[0].prompt != first[0].prompt
    # a task keeps its id, prompt and tree when the task list grows
    assert generate_tasks(400, seed=0)[:200] == first


def test_splits_are_disjoint():
    splits = filesearch_splits(2000)
    assert splits["train"].disjoint_from(splits["heldout"])
    assert len(splits["heldout"]) >= 300


def test_metadata_matches_the_plan_and_the_budget_clip():
    config = FileSearchConfig(min_calls=10, max_calls=10)
    for task in generate_tasks(30, config=config):
        plan = plan_task(task.metadata["seed"], task.metadata["index"], config)
        assert plan.chain.calls == task.metadata["oracle_calls"] == 10
        assert list(plan.chain.hops) == task.metadata["hops"] and plan.value == task.answer
    with pytest.raises(ValueError, match="min_calls"):
        FileSearchConfig(min_calls=5, max_calls=2)


def test_the_answer_appears_only_where_the_chain_ends():
    """The asked setting takes the answer's value in one file only (literally or via a variable)."""
    for task in generate_tasks(60):
        lines = [line for text in build_files(task).values() for line in text.splitlines()]
        variables = dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)
        settings = [line.split(" = ", 1)[1] for line in lines if line.startswith(f"{task.metadata['attribute']} = ")]
        values = [variables[v[2:-1]] if v.startswith("${") else v for v in settings]
        assert values.count(task.answer) == 1 and len(values) > 1, task.task_id


# ----- the tree and its tools ---------------------------------------------------------------
TREE = VirtualTree({
    "/etc/app/main.conf": "include = /opt/x/next.conf\nport = 1\n",
    "/opt/x/next.conf": "port = 2\n",
    "/opt/x/deep/y.env": "A=1\nB=2\n",
    "/many.txt": "hit\n" * 100,
})


def test_tree_tools_semantics():
    assert TREE.ls("/") == "etc/\nmany.txt\nopt/"
    assert TREE.ls("opt/x/") == "deep/\nnext.conf"  # relative paths start at the root
    assert TREE.cat("/etc/app/../app/main.conf").startswith("include = ")
    assert TREE.grep("port", "/") == "/etc/app/main.conf:2:port = 1\n/opt/x/next.conf:1:port = 2"
    assert TREE.grep("B=", "/opt/x/deep/y.env") == "/opt/x/deep/y.env:2:B=2"
    assert TREE.grep("hit", "/").endswith(f"... {100 - MAX_MATCHES} more matches")
    assert TREE.find("*.env") == "/opt/x/deep/y.env"
    assert TREE.find("next.conf", "/etc") == "(no matches)"
    assert TREE.grep("nothing", "/") == "(no matches)"


@pytest.mark.parametrize(
    "method, arguments, message",
    [
        ("cat", {"path": "/opt/x"}, "is a directory"),
        ("cat", {"path": "/etc/passwd"}, "no such file"),
        ("cat", {"path": str(Path(__file__).resolve())}, "no such file"),  # the real file system is never read
        ("cat", {"path": "/../../../../etc/hostname"}, "no such file"),
        ("ls", {"path": "/nope"}, "no such file"),
        ("cat", {"path": "/etc\x00/app"}, "NUL"),
        ("cat", {"path": "a" * 100_000}, "at most"),
        ("grep", {"pattern": "", "path": "/"}, "empty"),
        ("grep", {"pattern": "x" * 10_000, "path": "/"}, "longer than"),
        ("find", {"name": "*" * 1000, "path": "/"}, "1 to"),
    ],
)
def test_tree_tool_errors(method, arguments, message):
    with pytest.raises(ToolError, match=message):
        getattr(TREE, method)(**arguments)


@pytest.mark.parametrize(
    "method, arguments",
    [
        ("grep", {"pattern": "(a+)+$", "path": "/"}),  # a literal, not a regex: no backtracking
        ("grep", {"pattern": "(x+x+)+y" * 20, "path": "/"}),
        ("find", {"name": "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "path": "/"}),
        ("find", {"name": "[[[[[[", "path": "/"}),
    ],
)
def test_hostile_patterns_are_fast_and_harmless(method, arguments):
    env = make()
    env.reset(seed=0)
    start = time.perf_counter()
    observation, reward, terminated, truncated, _ = env.step(call(method, **arguments))
    assert time.perf_counter() - start < 0.5
    assert observation == "(no matches)" and not terminated and reward == 0.0


def test_each_task_gets_its_own_tree_and_output_is_truncated():
    env = make(max_tool_output_chars=200)
    _, info = env.reset(options={"task_id": "fs-00000"})
    assert [t["function"]["name"] for t in info["tools"]] == ["ls", "cat", "grep", "find"]
    first = env.step(call("ls", path="/"))[0]
    observation, *_ = env.step(call("grep", pattern="=", path="/"))
    assert len(observation) <= 200 and "characters truncated" in observation
    env.reset(options={"task_id": "fs-00001"})
    env_dir_listing = env.step(call("find", name="*.env", path="/"))[0]
    env.reset(options={"task_id": "fs-00000"})
    assert env.step(call("ls", path="/"))[0] == first
    assert env.step(call("find", name="*.env", path="/"))[0] != env_dir_listing


# ----- rewards ------------------------------------------------------------------------------
def _decoy(env):
    """A value of the asked setting that is not the answer (from a distractor or decoy file)."""
    attribute = env.task.metadata["attribute"]
    for text in env.tree_for(env.task).files.values():
        for line in text.splitlines():
            if line.startswith(f"{attribute} = ") and "${" not in line and line.split(" = ")[1] != env.task.answer:
                return line.split(" = ")[1]
    raise AssertionError("no decoy found")


@pytest.mark.parametrize(
    "reply, reward",
    [
        ("The port is \\boxed{ANSWER}.", 1.0),
        ("\\boxed{ ANSWER }", 1.0),
        ("\\boxed{\\text{ANSWER}}", 1.0),
        ("\\boxed{`ANSWER`}", 1.0),
        ("\\boxed{DECOY} no, the include overrides it: \\boxed{ANSWER}", 1.0),  # the last box counts
        ("\\boxed{ANSWER} or maybe \\boxed{DECOY}", 0.0),
        ("\\boxed{DECOY}", 0.0),  # a distractor service's value
        ("ANSWER", 0.0),  # no box
        ("\\boxed{}", 0.0),
        ("\\boxed{ANSWER or DECOY}", 0.0),  # hedging
        ("\\boxed{ANSWER, DECOY}", 0.0),  # listing every candidate
        ("\\boxed{ANSWER0}", 0.0),
        ("\\boxed{listen_port = ANSWER}", 0.0),
    ],
)
def test_reward_table(reply, reward):
    env = make()
    for task_id in ("fs-00000", "fs-00003"):
        env.reset(options={"task_id": task_id})
        text = reply.replace("ANSWER", env.task.answer).replace("DECOY", _decoy(env))
        assert env.step(text)[1:4] == (reward, True, False), (task_id, text)


@pytest.mark.parametrize(
    "action",
    [
        call("cat", path="\\boxed{ANSWER}"),  # the answer inside a tool call
        call("grep", pattern="ANSWER", path="/") + " so it is \\boxed{ANSWER}",  # a box next to a call
        '<tool_call>{"name": "cat", "arguments": {"path": "\\\\boxed{ANSWER}"}}',  # unclosed call
    ],
)
def test_answers_inside_or_beside_tool_calls_do_not_count(action):
    env = make(max_turns=1)
    env.reset(options={"task_id": "fs-00000"})
    _, reward, terminated, truncated, _ = env.step(action.replace("ANSWER", env.task.answer))
    assert (reward, terminated, truncated) == (0.0, False, True)


# ----- oracle and episode lengths -----------------------------------------------------------
def test_oracle_solves_every_sampled_task_and_lengths_are_heavy_tailed():
    episodes = sample_oracle_episodes("spo/FileSearch-v0", samples=300, seed=0)
    env = make()
    assert len({e.task_id for e in episodes}) == 300
    assert all(e.reward == 1.0 and not e.truncated for e in episodes)
    for e in episodes:  # the oracle makes exactly the budgeted number of calls, then answers
        assert e.turns == env.find_task(e.task_id).metadata["oracle_calls"] + 1
    turns = np.array([e.turns for e in episodes])
    assert np.percentile(turns, 10) <= 4 and np.median(turns) <= 6
    assert turns.max() >= 40 and (turns >= 40).sum() >= 3


def test_heldout_tasks_are_solvable_too():
    episodes = sample_oracle_episodes("spo/FileSearch-v0", samples=40, seed=1, split="heldout")
    assert all(e.reward == 1.0 for e in episodes)


def test_turn_limit_is_truncation():
    env = make(max_turns=3)
    env.reset(seed=0)
    results = [env.step(call("ls", path="/")) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
    assert all(r[2] is False and r[1] == 0.0 for r in results)


def test_oracle_on_a_long_task_is_truncated_by_a_short_turn_limit():
    env = make(max_turns=10)
    long_task = next(t for t in env.tasks if t.metadata["oracle_calls"] >= 20)
    env.reset(options={"task_id": long_task.task_id})
    for turn in range(1, 11):
        _, reward, terminated, truncated, info = env.step(env.oracle_action())
        assert reward == 0.0 and not terminated and truncated == (turn == 10)
        assert info["messages"][0]["role"] == "tool"
