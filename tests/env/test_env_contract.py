"""The Gymnasium contract of every registered spo/ environment, through `gymnasium.make`.

- The spec states the turn cap (`max_episode_steps`), and episodes still end as documented:
  `terminated` after a final reply (also in the last allowed turn), `truncated` exactly at the
  cap without one, never both, whatever gymnasium's TimeLimit does; `max_turns` and
  `max_episode_steps` given to `make` are one and the same cap.
- Environments pickle and deep-copy, mid-episode, and the copy carries on identically.
- `gymnasium.make_vec(ID, num_envs=2, vectorization_mode="async")` works with no options and
  gives what the sync vector env gives.
The environments come from the registry, so a new one is covered without editing this file.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import pickle
import warnings

import gymnasium
import pytest

import spo_agents  # noqa: F401
from spo_agents.env import registered_ids

ENV_IDS = registered_ids("spo")
UNKNOWN_TOOL = '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>'
FINAL = "My answer is \\boxed{0}."


def _make(env_id: str, **kwargs) -> gymnasium.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the passive env checker must have nothing to say
        env = gymnasium.make(env_id, **kwargs)
        env.reset(seed=0)
    return env


def _has_tools(env: gymnasium.Env) -> bool:
    return bool(env.reset(seed=0)[1]["tools"])


def _play(env: gymnasium.Env, actions: list[str]) -> list[tuple[bool, bool]]:
    """(terminated, truncated) of each step until the episode ends."""
    flags = []
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        flags.append((terminated, truncated))
        if terminated or truncated:
            break
    return flags


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spec_states_the_turn_cap(env_id):
    spec = gymnasium.spec(env_id)
    env = _make(env_id)
    try:
        assert spec.max_episode_steps is not None
        assert spec.max_episode_steps == env.unwrapped.max_turns
        assert env.spec.max_episode_steps == env.unwrapped.max_turns
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_episodes_end_as_documented_under_the_time_limit(env_id):
    env = _make(env_id)
    try:
        cap = env.spec.max_episode_steps
        if not _has_tools(env):  # single-turn: every reply ends the episode, terminated only
            assert _play(env, [UNKNOWN_TOOL]) == [(True, False)]
            env.reset(seed=0)
            assert _play(env, [FINAL]) == [(True, False)]
            return
        env.reset(seed=0)  # a final reply in the last allowed turn: graded, terminated only
        assert _play(env, [UNKNOWN_TOOL] * (cap - 1) + [FINAL]) == [(False, False)] * (cap - 1) + [(True, False)]
        env.reset(seed=0)  # tool calls to the end: truncated exactly at the cap
        assert _play(env, [UNKNOWN_TOOL] * (cap + 5)) == [(False, False)] * (cap - 1) + [(False, True)]
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_max_turns_and_max_episode_steps_are_one_cap(env_id):
    default = gymnasium.spec(env_id).max_episode_steps
    env = _make(env_id, max_episode_steps=default + 3)
    try:
        assert env.unwrapped.max_turns == env.spec.max_episode_steps == default + 3
        if _has_tools(env):
            env.reset(seed=0)
            assert len(_play(env, [UNKNOWN_TOOL] * (default + 10))) == default + 3
    finally:
        env.close()
    try:
        env = _make(env_id, max_turns=default + 2)
    except TypeError:  # the environment has a fixed cap (single-turn)
        return
    try:  # the TimeLimit follows the environment's own cap, above the registered default too
        assert env.spec.max_episode_steps == env.unwrapped.max_turns == default + 2
        env.reset(seed=0)
        assert len(_play(env, [UNKNOWN_TOOL] * (default + 10))) == default + 2
    finally:
        env.close()
    with pytest.raises(ValueError, match="disagree"):
        gymnasium.make(env_id, max_turns=default + 2, max_episode_steps=default + 1)


def _tool_call(info: dict) -> str:
    """A call to the environment's first tool with "1+1" for its first string parameter."""
    for schema in info["tools"]:
        props = schema["function"]["parameters"].get("properties", {})
        strings = [name for name, prop in props.items() if prop.get("type") == "string"]
        if strings:
            call = {"name": schema["function"]["name"], "arguments": {strings[0]: "1+1"}}
            return f"<tool_call>{json.dumps(call)}</tool_call>"
    return UNKNOWN_TOOL


def _continue(env: gymnasium.Env, actions: list[str]) -> list:
    trace = [env.step(action) for action in actions]
    trace.append(env.reset())  # no seed: the copied RNG picks the task
    return trace


@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["made", "unwrapped"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_copies_carry_on_identically(env_id, wrapped, copier):
    made = _make(env_id)
    env = made if wrapped else made.unwrapped
    try:
        _, info = env.reset(seed=5)
        call = _tool_call(info)
        before = [call] if info["tools"] else []  # mid-episode (single-turn: at its start)
        for action in before:
            env.step(action)
        twin = pickle.loads(pickle.dumps(env)) if copier == "pickle" else copy.deepcopy(env)
        actions = [call, FINAL] if info["tools"] else [FINAL]
        twin_trace = _continue(twin, actions)
        env.reset(seed=5)
        for action in before:
            env.step(action)
        assert twin_trace == _continue(env, actions)
        twin.close()
    finally:
        made.close()


def _vector_trace(env_id: str, **vector_kwargs) -> list:
    vec = gymnasium.make_vec(env_id, num_envs=2, **vector_kwargs)
    try:
        observations, infos = vec.reset(seed=0)
        calls = tuple(_tool_call({"tools": tools}) for tools in infos["tools"])
        trace = [(observations, list(infos["task_id"]))]
        for actions in (calls, (FINAL, calls[1]), (calls[0], FINAL)):
            observations, rewards, terminated, truncated, _ = vec.step(actions)
            trace.append((observations, rewards.tolist(), terminated.tolist(), truncated.tolist()))
        return trace
    finally:
        vec.close()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_async_vector_env_works_out_of_the_box(env_id):
    async_trace = _vector_trace(env_id, vectorization_mode="async")
    assert all(isinstance(obs, tuple) and len(obs) == 2 and all(isinstance(o, str) for o in obs)
               for obs, *_ in async_trace)
    assert async_trace == _vector_trace(env_id, vectorization_mode="sync")


@pytest.mark.slow
def test_async_vector_env_without_shared_memory_and_with_spawn():
    reference = _vector_trace("spo/Calculator-v0", vectorization_mode="sync")
    assert _vector_trace("spo/Calculator-v0", vectorization_mode="async",
                         vector_kwargs={"shared_memory": False}) == reference
    assert _vector_trace("spo/Calculator-v0", vectorization_mode="async",
                         vector_kwargs={"context": "spawn"}) == reference


def test_text_slots_round_trip_any_text_and_clean_up():
    from spo_agents.env.spaces import TextSlots, TextSlotsView

    slots = TextSlots(3)
    view = TextSlotsView(slots)
    texts = ["plain", "lone \ud800 surrogate, NUL \x00, emoji \U0001f642", "x" * 1_000_000]
    for index, text in enumerate(texts):
        slots.write(index, text)
    assert copy.deepcopy(view) == tuple(texts) and view[1] == texts[1] and view[-1] == texts[2]
    assert pickle.loads(pickle.dumps(slots)).read(1) == texts[1]  # a worker's view of the same slots
    slots.write(0, "next step")
    assert view[0] == "next step"  # a live view, as numpy shared memory is
    directory = slots.directory
    del view, slots
    gc.collect()
    assert not os.path.exists(directory)
