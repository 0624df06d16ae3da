"""The rollout engine with scripted policies: modes, timing, isolation of slow and failing envs."""

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import engine_test_envs  # noqa: E402,F401  (registers test/ environments)
from engine_test_envs import CycleTasks  # noqa: E402

from spo_agents.rollout.config import EnvExecutor, RolloutConfig, RolloutMode  # noqa: E402
from spo_agents.rollout.engine import RolloutEngine  # noqa: E402
from spo_agents.rollout.scripted import IM_END, ScriptedBackend, product_policy  # noqa: E402




def nap_policy(turns):
    role, content = turns[-1]
    if role == "tool":
        return "\\boxed{" + re.search(r"report (\d+)", turns[1][1] if turns[0][0] == "system" else turns[0][1]).group(1) + "}"
    seconds = re.search(r"nap ([\d.]+)", content).group(1)
    return f'<tool_call>{{"name": "nap", "arguments": {{"seconds": {seconds}}}}}</tool_call>'


def user_prompt(turns):
    return next(content for role, content in turns if role == "user")


def run(coro):
    return asyncio.run(coro)


async def stream_n(engine, n):
    async with engine:
        return [await engine.get() for _ in range(n)]


def test_stream_mode_plays_calculator_episodes_with_exact_token_accounting():
    backend = ScriptedBackend(product_policy)
    tasks = CycleTasks([f"calc-L2-{i:05d}" for i in range(3)])
    config = RolloutConfig(num_slots=4, mode=RolloutMode.STREAM)
    engine = RolloutEngine("spo/Calculator-v0", backend, backend.formatter, config, tasks)
    episodes = run(stream_n(engine, 12))
    assert len(episodes) == 12
    for episode in episodes:
        assert episode.error is None and episode.terminated and not episode.truncated
        assert len(episode.turns) == 2
        first, second = episode.turns
        assert first.completion_text.startswith("<tool_call>") and "\\boxed{" in second.completion_text
        assert first.observation and first.observation.split(" ")[0].isdigit()
        # two turns: two policy spans and two env spans (the tool call, then grading the reply)
        assert all(t.policy_seconds > 0 and t.env_seconds > 0 for t in episode.turns)
        sample = episode.training_view()
        assert sample.token_ids == [i for t in episode.turns for i in t.prompt_ids + t.completion_ids]
        assert sum(sample.loss_mask) == episode.num_completion_tokens
        assert second.prompt_ids[0] == IM_END or first.completion_ids[-1] == IM_END
    assert len(tasks.released) >= 12


def test_slow_environment_does_not_block_other_slots():
    backend = ScriptedBackend(nap_policy)
    # one task naps 2.0 s, the others 0.0-0.1 s; 4 slots
    tasks = CycleTasks(["t20"] + ["t0", "t1"] * 50)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, RolloutConfig(num_slots=4), tasks)

    async def until_slow_one_arrives():
        async with engine:
            got = [await engine.get()]
            while got[-1].task_id != "t20":
                got.append(await engine.get())
            return got

    start = time.perf_counter()
    episodes = run(until_slow_one_arrives())
    elapsed = time.perf_counter() - start
    assert all(e.reward == 1.0 for e in episodes), [e.error for e in episodes]
    slow_env_time = sum(t.env_seconds for t in episodes[-1].turns)
    assert slow_env_time >= 2.0
    assert len(episodes) > 12  # the other slots kept streaming while the slow tool ran
    assert elapsed < slow_env_time + 1.0  # wall time near the slowest episode, not the sum


def test_group_mode_delivers_whole_groups():
    backend = ScriptedBackend(nap_policy)
    tasks = CycleTasks(["t1", "t3", "t0"])
    config = RolloutConfig(num_slots=3, mode=RolloutMode.GROUP, group_size=4)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, config, tasks)
    groups = run(stream_n(engine, 3))
    for group in groups:
        assert len(group) == 4 and len({e.task_id for e in group}) == 1
    from collections import Counter

    released = Counter(tasks.released)
    assert all(released[task] >= n for task, n in Counter(g[0].task_id for g in groups).items())


def test_batch_mode_collects_g_episodes_per_task():
    backend = ScriptedBackend(nap_policy)
    config = RolloutConfig(num_slots=5, mode=RolloutMode.BATCH, group_size=3)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, config)

    async def go():
        try:
            return await engine.collect_batch(["t1", "t2"])
        finally:
            engine.close()

    episodes = run(go())
    assert sorted(e.task_id for e in episodes) == ["t1"] * 3 + ["t2"] * 3
    assert all(e.reward == 1.0 for e in episodes)


@pytest.mark.parametrize("executor", [EnvExecutor.THREAD, EnvExecutor.PROCESS])
def test_failing_environments_end_one_episode_each(executor, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    backend = ScriptedBackend(lambda turns: "\\boxed{1}")
    names = ["ok", "boom", "hang", "ok"] + (["exit", "ok"] if executor is EnvExecutor.PROCESS else [])
    tasks = CycleTasks(names)
    config = RolloutConfig(num_slots=2, env_executor=executor, env_step_timeout_s=1.5)
    engine = RolloutEngine("engine_test_envs:test/Crashy-v0", backend, backend.formatter, config, tasks)

    async def until_every_task_seen():
        by_task = {}
        async with engine:
            while set(by_task) != set(names):
                episode = await asyncio.wait_for(engine.get(), 30)
                by_task.setdefault(episode.task_id, []).append(episode)
        return by_task

    by_task = run(until_every_task_seen())
    assert all(e.error is None and e.reward == 1.0 for e in by_task["ok"])
    assert "environment bug" in by_task["boom"][0].error
    assert "EnvTimeout" in by_task["hang"][0].error
    if executor is EnvExecutor.PROCESS:
        assert "EnvCrashed" in by_task["exit"][0].error


def test_episode_timeout_and_token_budget_truncate():
    backend = ScriptedBackend(nap_policy, seconds_per_token=0.0)
    config = RolloutConfig(num_slots=1, episode_timeout_s=0.5)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, config, CycleTasks(["t30"]))
    (episode,) = run(stream_n(engine, 1))
    assert episode.truncated and "episode timeout" in episode.error

    always_nap = ScriptedBackend(lambda turns: '<tool_call>{"name": "nap", "arguments": {"seconds": 0}}</tool_call>')
    config = RolloutConfig(num_slots=1, max_tokens_per_turn=100, max_tokens_per_episode=150)
    engine = RolloutEngine("test/Sleepy-v0", always_nap, always_nap.formatter, config, CycleTasks(["t1"]))
    (episode,) = run(stream_n(engine, 1))
    assert episode.truncated and not episode.terminated and episode.error is None
    assert episode.num_completion_tokens == 150  # stopped exactly at the episode budget
    assert episode.turns[-1].finish_reason.value == "length" and episode.turns[-1].observation is None


def test_policy_version_recorded_across_weight_updates():
    backend = ScriptedBackend(nap_policy)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, RolloutConfig(num_slots=2), CycleTasks(["t1", "t2"]))

    async def go():
        async with engine:
            first = [await engine.get() for _ in range(2)]
            backend.update_weights(version=7)
            later = [await engine.get() for _ in range(6)]
        return first, later

    first, later = run(go())
    assert all(v == 0 for e in first for v in e.policy_versions)
    assert 7 in later[-1].policy_versions
    assert set(v for e in later for v in e.policy_versions) <= {0, 7}


@pytest.mark.slow
def test_thousand_concurrent_episodes_bounded_and_accounted():
    import resource

    backend = ScriptedBackend(nap_policy)
    tasks = CycleTasks([f"t{k}" for k in range(3)])  # naps of 0, 0.1, 0.2 s
    config = RolloutConfig(num_slots=1000, env_workers=64, max_pending_episodes=2000)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, config, tasks)

    async def go():
        async with engine:
            got = []
            rss_after_first = None
            while len(got) < 3000:
                got.append(await asyncio.wait_for(engine.get(), 60))
                if len(got) == 1000:
                    rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return got, rss_after_first

    episodes, rss_mid = run(go())
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(episodes) == 3000
    assert all(e.error is None and e.reward == 1.0 for e in episodes)
    assert rss_end - rss_mid < 200_000  # KiB: streaming 2000 more episodes does not grow memory much
    assert engine.stats.episodes >= 3000


def test_admission_bound_pauses_new_episodes_until_acknowledged():
    backend = ScriptedBackend(nap_policy)
    tasks = CycleTasks(["t0", "t1"])
    config = RolloutConfig(num_slots=4, max_unconsumed=6)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, config, tasks)

    async def go():
        async with engine:
            got = [await engine.get() for _ in range(6)]
            await asyncio.sleep(0.5)
            started_while_blocked = tasks.index
            engine.acknowledge(6)
            got += [await asyncio.wait_for(engine.get(), 10) for _ in range(4)]
            return got, started_while_blocked

    episodes, started = run(go())
    assert started == 6  # nothing new began while 6 started episodes were unconsumed
    assert len(episodes) == 10 and all(e.reward == 1.0 for e in episodes)


def test_admission_bound_lets_started_groups_finish():
    backend = ScriptedBackend(nap_policy)
    config = RolloutConfig(num_slots=3, mode=RolloutMode.GROUP, group_size=4, max_unconsumed=5)
    engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter, config, CycleTasks(["t0", "t1"]))

    async def go():
        async with engine:
            first = await asyncio.wait_for(engine.get(), 10)
            second = await asyncio.wait_for(engine.get(), 10)  # the second group had begun: it completes
            engine.acknowledge(8)
            third = await asyncio.wait_for(engine.get(), 10)
            return first, second, third

    groups = run(go())
    assert [len(g) for g in groups] == [4, 4, 4]


def test_stop_ends_every_slot_whenever_it_is_called():
    """Python 3.11's wait_for swallowed a cancellation arriving as its inner call finished; a slot
    then kept polling the closed admission bound and stop() never returned (a CI hang)."""
    async def start_get_stop(i):
        backend = ScriptedBackend(nap_policy)
        tasks = CycleTasks(["t0"])
        engine = RolloutEngine("test/Sleepy-v0", backend, backend.formatter,
                               RolloutConfig(num_slots=4, max_unconsumed=6), tasks)
        engine.start()
        try:
            for _ in range(i % 5 + 1):
                await asyncio.wait_for(engine.get(), 10)
            await asyncio.sleep((i % 7) * 0.0003)
            stop = asyncio.create_task(engine.stop())
            done, _ = await asyncio.wait({stop}, timeout=5)
            return bool(done)
        finally:
            engine.close()

    async def go():
        return [await start_get_stop(i) for i in range(60)]

    stopped = run(go())
    assert all(stopped), f"stop() hung in {stopped.count(False)} of {len(stopped)} runs"
