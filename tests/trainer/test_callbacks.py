"""Trainer callbacks: a short real run (tiny model, CPU) seen through every public hook."""

import asyncio

import pytest

from spo_agents.rollout.engine import RolloutEngine
from spo_agents.trainer.callbacks import CallbackList, TrainerCallback
from spo_agents.trainer.config import load_config
from spo_agents.trainer.loop import Trainer
from spo_agents.trainer.metrics import read_metrics

FAST = ["model=tiny", "warm_start=null", "env_kwargs={}", "steps=3", "batch_size=4", "eval.num_tasks=2",
        "rollout.num_slots=4", "rollout.max_tokens_per_turn=16", "rollout.max_tokens_per_episode=32",
        "checkpoint_every=2", "transcripts=0"]


class Recorder(TrainerCallback):
    def __init__(self):
        self.events, self.episodes, self.steps, self.batches = [], [], [], []

    def on_start(self, trainer, engine):
        self.events.append("start")
        self.engine = engine

    def on_episode(self, trainer, episode):
        self.episodes.append(episode)

    def on_batch(self, trainer, batch):
        self.events.append("batch")
        self.batches.append((trainer.step, len(batch.episodes), trainer.updater.version))

    def on_step(self, trainer, metrics):
        self.events.append("step")
        self.steps.append((trainer.step, metrics["policy/version"]))

    def on_eval(self, trainer, metrics):
        self.events.append(f"eval@{trainer.step}")
        assert "eval/accuracy" in metrics

    def on_checkpoint(self, trainer, path):
        self.events.append(f"checkpoint@{trainer.step}")
        assert path.is_dir()

    def on_end(self, trainer, summary):
        self.events.append("end")
        self.summary = summary


class CountingEngine(RolloutEngine):
    built = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CountingEngine.built += 1


def test_every_public_hook_sees_the_run(tmp_path):
    config = load_config(None, [*FAST, f"output_dir={tmp_path / 'run'}"])
    recorder, only_steps = Recorder(), []

    class StepsOnly:  # any object with some of the methods will do
        def on_step(self, trainer, metrics):
            only_steps.append(trainer.step)

    trainer = Trainer(config, show_progress=False, callbacks=[recorder, StepsOnly()], engine_factory=CountingEngine)
    summary = asyncio.run(trainer.run())
    assert CountingEngine.built == 1 and isinstance(recorder.engine, CountingEngine)
    assert recorder.events == ["eval@0", "start", "batch", "step", "batch", "step", "checkpoint@2", "batch", "step",
                               "checkpoint@3", "eval@3", "end"]
    assert recorder.steps == [(1, 1), (2, 2), (3, 3)] and only_steps == [1, 2, 3]
    assert [b[0] for b in recorder.batches] == [0, 1, 2] and all(n == 4 for _, n, _ in recorder.batches)
    assert len(recorder.episodes) == summary["episodes"] == trainer.counters["episodes"]
    assert recorder.summary is summary
    # the metrics files are written by a callback of the same kind, registered first
    kinds = [r["kind"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert kinds == ["eval", "train", "train", "train", "eval", "summary"]


def test_a_callback_must_have_a_hook_and_a_failing_hook_stops_the_run(tmp_path):
    with pytest.raises(TypeError, match="none of the callback methods"):
        CallbackList([object()])

    class Broken(TrainerCallback):
        def on_batch(self, trainer, batch):
            raise RuntimeError("hook bug")

    config = load_config(None, [*FAST, "eval.enabled=false", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(RuntimeError, match="hook bug"):
        asyncio.run(Trainer(config, show_progress=False, callbacks=[Broken()]).run())
