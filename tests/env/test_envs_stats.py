"""`spo-agents envs show ID --stats`: oracle episode-length statistics and their summary."""

import json

import pytest

from spo_agents.cli import build_parser
from spo_agents.cli.env_stats import EpisodeStats, approx_tokens, histogram, stats_report, summarize


def test_summarize_against_hand_computed_numbers():
    summary = summarize([1, 2, 3, 4, 100])
    assert summary == {"min": 1.0, "p10": 1.4, "p50": 3.0, "p90": 61.6, "p99": 96.16, "max": 100.0, "mean": 22.0}
    assert summarize([]) == {"min": 0.0, "p10": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}


def test_histogram_uses_power_of_two_bins():
    assert histogram([1, 2, 3, 4, 9], width=4) == [
        "   1 | ##   1",
        " 2-3 | #### 2",
        " 4-7 | ##   1",
        "8-15 | ##   1",
    ]
    assert histogram([]) == []
    assert [row.split("|")[0].strip() for row in histogram([5, 40])] == ["4-7", "8-15", "16-31", "32-63"]
    assert histogram([0, 1], width=2)[0] == "0 | ## 1"  # zero-turn episodes get their own row


def test_approx_tokens_is_characters_over_four_rounded_up():
    assert [approx_tokens(t) for t in ("", "abcd", "abcde")] == [0, 1, 2]


def test_report_counts_rewards_and_truncations():
    episodes = [EpisodeStats("a", 2, 10, 100, 1.0, False), EpisodeStats("b", 6, 30, 300, 0.0, True)]
    report = stats_report("spo/X-v0", episodes)
    assert report["episodes"] == 2 and report["mean_reward"] == 0.5 and report["truncated"] == 1
    assert report["turns"]["mean"] == 4.0 and report["episode_tokens"]["max"] == 300.0


@pytest.mark.parametrize("env_id", ["spo/FileSearch-v0", "spo/ChainCalc-v0"])
def test_stats_flag_through_argparse(env_id, capsys):
    args = build_parser().parse_args(["envs", "show", env_id, "--stats", "--samples", "25", "--seed", "2"])
    assert (args.stats, args.samples, args.split) == (True, 25, "train")
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["env_id"] == env_id and report["episodes"] == 25 and report["mean_reward"] == 1.0
    turns = report["turns"]
    assert 2 <= turns["min"] <= turns["p10"] <= turns["p50"] <= turns["p90"] <= turns["p99"] <= turns["max"]
    header = next(line for line in lines if line.startswith("per episode"))
    assert header.split()[2:] == ["min", "p10", "p50", "p90", "p99", "max", "mean"]
    assert any(line.startswith("turns ") for line in lines) and "turns per episode:" in lines


def test_show_without_stats_still_prints_a_transcript(capsys):
    args = build_parser().parse_args(["envs", "show", "spo/ChainCalc-v0", "--seed", "1"])
    assert args.stats is False and args.func(args) == 0
    assert "reward=1" in capsys.readouterr().out
