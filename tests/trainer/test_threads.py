"""Thread budgets of the learner and the local decoder (trainer/threads.py): the auto rule, the
config, and that the counts are really in force in the two threads that compute."""

import asyncio
import json
import os

import pytest
import torch

from spo_agents.backends import SamplingParams
from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.trainer.config import load_config
from spo_agents.trainer.loop import Trainer
from spo_agents.trainer.threads import ThreadsConfig, plan_threads


def test_auto_rule_splits_cores_only_when_learner_and_decoder_overlap():
    auto = ThreadsConfig()
    split = plan_threads(auto, 8, overlapped=True, local_decoder=True)
    assert (split.learner, split.decoder) == (4, 4) and "split" in split.reason
    assert (plan_threads(auto, 3, True, True).learner, plan_threads(auto, 3, True, True).decoder) == (2, 1)
    assert (plan_threads(auto, 2, False, True).learner, plan_threads(auto, 2, False, True).decoder) == (2, 2)
    assert plan_threads(auto, 4, True, False).learner == 4  # generation elsewhere: the learner has the CPU
    assert (plan_threads(auto, 1, True, True).learner, plan_threads(auto, 1, True, True).decoder) == (1, 1)
    explicit = plan_threads(ThreadsConfig(learner=3, decoder=1), 2, False, True)
    assert (explicit.learner, explicit.decoder, explicit.reason) == (3, 1, "set in the config")
    with pytest.raises(ValueError):
        ThreadsConfig(learner=-1)


def test_backend_thread_count_applies_to_its_own_thread_only():
    tokenizer = build_tiny_tokenizer()
    before = torch.get_num_threads()
    with TransformersBackend(build_tiny_model(tokenizer), tokenizer, num_threads=1) as backend:
        backend.generate_many([[5, 6, 7]], SamplingParams(temperature=0.0, max_new_tokens=2, stop_token_ids=()))
        assert backend.stats["threads"] == 1
        backend.set_num_threads(2)
        backend.generate_many([[5, 6, 7]], SamplingParams(temperature=0.0, max_new_tokens=2, stop_token_ids=()))
        assert backend.stats["threads"] == 2
        with pytest.raises(ValueError):
            backend.set_num_threads(0)
    assert torch.get_num_threads() == before  # the caller's team is untouched


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell the budgets apart")
@pytest.mark.parametrize("overrides, expected", [
    ([], (1, 1)),  # SPO streaming on 2 cores: split
    (["algo=grpo", "group_size=2"], (2, 2)),  # GRPO batch mode: phases alternate, each gets both
    (["threads.learner=2", "threads.decoder=1"], (2, 1)),  # set in the config
])
def test_trainer_budgets_are_in_force_and_reported(tmp_path, overrides, expected):
    torch.set_num_threads(2)
    config = load_config(None, ["model=tiny", "env_kwargs={}", "steps=1", "batch_size=2", "rollout.num_slots=2",
                                "rollout.max_tokens_per_turn=8", "rollout.max_tokens_per_episode=16",
                                "eval.enabled=false", f"output_dir={tmp_path}", *overrides])
    trainer = Trainer(config, show_progress=False)
    summary = asyncio.run(trainer.run())
    assert (trainer.threads.learner, trainer.threads.decoder) == expected  # the plan
    assert (summary["threads/learner"], summary["threads/decoder"]) == expected  # in force in each thread
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["threads/learner"], r["threads/decoder"]) for r in records if r["kind"] == "train"] == [expected]
    torch.set_num_threads(2)
