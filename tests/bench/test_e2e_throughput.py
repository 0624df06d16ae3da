"""The latency wrapper, and a short end-to-end throughput run (real trainer, tiny model, CPU)."""

from __future__ import annotations

import dataclasses
import json
import time

import gymnasium
import numpy as np
import pytest

import spo_agents  # noqa: F401  (registers the environments)
from spo_agents.cli import bench_throughput, main
from spo_agents.env import LatencyWrapper
from spo_agents.env.latency import LATENCY_ENV_ID, make_with_latency


def _wrapped(spec="lognormal:median=0.2,sigma=1.0", seed=0, **kw):
    delays = []
    env = LatencyWrapper(gymnasium.make("spo/Calculator-v0"), spec, seed=seed, sleep=delays.append, **kw)
    return env, delays


def test_delay_depends_only_on_seed_episode_seed_and_turn():
    a, delays_a = _wrapped()
    b, delays_b = _wrapped()
    for env in (a, b):
        env.reset(seed=7)
        env.step("<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2*3\"}}</tool_call>")
        env.step("\\boxed{6}")
    assert delays_a == delays_b and len(delays_a) == 2
    assert delays_a[0] != delays_a[1]  # a new draw per turn
    assert delays_a == [a.latency(7, 0), a.latency(7, 1)]
    assert a.injected_seconds == pytest.approx(sum(delays_a)) and a.last_latency_s == delays_a[1]
    # another episode seed or wrapper seed gives other delays; the task does not enter
    c, _ = _wrapped(seed=1)
    assert a.latency(8, 0) != a.latency(7, 0) and c.latency(7, 0) != a.latency(7, 0)


def test_wrapper_changes_timing_only():
    plain = gymnasium.make("spo/Calculator-v0")
    wrapped, delays = _wrapped()
    for env in (plain, wrapped):
        env.reset(seed=3)
    actions = ["<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"40+2\"}}</tool_call>",
               "\\boxed{42}"]
    for action in actions:
        assert wrapped.step(action) == plain.step(action)  # observation, reward, flags and info
    assert len(delays) == 2


def test_unseeded_resets_are_reproducible_and_distinct():
    a, delays_a = _wrapped()
    b, delays_b = _wrapped()
    for env in (a, b):
        for _ in range(3):
            env.reset()
            env.step("\\boxed{1}")
    assert delays_a == delays_b and len(set(delays_a)) == 3


def test_distribution_and_cap():
    env, _ = _wrapped("lognormal:median=0.2,sigma=1.0")
    draws = np.array([env.latency(k, 0) for k in range(4000)])
    assert np.median(draws) == pytest.approx(0.2, rel=0.08)
    assert np.std(np.log(draws)) == pytest.approx(1.0, rel=0.08)
    capped, _ = _wrapped("pareto:alpha=1.1,scale=0.1", max_seconds=0.5)
    heavy = np.array([capped.latency(k, 0) for k in range(2000)])
    assert heavy.min() >= 0.1 and heavy.max() == 0.5 and (heavy == 0.5).mean() > 0.05
    with pytest.raises(ValueError):
        _wrapped("lognormal:median=-1,sigma=1")


def test_registered_id_wraps_the_inner_env_and_sleeps():
    env = gymnasium.make(LATENCY_ENV_ID, inner_env_id="spo/Calculator-v0", latency="constant:0.15",
                         split="heldout")
    assert "heldout" in env.unwrapped.splits and env.unwrapped.split == "heldout"
    env.reset(seed=0)
    started = time.perf_counter()
    env.step("\\boxed{0}")
    assert time.perf_counter() - started >= 0.15
    with pytest.raises(ValueError):
        make_with_latency(LATENCY_ENV_ID)


def test_cli_defaults_mirror_the_harness():
    from spo_agents.bench.e2e import E2EConfig

    fields = {f.name: f.default for f in dataclasses.fields(E2EConfig)}
    d = bench_throughput.E2E_DEFAULTS
    assert (d["slots"], d["batch"], d["group"], d["steps"], d["repeats"], d["latency"], d["max_latency"]) == (
        fields["slots"], fields["batch"], fields["group"], fields["steps"], fields["repeats"], fields["latency"],
        fields["max_latency_s"])


def test_backend_ray_runs_the_ray_scaling_benchmark(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(args, **overrides):
        calls.append((args.ray_workers, overrides))
        return {"points": [{"workers": 1, "episodes_per_s": 3.0}]}

    monkeypatch.setattr(bench_throughput, "run_ray_scaling", fake)
    assert main(["bench", "throughput", "--backend", "ray", "--ray-workers", "1", "--out", str(tmp_path)]) == 0
    assert calls == [("1", {"out": str(tmp_path)})]
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["backend"] == "ray" and line["points"][0]["episodes_per_s"] == 3.0


def test_e2e_run_same_budget_and_spo_beats_sync(tmp_path, capsys):
    # N = B = 4, 3 learner steps. Seed 1's latency stream (log-normal, sigma 1.5) has a 2.2 s
    # delay in GRPO sync's second batch: sync waits about 3.4 s for its batches' slowest
    # episodes alone, while SPO's 4 slots finish its 12 episodes in under 2 s of delays.
    out = tmp_path / "bench"
    argv = ["bench", "throughput", "--mode", "e2e", "--e2e-envs", "spo/Calculator-v0", "--e2e-slots", "4",
            "--e2e-batch", "4", "--e2e-group", "2", "--e2e-steps", "3", "--e2e-repeats", "1",
            "--e2e-latency", "lognormal:median=0.2,sigma=1.5", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("e2e_spo_vs_grpo_sync", "e2e_spo_vs_grpo_group", "e2e_by_env", "e2e_sim_prediction"):
        assert key in line
    assert line["e2e_spo_vs_grpo_sync"] > 1.0
    results = json.loads((out / "results.json").read_text())
    metrics = results["envs"]["spo/Calculator-v0"]["metrics"]
    assert {m["episodes_trained"] for name, m in metrics.items() if name != "ideal"} == {12}
    assert metrics["spo"]["episodes_per_s"] > metrics["grpo_sync"]["episodes_per_s"]
    assert line["e2e_spo_vs_grpo_sync"] == pytest.approx(
        metrics["spo"]["episodes_per_s"] / metrics["grpo_sync"]["episodes_per_s"], rel=1e-3)
    for name in ("grpo_sync", "grpo_group", "spo"):
        m = metrics[name]
        assert 0.0 < m["slot_utilisation"] <= 1.0 + 1e-6 and 0.0 <= m["learner_idle_fraction"] <= 1.0
        run = out / "spo_Calculator-v0" / "round-0" / name
        episodes = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
        assert len(episodes) >= 12 and all(e["env_id"] == LATENCY_ENV_ID for e in episodes)
        # the injected latency is what the engine measured as environment time
        assert max(sum(t["env_seconds"] for t in e["turns"]) for e in episodes) > 0.3
    assert metrics["grpo_sync"]["staleness_max"] == 0  # synchronous: always on-policy
