"""`spo-agents bench learning`: the time-to-target arithmetic, and a tiny end-to-end run with its JSON keys."""

import argparse
import json
from pathlib import Path

import pytest

from spo_agents.cli import bench_learning
from spo_agents.trainer.learning_bench import CurvePoint, RunCurve, summarise, time_to_target
from spo_agents.trainer.config import load_config


def _curve(algo, seed, points):
    curve = RunCurve(algo, seed, [CurvePoint(i * 4, wall, i * 16, acc) for i, (wall, acc) in enumerate(points)])
    curve.wall_s, curve.episodes = curve.points[-1].wall_s, curve.points[-1].episodes
    return curve


def test_time_to_target_takes_the_first_checkpoint_of_the_mean_curve():
    curve = {"wall_s": [0.0, 10.0, 20.0, 30.0], "accuracy_mean": [0.1, 0.3, 0.5, 0.4]}
    assert time_to_target(curve, 0.3) == 10.0
    assert time_to_target(curve, 0.45) == 20.0
    assert time_to_target(curve, 0.6) is None


def test_summarise_ratio_and_bar():
    config = load_config(None, [])
    grpo = [_curve("grpo", s, [(0, 0.1), (50, 0.2), (100, 0.4)]) for s in (0, 1, 2)]
    fast = [_curve("spo", s, [(0, 0.1), (30, 0.4 + 0.01 * s), (60, 0.5)]) for s in (0, 1, 2)]
    result = summarise(grpo + fast, config, 10)
    assert result["grpo_final_accuracy_mean"] == pytest.approx(0.4) and result["spo_time_to_grpo_final_s"] == 30
    assert abs(result["time_ratio"] - 0.3) < 1e-9 and result["bar_met"] is True
    slow = [_curve("spo", s, [(0, 0.1), (80, 0.2), (90, 0.3)]) for s in (0, 1, 2)]
    result = summarise(grpo + slow, config, 10)
    assert result["time_ratio"] is None and result["bar_met"] is False
    flat = [_curve(algo, s, [(0, 0.1), (50, 0.1), (100, 0.1)]) for algo in ("spo", "grpo") for s in (0, 1, 2)]
    result = summarise(flat, config, 10)
    assert result["bar_met"] is None and "undefined" in result["note"]


def test_bench_learning_runs_at_a_tiny_scale(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench_learning.register_bench(parser.add_subparsers())
    out = tmp_path / "bench"
    tiny = ["steps=2", "batch_size=4", "group_size=2", "rollout.num_slots=4", "rollout.max_tokens_per_turn=8",
            "rollout.max_tokens_per_episode=16", "model=tiny", "warm_start=null"]
    config = Path(__file__).resolve().parents[2] / "configs" / "cpu-default.yaml"
    argv = ["learning", "--config", str(config), "--seeds", "0", "1", "--checkpoint-every", "1", "--eval-tasks", "3",
            "--output-dir", str(out)] + [a for item in tiny for a in ("--set", item)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("spo_final_accuracy_mean", "grpo_final_accuracy_mean", "spo_wall_s_mean", "grpo_wall_s_mean",
                "time_ratio", "bar_met", "episode_budget", "seeds", "initial_accuracy"):
        assert key in line, key
    assert line["seeds"] == [0, 1] and line["episode_budget"] == 8 and line["heldout_tasks"] == 3
    assert line["spo_episodes_mean"] >= 8 and line["grpo_episodes_mean"] == 8
    result = json.loads((out / "result.json").read_text())
    assert len(result["runs"]) == 4
    for run in result["runs"]:
        assert [p["step"] for p in run["points"]] == [0, 1, 2]
        assert run["points"][1]["wall_s"] < run["points"][2]["wall_s"]
    assert (out / "learning.png").exists()


def test_wilson_and_newcombe_intervals_match_published_values():
    from spo_agents.trainer.stats import difference_interval, wilson_interval

    low, high = wilson_interval(81, 263)  # Newcombe (1998), example: 0.2553 to 0.3662
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    low, high = difference_interval(48, 80, 56, 70)  # Newcombe (1998), 56/70 - 48/80, method 10: 0.0524 to 0.3339
    assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)
