"""Streaming: the learner steps while slow episodes are still running; staleness accounting."""

import asyncio
import json
import time

import gymnasium

from spo_agents.env import Task, ToolEnv
from spo_agents.rollout.episode import Episode, FinishReason, Turn
from spo_agents.trainer.algorithms import staleness_weight
from spo_agents.trainer.config import load_config
from spo_agents.trainer.loop import Trainer


STARTED: list[str] = []


class SlowTaskEnv(ToolEnv):
    """Task `slow-*` takes 4 s to grade; the others are instant. Reward is always 0."""

    def __init__(self, split="train", **kwargs):
        tasks = {"train": [Task(task_id=f"{kind}-{i}", prompt="say hi") for kind in ("fast", "slow") for i in range(4)],
                 "heldout": [Task(task_id="h-0", prompt="say hi")]}
        super().__init__(tasks, grader=self._grade, split=split, max_turns=1, **kwargs)

    def reset(self, *, seed=None, options=None):
        observation, info = super().reset(seed=seed, options=options)
        STARTED.append(info["task_id"])
        return observation, info

    def _grade(self, reply, task):
        if task.task_id.startswith("slow"):
            time.sleep(4.0)
        return 0.0


gymnasium.register(id="trainertest/Slow-v0", entry_point=SlowTaskEnv)


def test_spo_learner_steps_while_slow_episodes_run(tmp_path):
    config = load_config(None, ["env_id=trainertest/Slow-v0", "steps=3", "batch_size=2", "rollout.num_slots=4",
                                "rollout.max_tokens_per_turn=4", f"output_dir={tmp_path}", "eval.enabled=false",
                                "sampler.max_in_flight_per_task=1"])
    asyncio.run(Trainer(config, show_progress=False).run())
    log = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in line]
    assert len(steps) == 3
    assert any(task.startswith("slow") for task in STARTED), "slow tasks were sampled and started"
    # every learner step was taken on fast episodes while the slow ones were still being graded
    assert log and all(e["task_id"].startswith("fast") for e in log)
    assert steps[-1]["episodes/total"] == len(log)


def _episode(versions):
    turns = [Turn(prompt_ids=[1], completion_ids=[2], logprobs=[-0.1], finish_reason=FinishReason.STOP,
                  policy_version=v) for v in versions]
    return Episode(env_id="e", task_id="t", turns=turns)


def test_staleness_drop_and_downweight():
    drop = load_config(None, ["max_staleness=2"])
    down = load_config(None, ["max_staleness=2", "staleness_policy=downweight", "staleness_decay=0.5"])
    assert staleness_weight(_episode([5, 6]), 7, drop) == 1.0  # 2 behind: within the bound
    assert staleness_weight(_episode([4, 6]), 7, drop) == 0.0  # oldest turn is 3 behind
    assert staleness_weight(_episode([4]), 7, down) == 0.5
    assert staleness_weight(_episode([2]), 7, down) == 0.125
