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


def test_run_between_steps_runs_jobs_on_the_decode_thread_with_gradients():
    import threading

    tokenizer = build_tiny_tokenizer()
    with TransformersBackend(build_tiny_model(tokenizer), tokenizer, num_threads=1) as backend:
        def job(x):
            w = torch.ones(2, requires_grad=True)
            (w * x).sum().backward()  # the decode loop runs under no_grad; jobs get gradients back
            return threading.current_thread().name, w.grad.tolist()

        name, grad = backend.run_between_steps(job, 3.0).result(timeout=30)
        assert name == "spo-transformers-decode" and grad == [3.0, 3.0]
        with pytest.raises(ZeroDivisionError):
            backend.run_between_steps(lambda: 1 / 0).result(timeout=30)
        # decoding goes on after a failed job; a job submitted from the decode thread runs at once
        out = backend.generate_many([[5, 6, 7]], SamplingParams(temperature=0.0, max_new_tokens=2, stop_token_ids=()))
        assert len(out[0].token_ids) == 2
        nested = backend.run_between_steps(lambda: backend.run_between_steps(lambda: 7).result(timeout=1))
        assert nested.result(timeout=30) == 7
    with pytest.raises(Exception, match="closed"):
        backend.run_between_steps(lambda: 1)


def test_in_own_thread_returns_results_raises_errors_and_leaves_no_openmp_workers():
    from spo_agents.trainer.threads import in_own_thread

    def matmul():
        torch.set_num_threads(2)  # a team of two: one OpenMP worker thread besides this one
        return float((torch.randn(256, 256) @ torch.randn(256, 256)).abs().sum() > 0)

    threads_before = len(os.listdir("/proc/self/task"))
    assert in_own_thread(matmul) == 1.0
    import time

    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/task")) > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)  # the team's worker leaves right after its thread
    assert len(os.listdir("/proc/self/task")) <= threads_before
    with pytest.raises(KeyError):
        in_own_thread(lambda: {}["missing"])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell the budgets apart")
@pytest.mark.parametrize("overrides, thread", [
    (["algo=grpo", "group_size=2"], "spo-transformers-decode"),  # phases alternate: one thread
    (["algo=grpo", "group_size=2", "threads.sharing=split"], "spo-learner"),
    (["threads.sharing=alternate"], "spo-transformers-decode"),  # SPO streaming, taking turns
])
def test_learner_runs_where_the_sharing_says(tmp_path, overrides, thread):
    config = load_config(None, ["model=tiny", "env_kwargs={}", "steps=1", "batch_size=2", "rollout.num_slots=2",
                                "rollout.max_tokens_per_turn=8", "rollout.max_tokens_per_episode=16",
                                "eval.enabled=false", f"output_dir={tmp_path}", *overrides])
    main_threads = torch.get_num_threads()
    trainer = Trainer(config, show_progress=False)
    summary = asyncio.run(trainer.run())
    assert summary["steps"] == 1 and trainer.learner_thread.startswith(thread)
    assert torch.get_num_threads() == main_threads  # the caller's count is back after the run


def test_sharing_settings_are_checked():
    with pytest.raises(ValueError, match="threads.decoder"):
        ThreadsConfig(sharing="alternate", learner=2, decoder=1)
    with pytest.raises(ValueError, match="local decoder"):
        plan_threads(ThreadsConfig(sharing="alternate"), 2, overlapped=True, local_decoder=False)
    with pytest.raises(ValueError):
        ThreadsConfig(sharing="sometimes")
    budget = plan_threads(ThreadsConfig(sharing="alternate"), 4, overlapped=True, local_decoder=True)
    assert budget.alternate and (budget.learner, budget.decoder) == (4, 4)
    assert not plan_threads(ThreadsConfig(sharing="split"), 4, overlapped=False, local_decoder=True).alternate
    assert plan_threads(ThreadsConfig(), 2, overlapped=False, local_decoder=True).alternate


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell the budgets apart")
@pytest.mark.parametrize("overrides, aside", [
    ([], True),  # SPO streaming, split: the stored-episode pass goes to the decoder's thread
    (["threads.sharing=alternate"], False),  # the learner is on the decoder's thread already
    (["tracker.drift_estimator=behaviour_ratio"], False),  # no pass to move
    (["algo=grpo", "group_size=2", "grpo_mode=group"], False),  # no drift at all
])
def test_spo_drift_pass_runs_on_the_decoders_thread_when_the_learner_has_its_own(tmp_path, overrides, aside):
    # 3 training tasks, 4 steps of 2: tasks come back with new episodes, which need the pass
    config = load_config(None, ["model=tiny", "env_kwargs={num_tasks: 4, heldout_fraction: 0.25}", "steps=4",
                                "batch_size=2", "rollout.num_slots=2", "rollout.max_tokens_per_turn=8",
                                "rollout.max_tokens_per_episode=16", "eval.enabled=false",
                                f"output_dir={tmp_path}", *overrides])
    trainer = Trainer(config, show_progress=False)
    asyncio.run(trainer.run())
    assert (trainer.side_runner is not None) == aside
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    aside_counts = [r.get("drift/rescored_aside", 0.0) for r in records if r["kind"] == "train"]
    rescored = [r.get("drift/rescored", 0.0) for r in records if r["kind"] == "train"]
    if aside:
        assert sum(aside_counts) == sum(rescored) > 0
    else:
        assert sum(aside_counts) == 0
