"""`spo-agents bench learning`: the time-to-target and summary arithmetic on hand-made curves, the
calibration bins, and a tiny end-to-end run of every arm with its JSON keys and files."""

import argparse
import json

import numpy as np
import pytest

from spo_agents.bench.learning import CurvePoint, RunCurve
from spo_agents.bench.learning_report import calibration_bins, summarise, time_to_target
from spo_agents.cli import bench_learning
from spo_agents.trainer.config import load_config


def _curve(arm, seed, points, algo=None):
    curve = RunCurve(arm, algo or arm.split("-")[0], seed,
                     [CurvePoint(i * 4, wall, i * 16, acc) for i, (wall, acc) in enumerate(points)])
    curve.wall_s, curve.episodes = curve.points[-1].wall_s, curve.points[-1].episodes
    curve.mechanism = {"useful_episode_frac": 0.5, "degenerate_group_frac": 0.3 if curve.algo == "grpo" else None}
    return curve


def test_time_to_target_takes_the_first_trained_checkpoint_of_the_mean_curve():
    curve = {"wall_s": [0.0, 10.0, 20.0, 30.0], "accuracy_mean": [0.1, 0.3, 0.5, 0.4]}
    assert time_to_target(curve, 0.3) == 10.0
    assert time_to_target(curve, 0.45) == 20.0
    assert time_to_target(curve, 0.6) is None
    assert time_to_target(curve, 0.05) == 10.0  # the start is not the method's doing


def test_summary_takes_the_best_grpo_arm_and_gives_per_seed_ratios():
    config = load_config(None, ["train_tasks=8"])
    g4 = [_curve("grpo-g4", s, [(0, 0.1), (50, 0.2), (100, 0.4)]) for s in (0, 1, 2)]
    g8 = [_curve("grpo-g8", s, [(0, 0.1), (50, 0.2), (100, 0.3)]) for s in (0, 1, 2)]
    fast = [_curve("spo", s, [(0, 0.1), (30 + s, 0.4 + 0.01 * s), (60, 0.5)]) for s in (0, 1, 2)]
    result = summarise(g4 + g8 + fast, config, 10, n0=4)
    assert result["grpo_reference_arm"] == "grpo-g4" and result["grpo_final_accuracy"] == pytest.approx(0.4)
    assert result["spo_time_to_grpo_final_s"] == pytest.approx(31.0)  # mean wall of the first checkpoint
    assert result["spo_time_to_grpo_final_ratio"] == pytest.approx(0.31)
    assert result["spo_time_ratio_per_seed"] == pytest.approx([0.30, 0.31, 0.32])
    low, high = result["spo_time_ratio_ci95"]
    assert low < 0.31 < high and high - low == pytest.approx(2 * 4.303 * 0.01 / np.sqrt(3))
    assert result["grpo_gain"] == pytest.approx(0.3) and result["spo_gain"] == pytest.approx(0.4)
    assert result["bar_met"] is True and result["train_tasks"] == 8
    assert result["per_arm"]["grpo-g4"]["degenerate_group_frac"] == pytest.approx(0.3)
    band = result["per_arm"]["spo"]["curve"]  # 95% t-band over the seeds at each checkpoint
    assert band["accuracy_mean"][1] == pytest.approx(0.41)
    assert band["accuracy_ci95_low"][1] < 0.41 < band["accuracy_ci95_high"][1]
    slow = [_curve("spo", s, [(0, 0.1), (80, 0.2), (90, 0.3)]) for s in (0, 1, 2)]
    result = summarise(g4 + slow, config, 10, n0=4)
    assert result["spo_time_to_grpo_final_ratio"] is None and result["bar_met"] is False
    assert result["spo_time_ratio_ci95"] is None
    small_gain = [_curve("grpo-g4", s, [(0, 0.1), (50, 0.2), (100, 0.25)]) for s in (0, 1, 2)]
    result = summarise(small_gain + fast, config, 10, n0=4)
    assert result["spo_time_to_grpo_final_ratio"] < 0.7 and result["bar_met"] is False
    assert "cannot show a difference" in result["note"]


def test_calibration_bins_average_the_rewards_of_each_value_band():
    bins = calibration_bins([0.05, 0.08, 0.55, 0.95, 1.0], [0, 1, 1, 1, 1])
    assert bins == [(pytest.approx(0.065), 0.5, 2), (0.55, 1.0, 1), (pytest.approx(0.975), 1.0, 2)]


def test_bench_learning_runs_every_arm_at_a_tiny_scale(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench_learning.register_bench(parser.add_subparsers())
    out = tmp_path / "bench"
    warm = "{tiny_hidden_size: 16, tiny_layers: 1, tiny_tokenizer_env_episodes: 5, num_demos: 4, steps: 2}"
    tiny = ["steps=2", "batch_size=4", "rollout.num_slots=4", "rollout.max_tokens_per_turn=8",
            "rollout.max_tokens_per_episode=16", f"model={tmp_path / 'sft'}", f"warm_start={warm}",
            "train_tasks=6", "env_kwargs={digits: 1, max_steps: 3, num_tasks: 60, instructions: false}"]
    argv = ["learning", "--preset", "learning-bench", "--seeds", "0", "1", "--checkpoint-every", "1", "--eval-tasks",
            "3", "--n0", "2", "--arms", "spo", "spo-uniform", "grpo-g4", "--out", str(out)] + [a for item in tiny
                                                                                   for a in ("--set", item)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("spo_time_to_grpo_final_ratio", "grpo_gain", "spo_gain", "seeds", "initial_accuracy",
                "grpo_reference_arm", "bar_met", "episode_budget", "spo_time_ratio_per_seed"):
        assert key in line, key
    assert line["seeds"] == [0, 1] and line["episode_budget"] == 8 and line["heldout_tasks"] == 3
    assert line["arms"] == ["spo", "spo-uniform", "grpo-g4"] and line["train_tasks"] == 6
    assert line["env_id"] == "spo/ChainCalc-v0" and (tmp_path / "sft" / "sft.json").is_file()  # one warm start
    result = json.loads((out / "result.json").read_text())
    assert len(result["runs"]) == 6
    for run in result["runs"]:
        assert [p["step"] for p in run["points"]] == [0, 1, 2]
        assert run["points"][1]["wall_s"] < run["points"][2]["wall_s"]
        if run["arm"] in ("spo", "spo-uniform"):  # the offline init is charged: 6 pool tasks x n0 2
            assert run["estimate_s"] > 0 and run["points"][1]["wall_s"] > run["estimate_s"]
            assert run["points"][1]["episodes"] >= 12 + 4
        else:
            assert run["estimate_s"] == 0 and run["points"][2]["episodes"] == 8
            assert 0 <= run["mechanism"]["degenerate_group_frac"] <= 1
        assert 0 <= run["mechanism"]["useful_episode_frac"] <= 1
    calibration = json.loads((out / "calibration.json").read_text())
    assert set(calibration) == {"spo-seed0", "spo-seed1", "spo-uniform-seed0", "spo-uniform-seed1"}
    assert all(len(v[0]) == len(v[1]) >= 8 for v in calibration.values())
    assert (out / "learning.png").exists() and (out / "calibration.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--arms", "spo", "spo-noinit"], "at least one SPO arm and one GRPO arm"),
    (["--n0", "0"], "--n0, --checkpoint-every and --eval-tasks must be >= 1"),
    (["--output-dir", "{taken}"], "already holds runs"),
])
def test_bench_learning_refuses_what_cannot_be_compared(tmp_path, capsys, argv, message):
    from spo_agents.cli import main

    (tmp_path / "taken" / "spo-seed0").mkdir(parents=True)
    argv = [a.format(taken=tmp_path / "taken") for a in argv]
    assert main(["bench", "learning", *argv]) == 2
    assert message in capsys.readouterr().err
