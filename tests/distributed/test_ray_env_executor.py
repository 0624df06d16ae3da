"""The `ray` env executor on a real local Ray cluster: same episodes as in-process, and faults
(an env actor dying mid-step, killed from outside, an env raising or hanging) end one episode
each while the run goes on."""

import asyncio

import pytest

import engine_test_envs  # noqa: F401  (registers test/ envs in the driver; actors import it by module path)
from engine_test_envs import CycleTasks
from spo_agents.rollout.config import RolloutConfig, RolloutMode
from spo_agents.rollout.engine import RolloutEngine
from spo_agents.rollout.scripted import ScriptedBackend, product_policy

ray = pytest.importorskip("ray")
from spo_agents.distributed.env_pool import RayEnvPool, bind_pool, pool_for  # noqa: E402
from spo_agents.distributed.transport import to_plain  # noqa: E402




def signature(episode):
    turns = tuple((tuple(t.prompt_ids), tuple(t.completion_ids), t.reward, t.observation, t.finish_reason.value)
                  for t in episode.turns)
    return episode.task_id, turns, episode.terminated, episode.truncated, episode.error


def calculator_batch(executor, pool=None):
    backend = ScriptedBackend(product_policy)
    config = RolloutConfig(num_slots=4, mode=RolloutMode.BATCH, group_size=2, env_executor=executor, seed=3)
    engine = RolloutEngine("spo/Calculator-v0", backend, backend.formatter, config)
    if pool is not None:
        bind_pool(engine, pool)

    async def go():
        try:
            episodes = await engine.collect_batch([f"calc-L2-{i:05d}" for i in range(5)] + ["calc-L3-00002"])
            hosted = [info["envs"] for info in pool.ready()] if pool is not None else None
            return episodes, hosted
        finally:
            engine.close()

    return asyncio.run(go())


def test_ray_executor_plays_the_same_episodes_as_threads(ray_cluster):
    local, _ = calculator_batch("thread")
    with RayEnvPool(2, "spo/Calculator-v0") as pool:
        remote, hosted = calculator_batch("ray", pool)
        assert pool.stats["calls"] == sum(1 + len(e.turns) for e in remote)
        assert pool.stats["errors"] == 2  # the unknown task id, once per group member
    assert hosted == [2, 2]  # 4 slots spread round-robin over 2 actors
    assert len(local) == len(remote) == 12
    assert [e.error for e in remote if e.error] == ["KeyError: \"unknown task_id 'calc-L3-00002'\""] * 2
    assert sorted(map(signature, remote)) == sorted(map(signature, local))
    assert {e.reward for e in remote} == {0.0, 1.0}  # right on plain products, wrong on L3: a real comparison


async def collect_until(engine, done, limit_s=60):
    got = []
    async with engine:
        while not done(got):
            got.append(await asyncio.wait_for(engine.get(), limit_s))
    return got


def test_env_faults_end_one_episode_each_and_the_run_continues(ray_cluster):
    backend = ScriptedBackend(lambda turns: "\\boxed{1}")
    names = ["ok", "boom", "ok", "exit", "ok", "hang", "ok", "exit", "ok", "ok"]
    # Ray notices a dead worker in about 2 s here; a shorter step limit would read it as a timeout
    config = RolloutConfig(num_slots=2, env_executor="ray", env_workers=2, env_step_timeout_s=4)
    engine = RolloutEngine("engine_test_envs:test/Crashy-v0", backend, backend.formatter, config, CycleTasks(names))
    seen = {}

    def done(got):
        if got and not seen:
            seen["pool"] = pool_for(engine)
            seen["pids"] = [info["pid"] for info in seen["pool"].ready()]
        return len(got) >= len(names) + 4

    episodes = asyncio.run(collect_until(engine, done))
    by_task = {}
    for episode in episodes:
        by_task.setdefault(episode.task_id, []).append(episode)
    assert by_task["exit"] and all("EnvCrashed" in e.error and "died" in e.error for e in by_task["exit"])
    assert all("environment bug" in e.error for e in by_task["boom"])
    assert all("EnvTimeout" in e.error for e in by_task["hang"])
    assert all(e.error is None and e.reward == 1.0 for e in by_task["ok"])
    last_crash = max(i for i, e in enumerate(episodes) if e.task_id == "exit")
    assert any(e.task_id == "ok" for e in episodes[last_crash + 1:])  # later episodes are fine
    assert engine.stats.errors == len(episodes) - len(by_task["ok"])
    pool = seen["pool"]
    assert pool.closed  # the engine's own pool ends with the engine
    assert pool.stats["crashes"] == len(by_task["exit"]) and pool.stats["timeouts"] == len(by_task["hang"])


def test_killing_an_env_actor_mid_step(ray_cluster):
    backend = ScriptedBackend(engine_test_envs_nap_policy)
    with RayEnvPool(2, "engine_test_envs:test/Sleepy-v0") as pool:
        pid_before = pool.ready()[0]["pid"]
        config = RolloutConfig(num_slots=2, env_executor="ray", env_step_timeout_s=30)
        tasks = CycleTasks(["t30"] + ["t1"] * 100)  # slot 0 (worker 0) naps 3 s first
        engine = RolloutEngine("engine_test_envs:test/Sleepy-v0", backend, backend.formatter, config, tasks)
        bind_pool(engine, pool)

        async def go():
            got = []
            async with engine:
                await asyncio.sleep(1.5)
                pool.kill_worker(0)  # Ray restarts it
                while sum(e.slot == 0 and e.error is None for e in got) < 3:
                    got.append(await asyncio.wait_for(engine.get(), 60))
            return got

        episodes = asyncio.run(go())
        engine.close()
        pid_after = pool.ready()[0]["pid"]
    (killed,) = [e for e in episodes if e.task_id == "t30"]
    assert killed.truncated and "EnvCrashed" in killed.error
    assert pid_after != pid_before
    rest = [e for e in episodes if e.task_id != "t30"]
    assert rest and all(e.error is None and e.reward == 1.0 for e in rest)


def engine_test_envs_nap_policy(turns):
    """Nap as the task says, then report the number (the policy of tests/rollout/test_engine.py)."""
    import re

    role, content = turns[-1]
    if role == "tool" or content.startswith("<tool_response>"):
        prompt = next(c for r, c in turns if r == "user")
        return "\\boxed{" + re.search(r"report (\d+)", prompt).group(1) + "}"
    seconds = re.search(r"nap ([\d.]+)", content).group(1)
    return f'<tool_call>{{"name": "nap", "arguments": {{"seconds": {seconds}}}}}</tool_call>'


def test_only_plain_data_crosses_the_actor_boundary():
    import numpy as np

    assert to_plain({"a": (1, np.float32(0.5), [np.int64(3)]), "b": np.arange(2)}) == {"a": (1, 0.5, [3]), "b": [0, 1]}
    with pytest.raises(TypeError, match=r"info\['env'\].*is not plain data"):
        to_plain({"env": object()}, "info")


def test_scaling_benchmark_runs_from_cli_options(ray_cluster, tmp_path, capsys):
    import argparse
    import json

    from spo_agents.distributed.bench import add_ray_arguments, run_ray_scaling

    parser = argparse.ArgumentParser()
    add_ray_arguments(parser)
    parser.add_argument("--out")
    args = parser.parse_args(["--ray-workers", "1,2", "--ray-episodes", "12", "--ray-slots", "4",
                              "--ray-tool-ms", "5", "--out", str(tmp_path)])
    payload = run_ray_scaling(args)
    assert [(p["executor"], p["workers"]) for p in payload["points"]] == [("thread", None), ("ray", 1), ("ray", 2)]
    for point in payload["points"]:
        assert point["episodes"] == 12 and point["errors"] == 0 and point["reward_mean"] == 1.0
        assert point["episodes_per_s"] > 0 and point["mean_env_s_per_episode"] > 0
    assert payload["points"][1]["speedup_vs_1_actor"] == 1.0 and payload["work_units"] > 0
    assert payload["cluster_cpus"] == 4  # it joined the test's cluster instead of starting one
    assert json.loads((tmp_path / "ray_env_scaling.json").read_text()) == json.loads(json.dumps(payload))
    assert "episodes/s" in capsys.readouterr().out
