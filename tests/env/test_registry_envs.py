"""Every registered spo/ environment: check_env, seeded determinism, garbage actions."""

import json
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import spo_agents  # noqa: F401
from spo_agents.env import registered_ids

ENV_IDS = registered_ids("spo")


def test_builtin_envs_are_registered():
    assert {"spo/Calculator-v0", "spo/MathVerify-v0"} <= set(ENV_IDS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes_without_warnings(env_id):
    env = gymnasium.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    messages = [str(w.message) for w in caught]
    assert messages == [], messages
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_contract(env_id):
    env = gymnasium.make(env_id)
    observation, info = env.reset(seed=3)
    assert isinstance(observation, str) and observation
    assert isinstance(info["task_id"], str)
    assert isinstance(info["tools"], list)
    for schema in info["tools"]:
        assert schema["type"] == "function"
        json.dumps(schema)
        assert schema["function"]["parameters"]["type"] == "object"
    # the same task is reachable by id
    again, info2 = env.reset(options={"task_id": info["task_id"]})
    assert again == observation and info2["task_id"] == info["task_id"]
    env.close()


def _play(env_id, seed, actions):
    env = gymnasium.make(env_id)
    trace = [env.reset(seed=seed)]
    for action in actions:
        result = env.step(action)
        trace.append(result)
        if result[2] or result[3]:
            trace.append(env.reset(seed=seed + 1))
    env.close()
    return trace


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_determinism(env_id):
    actions = ['<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>',
               "I think \\boxed{6}", "no idea", "\\boxed{}"]
    assert _play(env_id, 11, actions) == _play(env_id, 11, actions)
    first_obs = [_play(env_id, seed, [])[0][0] for seed in range(6)]
    assert len(set(first_obs)) > 1, "different seeds should reach different tasks"


HOSTILE_ACTIONS = [
    "",
    "<tool_call>",
    "</tool_call>",
    "<tool_call>{not json}</tool_call>",
    '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "calculator", "arguments": {"expression": 5}}</tool_call>',
    '<tool_call>{"name": "calculator", "arguments": {"expression": "9**9**9**9"}}</tool_call>',
    '<tool_call>{"name": "calculator", "arguments": {"expression": "().__class__"}}</tool_call>',
    '<tool_call>{"name": "calculator", "arguments": "{broken"}</tool_call>',
    '<tool_call>[1, 2, 3]</tool_call>',
    "<tool_call>" + '{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>' * 50,
    '<tool_call>{"name": "calculator", "arguments": {"expression": "' + "1+" * 200_000 + '1"}}</tool_call>',
    "\\boxed{" * 10_000,
    "\\boxed{9^{9^{9^{9}}}}",
    "\x00\udcff\ufffe" * 1000,
    "x" * 1_000_000,
]


def _random_action(rng: np.random.Generator) -> str:
    kind = int(rng.integers(4))
    if kind == 0:  # random unicode code points
        points = rng.integers(1, 0x10FFFF, size=int(rng.integers(0, 300)))
        return "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)
    if kind == 1:
        return HOSTILE_ACTIONS[int(rng.integers(len(HOSTILE_ACTIONS)))]
    if kind == 2:  # tool-call fragments glued together
        parts = ["<tool_call>", "</tool_call>", "{", "}", '"name"', ":", '"calculator"', '"arguments"', "\\boxed{", "42"]
        return "".join(parts[int(i)] for i in rng.integers(0, len(parts), size=int(rng.integers(1, 30))))
    return "".join(chr(int(c)) for c in rng.integers(32, 127, size=int(rng.integers(0, 2000))))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_garbage_actions_never_raise(env_id):
    env = gymnasium.make(env_id)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    actions = HOSTILE_ACTIONS + [_random_action(rng) for _ in range(500 - len(HOSTILE_ACTIONS))]
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(observation)
        assert isinstance(reward, float) and 0.0 <= reward <= 1.0
        assert isinstance(info["task_id"], str)
        if terminated or truncated:
            env.reset()
    env.close()
