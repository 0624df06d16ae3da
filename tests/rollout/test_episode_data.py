"""Episode data: the training view's loss mask, properties, and lossless JSONL logs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from spo_agents.rollout import (
    Episode,
    FinishReason,
    Turn,
    append_episode_log,
    iter_episode_log,
    read_episode_log,
)


def make_episode():
    turn0 = Turn(
        prompt_ids=[10, 11, 12],
        completion_ids=[20, 21],
        logprobs=[-0.1, -1e-300],
        finish_reason=FinishReason.TOOL_CALL,
        policy_version=3,
        completion_text="<tool_call>x</tool_call>",
        observation="391 \u00e9\u4e2d",
        reward=0.0,
        policy_seconds=0.25,
        env_seconds=0.125,
    )
    turn1 = Turn(
        prompt_ids=[13, 14],
        completion_ids=[22, 23, 24],
        logprobs=[-2.5, -1 / 3, -math.pi],
        finish_reason="stop",
        policy_version=4,
        reward=1.0,
        policy_seconds=0.5,
    )
    return Episode(
        env_id="spo/Calculator-v0",
        task_id="calc-L2-00001",
        turns=[turn0, turn1],
        terminated=True,
        slot=2,
        started_at=1.0,
        finished_at=2.75,
    )


def test_training_view_masks_exactly_the_sampled_tokens():
    sample = make_episode().training_view()
    assert sample.token_ids == [10, 11, 12, 20, 21, 13, 14, 22, 23, 24]
    assert sample.loss_mask == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]
    assert sample.behaviour_logprobs == [0.0, 0.0, 0.0, -0.1, -1e-300, 0.0, 0.0, -2.5, -1 / 3, -math.pi]
    assert len(sample) == 10 and sample.num_sampled_tokens == 5


def test_episode_properties():
    episode = make_episode()
    assert episode.reward == 1.0
    assert episode.policy_versions == [3, 4]
    assert episode.num_completion_tokens == 5 and episode.num_tokens == 10
    assert episode.policy_seconds == 0.75 and episode.env_seconds == 0.125
    episode.turns.append(Turn([1], [2], [-0.5], FinishReason.LENGTH, 3))
    assert episode.policy_versions == [3, 4]
    assert Episode("e", "t").reward == 0.0 and Episode("e", "t").policy_versions == []


def test_turn_rejects_mismatched_logprobs_and_unknown_finish_reason():
    with pytest.raises(ValueError, match="one log-prob per completion token"):
        Turn([1], [2, 3], [-0.1], FinishReason.STOP, 0)
    with pytest.raises(ValueError):
        Turn([1], [2], [-0.1], "exploded", 0)


def test_json_round_trip_is_lossless():
    episode = make_episode()
    line = episode.to_json()
    assert "\n" not in line
    back = Episode.from_json(line)
    assert back == episode
    assert back.turns[0].finish_reason is FinishReason.TOOL_CALL
    assert back.turns[1].logprobs[2] == -math.pi and back.turns[0].logprobs[1] == -1e-300
    assert back.to_json() == line
    failed = Episode("spo/Python-v0", "t", [], truncated=True, error="EnvTimeout: step took 30 s")
    assert Episode.from_json(failed.to_json()) == failed


def test_json_rejects_other_schema_versions():
    data = json.loads(make_episode().to_json())
    data["schema"] = 99
    with pytest.raises(ValueError, match="schema"):
        Episode.from_json(json.dumps(data))


def test_log_append_and_read(tmp_path):
    path = tmp_path / "runs" / "episodes.jsonl"
    episodes = [make_episode() for _ in range(3)]
    episodes[1].task_id = "other"
    for episode in episodes:
        append_episode_log(path, episode)
    assert read_episode_log(path) == episodes
    assert [e.task_id for e in iter_episode_log(path)] == ["calc-L2-00001", "other", "calc-L2-00001"]


def test_log_skips_a_torn_last_line_but_rejects_corruption_elsewhere(tmp_path):
    path = tmp_path / "episodes.jsonl"
    append_episode_log(path, make_episode())
    with open(path, "a", encoding="utf-8") as f:
        f.write(make_episode().to_json()[:40])  # a process killed mid-write
    assert len(read_episode_log(path)) == 1
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n")
    append_episode_log(path, make_episode())
    with pytest.raises(ValueError, match=r"episodes.jsonl:2"):
        read_episode_log(path)


def test_finished_episodes_survive_a_killed_writer(tmp_path):
    path = tmp_path / "episodes.jsonl"
    script = (
        "import os, sys\n"
        "from spo_agents.rollout import Episode, Turn, append_episode_log\n"
        "for i in range(5):\n"
        "    append_episode_log(sys.argv[1], Episode('e', str(i), [Turn([1], [2], [-0.5], 'stop', 0)]))\n"
        "os._exit(9)\n"  # no interpreter shutdown, no buffer flushing
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=str(Path(__file__).parents[2]))
    assert proc.returncode == 9
    assert [e.task_id for e in read_episode_log(path)] == ["0", "1", "2", "3", "4"]
