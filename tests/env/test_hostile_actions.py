"""Hostile text against every registered spo/ environment (SECURITY.md categories 4 and 11).

`step` must never raise because of what the model wrote, must return a valid 5-tuple, and
must return within a time bound. The environments come from the registry, so a new one is
covered without editing this file. Each family holds several members: deeply nested JSON
(past the decoder's recursion limit), huge numbers, lone surrogates, NUL bytes, megabyte
actions, tags nested in strings, wrong call keys. A hypothesis strategy then glues random
fragments of all of them together.
"""

from __future__ import annotations

import json
import math
import time

import gymnasium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spo_agents  # noqa: F401
from spo_agents.env import registered_ids

ENV_IDS = registered_ids("spo")
# One step, including a grader or a sandboxed tool that runs into its own timeout.
STEP_BOUND_S = 15.0
MB = 1_000_000


def _call(name: str, arguments_json: str) -> str:
    return f'<tool_call>{{"name": {json.dumps(name)}, "arguments": {arguments_json}}}</tool_call>'


def hostile_families(tool: str, param: str) -> dict[str, list[str]]:
    """Families of hostile actions aimed at one of the environment's tools (`tool(param=...)`)."""
    arg = json.dumps(param)
    return {
        "deep nesting": [
            "<tool_call>" + "[" * 1000,
            "<tool_call>" + "[" * 100_000 + "</tool_call>",
            "<tool_call>" + "{" * 1000 + "</tool_call>",
            _call(tool, '{"x": ' + "[" * 5000 + "1" + "]" * 5000 + "}"),
            _call(tool, "{" + f"{arg}: " + '{"a": ' * 900 + "1" + "}" * 900 + "}"),
            _call(tool, json.dumps("[" * 5000)),  # arguments as a JSON string, nested too deep
            _call(tool, "{" + f"{arg}: " + "[" * 60 + '"x"' + "]" * 60 + "}"),
            "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
        ],
        "huge numbers": [
            _call(tool, "{" + f"{arg}: " + "9" * 5000 + "}"),
            _call(tool, "{" + f"{arg}: 1e999999" + "}"),
            _call(tool, "{" + f"{arg}: -1e999999, \"y\": NaN" + "}"),
            _call(tool, "{" + f"{arg}: Infinity" + "}"),
            '<tool_call>{"name": ' + "7" * 10_000 + "}</tool_call>",
            _call(tool, "{" + f'{arg}: "{"9" * 100_000}"' + "}"),
            "\\boxed{" + "9" * 100_000 + "}",
            "\\boxed{9^{9^{9^{9}}}}",
        ],
        "lone surrogates": [
            "\ud800",
            "\udcff\ud800" * 1000,
            _call(tool, "{" + f'{arg}: "\ud800"' + "}"),
            _call(tool, "{" + f'{arg}: "\\ud800\\udfff\\udc00"' + "}"),
            _call("\ud800", "{}"),
            "\\boxed{\ud800}",
            "<tool_call>\ud800</tool_call>",
        ],
        "NUL bytes": [
            "\x00",
            "\x00" * 10_000,
            _call(tool, "{" + f'{arg}: "a\\u0000b"' + "}"),
            _call(tool, "{" + f'{arg}: "\x00"' + "}"),
            "<tool_call>\x00</tool_call>",
            "\\boxed{\x00}",
        ],
        "megabyte actions": [
            "x" * MB,
            _call(tool, "{" + f'{arg}: "{"a" * MB}"' + "}"),
            "<tool_call></tool_call>" * (MB // 23),
            '<tool_call>{"</tool_call>' * (MB // 25),
            "\\boxed{1}" * (MB // 9),
            "{" * MB,
            "<tool_call>" * (MB // 11),
        ],
        "tags nested in strings": [
            _call(tool, "{" + f'{arg}: "</tool_call><tool_call>"' + "}"),
            _call(tool, "{" + f'{arg}: "<tool_call>{{}}</tool_call>' * 20 + '"}'),
            _call(tool, "{" + f'{arg}: "</tool_call>' * 50 + '"}'),
            "<tool_call><tool_call>" + _call(tool, "{}") + "</tool_call>",
            '<tool_call>{"name": "</tool_call>"}',
            _call(tool, "{" + f'{arg}: "\\\\boxed{{1}}</tool_call>"' + "}") + " \\boxed{1}",
            "<tool_response>\\boxed{1}</tool_response>",
        ],
        "wrong call keys": [
            f'<tool_call>{{"name": {json.dumps(tool)}, "parameters": {{{arg}: "1"}}}}</tool_call>',
            f'<tool_call>{{"name": {json.dumps(tool)}, "args": {{{arg}: "1"}}}}</tool_call>',
            f'<tool_call>{{"function": {json.dumps(tool)}, "arguments": {{}}}}</tool_call>',
            f'<tool_call>{{"name": {json.dumps(tool)}, "arguments": {{}}, "id": 3}}</tool_call>',
        ],
    }


_ENVS: dict[str, gymnasium.Env] = {}


def _env(env_id: str) -> gymnasium.Env:
    """One environment per id for the whole module (hypothesis runs many examples per test)."""
    if env_id not in _ENVS:
        _ENVS[env_id] = gymnasium.make(env_id)
        _ENVS[env_id].reset(seed=0)
    return _ENVS[env_id]


@pytest.fixture(scope="module", autouse=True)
def _close_envs():
    yield
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


def _target(env_id: str) -> tuple[str, str]:
    """A tool of the environment and one of its string parameters (a made-up one if it has none)."""
    _, info = _env(env_id).reset(seed=0)
    for schema in info["tools"]:
        props = schema["function"]["parameters"].get("properties", {})
        strings = [name for name, prop in props.items() if prop.get("type") == "string"]
        if strings:
            return schema["function"]["name"], strings[0]
    return "calculator", "expression"


def assert_step_contract(env: gymnasium.Env, action: str) -> tuple:
    """One step: a valid 5-tuple within STEP_BOUND_S; resets the env when the episode ended."""
    started = time.perf_counter()
    result = env.step(action)
    elapsed = time.perf_counter() - started
    assert elapsed < STEP_BOUND_S, f"step took {elapsed:.1f} s"
    assert isinstance(result, tuple) and len(result) == 5
    observation, reward, terminated, truncated, info = result
    assert env.observation_space.contains(observation)
    assert isinstance(reward, float) and math.isfinite(reward) and 0.0 <= reward <= 1.0
    assert isinstance(terminated, bool) and isinstance(truncated, bool)
    assert isinstance(info, dict) and isinstance(info["task_id"], str)
    for message in info.get("messages", []):
        assert isinstance(message["content"], str)
    if terminated or truncated:
        env.reset()
    return result


FAMILIES = sorted(hostile_families("t", "p"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_hostile_family_never_raises(env_id, family):
    env = _env(env_id)
    tool, param = _target(env_id)
    for action in hostile_families(tool, param)[family]:
        env.reset()
        assert_step_contract(env, action)
        # a second turn after the hostile one (multi-turn environments keep going)
        assert_step_contract(env, action[:1000])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_wrong_call_keys_get_an_error_naming_arguments(env_id):
    env = _env(env_id)
    tool, param = _target(env_id)
    if not env.reset()[1]["tools"]:
        pytest.skip("no tools: a tool call is a final reply")
    for action in hostile_families(tool, param)["wrong call keys"]:
        env.reset()
        observation, reward, terminated, truncated, info = env.step(action)
        assert not terminated and reward == 0.0
        assert observation.startswith("Error: tool call 0: unexpected key") and '"arguments"' in observation


_FRAGMENTS = sorted({
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "\\boxed{", "}", "{", "[", "]", '"',
    '"name"', '"arguments"', '"parameters"', ":", ",", "\\", "\\u0000", "\\ud800", "1e999", "9" * 400, "NaN",
    "```", "\x00", "\ud800", "\udfff", "42",
})
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_PIECE = st.one_of(
    st.sampled_from(_FRAGMENTS),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),  # lone surrogates included
    _JSON.map(json.dumps),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["[", "{", "<tool_call>", "\\boxed{"]),
              st.integers(1, 3000)),
)


@pytest.mark.parametrize("env_id", ENV_IDS)
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pieces=st.lists(_PIECE, max_size=12), wrap_call=st.booleans())
def test_random_hostile_text_never_raises(env_id, pieces, wrap_call):
    env = _env(env_id)
    tool, _ = _target(env_id)
    text = "".join(pieces)
    if wrap_call:  # aim the fragments at a real tool, as the arguments of a call
        text = f'<tool_call>{{"name": {json.dumps(tool)}, "arguments": {text}}}</tool_call>'
    assert_step_contract(env, text)
