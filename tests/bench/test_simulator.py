"""The throughput simulator against closed-form cases, the paper anchor and the episode log."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from spo_agents.distributions import (
    Beta,
    Constant,
    Empirical,
    LogNormal,
    Pareto,
    parse_distribution,
)
from spo_agents.bench.simulator import (
    PAPER_READINGS,
    PAPER_SPEEDUP,
    ComponentModel,
    SimConfig,
    Workload,
    compare,
    paper_setting,
    read_episode_log,
    simulate,
)


class Sequence:
    """Episode model returning fixed durations first, then `rest` seconds each."""

    def __init__(self, first: list[float], rest: float = 1.0):
        self.first, self.rest = first, rest

    def sample(self, rng, n):
        d = np.full(n, self.rest)
        d[: len(self.first)] = self.first
        return d, np.full(n, 10.0)


def constant_workload(seconds: float, success=Beta(1, 1)) -> Workload:
    return Workload(Sequence([], rest=seconds), success, seed=0, chunk=8192)


# --- latency distributions ----------------------------------------------------------------


def test_parse_distribution_forms(tmp_path):
    assert parse_distribution("3") == Constant(3.0)
    assert parse_distribution("lognormal:median=2,sigma=1") == LogNormal(2.0, 1.0)
    assert parse_distribution("lognormal:2,0.5") == LogNormal(2.0, 0.5)
    assert parse_distribution("pareto:alpha=1.5") == Pareto(1.5, 1.0)
    assert parse_distribution("beta:a=2,b=3") == Beta(2.0, 3.0)
    assert parse_distribution("empirical:1,2,5") == Empirical((1.0, 2.0, 5.0))
    path = tmp_path / "lat.txt"
    path.write_text("0.5\n\n1.5\n")
    assert parse_distribution(f"empirical:@{path}") == Empirical((0.5, 1.5))
    with pytest.raises(ValueError):
        parse_distribution("gamma:1,2")
    with pytest.raises(ValueError):
        parse_distribution("lognormal:median=2,mu=1")


def test_distribution_samples_match_their_parameters():
    rng = np.random.default_rng(0)
    x = LogNormal(2.0, 0.8).sample(rng, 200_000)
    assert np.median(x) == pytest.approx(2.0, rel=0.02)
    assert np.log(x).std() == pytest.approx(0.8, rel=0.02)
    p = Pareto(2.5, 3.0).sample(rng, 200_000)
    assert p.min() >= 3.0
    assert p.mean() == pytest.approx(Pareto(2.5, 3.0).mean, rel=0.03)
    e = Empirical((1.0, 4.0)).sample(rng, 10_000)
    assert set(np.unique(e)) == {1.0, 4.0}


# --- closed-form cases --------------------------------------------------------------------


def test_constant_latency_streaming_methods_equal_ideal():
    cfg = SimConfig(slots=64, batch=32, group=8, step_seconds=2.0, batches=40)
    m = compare(constant_workload(5.0), cfg).metrics
    # 64 slots finish together every 5 s: two batches per 5 s, batch fill B * d / N = 2.5 s.
    assert m["ideal"]["batch_fill_s"] == pytest.approx(2.5)
    for method in ("grpo_group", "spo"):
        assert m[method]["batch_fill_s"] == pytest.approx(2.5)
        assert m[method]["slot_utilisation"] == pytest.approx(1.0)
        # Batches arrive in pairs, so the last one is taken one learner step after it is ready.
        assert m[method]["elapsed_s"] == pytest.approx(100.0 + 2.0)
    # Sync runs B episodes on B of the 64 slots, then the step: 40 batches end at 40*5 + 39*2.
    assert m["grpo_sync"]["episodes_per_s"] == pytest.approx(40 * 32 / 278.0)
    assert m["grpo_sync"]["slot_utilisation"] == pytest.approx(40 * 32 * 5.0 / (64 * 278.0))


def test_constant_latency_sync_equals_ideal_when_slots_equal_batch_and_step_is_free():
    cfg = SimConfig(slots=16, batch=16, group=4, step_seconds=0.0, batches=30)
    m = compare(constant_workload(3.0), cfg).metrics
    for method in ("grpo_sync", "grpo_group", "spo"):
        assert m[method]["batch_fill_s"] == pytest.approx(3.0)
        assert m[method]["eps_ratio_to_ideal"] == pytest.approx(1.0)
        assert m[method]["slot_utilisation"] == pytest.approx(1.0)


def test_single_slow_episode_hand_computed_batch_fill():
    # Episode 0 takes 10 s, all others 1 s; N=8, B=G=4, free learner, no admission bound.
    # sync (4 lanes): batches ready at 10, 11, 12.
    # SPO: 7 usable at t=1, 7 refills usable at t=2: batches at 1, 2, 2.
    # group-gated: group 0 waits for episode 0; groups 1, 2, 3 complete at 1, 2, 3.
    cfg = SimConfig(slots=8, batch=4, group=4, step_seconds=0.0, batches=3, max_pending=100)
    expected = {"grpo_sync": [10, 11, 12], "spo": [1, 2, 2], "grpo_group": [1, 2, 3]}
    for method, ready in expected.items():
        workload = Workload(Sequence([10.0]), seed=0)
        trace = simulate(workload, cfg, method)
        assert trace.ready.tolist() == ready, method
    m = compare(Workload(Sequence([10.0]), seed=0), cfg).metrics
    assert m["grpo_sync"]["batch_fill_s"] == pytest.approx(4.0)
    assert m["spo"]["batch_fill_s"] == pytest.approx(2 / 3)
    assert m["grpo_group"]["batch_fill_s"] == pytest.approx(1.0)
    # SPO never trains the slow episode within 3 batches; group-gated trains none of group 0.
    assert 0 not in simulate(Workload(Sequence([10.0]), seed=0), cfg, "spo").trained
    assert 0 not in simulate(Workload(Sequence([10.0]), seed=0), cfg, "grpo_group").trained


def test_learner_bottleneck_lowers_spo_utilisation():
    workload = Workload(ComponentModel(), seed=1)
    fast = compare(workload, SimConfig(step_seconds=5.0, batches=100)).metrics["spo"]
    slow = compare(workload, SimConfig(step_seconds=60.0, batches=100)).metrics["spo"]
    assert fast["utilisation_ratio_to_ideal"] >= 0.95
    assert slow["utilisation_ratio_to_ideal"] < 0.6
    assert slow["learner_idle_fraction"] < 0.01


def test_staleness_zero_for_sync_and_positive_when_streaming():
    m = compare(Workload(ComponentModel(), seed=2), SimConfig(batches=60)).metrics
    assert m["grpo_sync"]["staleness_max"] == 0
    assert m["spo"]["staleness_mean"] > 0.5
    assert m["grpo_group"]["staleness_mean"] > 0.5


# --- rewards and degenerate groups --------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_degenerate_groups_when_tasks_always_or_never_succeed(p):
    cfg = SimConfig(slots=16, batch=16, group=4, step_seconds=0.0, batches=10)
    m = compare(constant_workload(1.0, Constant(p)), cfg).metrics
    for method in m:
        assert m[method]["useful_episodes_per_s"] == 0.0
        assert m[method]["degenerate_fraction"] == 1.0
        assert m[method]["episodes_per_s"] > 0


def test_degenerate_fraction_matches_closed_form():
    cfg = SimConfig(slots=64, batch=32, group=8, step_seconds=0.0, batches=250)
    m = compare(Workload(ComponentModel(), Beta(1, 1), seed=3), cfg).metrics
    # Uniform p: P(all 8 equal) = E[p^8 + (1-p)^8] = 2/9.
    assert m["grpo_sync"]["degenerate_fraction"] == pytest.approx(2 / 9, abs=0.04)
    assert m["grpo_group"]["degenerate_fraction"] == pytest.approx(2 / 9, abs=0.04)
    assert m["spo"]["degenerate_fraction"] == 0.0
    half = compare(Workload(ComponentModel(), Constant(0.5), seed=3), cfg).metrics
    assert half["grpo_sync"]["degenerate_fraction"] == pytest.approx(2 * 0.5**8, abs=0.01)


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_numbers_and_lazy_draws_do_not_depend_on_chunking():
    cfg = SimConfig(batches=30)
    a = compare(Workload(ComponentModel(), seed=7), cfg).metrics
    b = compare(Workload(ComponentModel(), seed=7), cfg).metrics
    c = compare(Workload(ComponentModel(), seed=8), cfg).metrics
    assert a == b
    assert a["spo"]["episodes_per_s"] != c["spo"]["episodes_per_s"]
    w1 = Workload(ComponentModel(), seed=7, chunk=64)
    w2 = Workload(ComponentModel(), seed=7, chunk=64)
    w1.ensure(10)
    w1.ensure(300)
    w2.ensure(300)
    assert np.array_equal(w1.duration, w2.duration)


def test_config_validation():
    with pytest.raises(ValueError):
        SimConfig(batch=30, group=8)
    with pytest.raises(ValueError):
        SimConfig(batch=32, group=8, max_pending=35)


# --- the paper anchor ---------------------------------------------------------------------


@pytest.mark.parametrize("reading", sorted(PAPER_READINGS))
def test_paper_setting_within_ten_percent(reading):
    res = paper_setting(seed=0, reading=reading)
    assert abs(res["speedup"] / 4.35 - 1) < 0.10
    assert res["paper_speedup"] == pytest.approx(PAPER_SPEEDUP)
    # A lighter tail must give a clearly smaller speedup: the figure is not a constant.
    lighter = paper_setting(seed=0, reps=500, reading=reading, sigma=res["sigma"] - 0.3)
    assert lighter["speedup"] < 0.75 * res["speedup"]


# --- episode logs and the command ---------------------------------------------------------

EPISODE_LOG = [
    {"env_id": "calc", "task_id": "t1", "terminated": True, "truncated": False, "error": None,
     "started_at": 0.0, "finished_at": 3.0, "turns": [
         {"prompt_ids": [1], "completion_ids": [5, 6, 7], "logprobs": [0, 0, 0],
          "finish_reason": "stop", "policy_version": 0, "policy_seconds": 1.0,
          "env_seconds": 0.5, "reward": 0.0},
         {"prompt_ids": [1], "completion_ids": [8, 9], "logprobs": [0, 0],
          "finish_reason": "stop", "policy_version": 0, "policy_seconds": 0.75,
          "env_seconds": 0.0, "reward": 1.0}]},
    {"env_id": "calc", "task_id": "t2", "terminated": False, "truncated": True,
     "error": "tool timeout", "started_at": 0.0, "finished_at": 9.0, "turns": [
         {"prompt_ids": [1], "completion_ids": [5], "logprobs": [0], "finish_reason": "stop",
          "policy_version": 1, "policy_seconds": 0.25, "env_seconds": 8.0, "reward": 0.0}]},
]


def write_log(path):
    lines = [json.dumps(e) for e in EPISODE_LOG]
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n")
    return path


def test_read_episode_log(tmp_path):
    model = read_episode_log(write_log(tmp_path / "episodes.jsonl"))
    assert model.durations == (2.25, 8.25)
    assert model.tokens == (5.0, 1.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    with pytest.raises(ValueError):
        read_episode_log(bad)


def test_command_with_episode_log_writes_run_folder_and_json_last(tmp_path, capsys):
    from spo_agents.cli import bench_throughput

    parser = argparse.ArgumentParser()
    bench_throughput.register_bench(parser.add_subparsers())
    log = write_log(tmp_path / "episodes.jsonl")
    args = parser.parse_args([
        "throughput", "--out", str(tmp_path / "run"), "--episode-log", str(log),
        "--batches", "20", "--paper-reps", "50", "--sweep-sigmas", "0.5,1.0",
    ])
    assert args.func(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["mode"] == "sim" and last["workload"] == "episode_log"
    assert {"paper_setting_speedup", "spo_utilisation_vs_ideal"} <= set(last)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(saved["tail_sweep"]) == 2
    assert saved["metrics"]["spo"]["tokens_per_s"] > 0
    with pytest.raises(SystemExit):
        parser.parse_args(["throughput", "--mode", "nonsense"])
    with pytest.raises(SystemExit) as help_exit:
        parser.parse_args(["throughput", "--help"])
    assert help_exit.value.code == 0
    assert "--episode-log" in capsys.readouterr().out
