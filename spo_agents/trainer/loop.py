"""The streaming trainer: episodes stream in while generation goes on; the learner steps as
soon as a batch is ready and pushes the new weights to the backend without stopping it.

Per algorithm (see docs/algorithms.md and docs/training.md):
- SPO (stream mode): any B finished episodes form a batch. `spo_update=collect` steps on the
  batch; `spo_update=accumulate` computes each episode's gradient on arrival (running
  advantage statistics) and applies the optimiser step once B have contributed.
- GRPO (group mode): B/G complete groups form a batch (group-gated streaming).
- GRPO (batch mode): generate B/G tasks x G episodes, wait for all, step, repeat.
Learner work runs off the event loop, so the rollout slots keep going while the learner
computes: on the local decoder's own thread when the two take turns (one OpenMP team), or in a
one-thread learner executor with the cores split between the two when they run at once
(trainer/threads.py).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from spo_agents.learner import DriftCache, TaskSampler, ValueTracker, read_value_table
from spo_agents.learner.config import DriftEstimator
from spo_agents.learner.update import PolicyUpdater
from spo_agents.rollout.config import RolloutMode
from spo_agents.rollout.engine import RolloutEngine
from spo_agents.rollout.episode import Episode, append_episode_log
from spo_agents.trainer.algorithms import Batch, GRPOAlgorithm, SPOAlgorithm, staleness_weight
from spo_agents.trainer.callbacks import CallbackList, MetricsCallback
from spo_agents.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from spo_agents.trainer.config import Algo, GRPOMode, LearnerParallel, SPOUpdate, TrainConfig, dump_config
from spo_agents.trainer.evaluate import evaluate
from spo_agents.trainer.metrics import MetricsLogger
from spo_agents.trainer.parts import (build_policy, eval_task_ids, resolve_env_id, seed_everything,
                                     state_dict_for_backend, train_task_ids)
from spo_agents.trainer.sft import ensure_warm_start
from spo_agents.trainer.stats import difference_interval
from spo_agents.trainer.tasks import PrioritisedTasks, UniformTasks
from spo_agents.trainer.threads import in_own_thread, plan_threads, use_threads
from spo_agents.trainer.transcripts import write_transcripts


def heldout_gain(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Held-out accuracy before and after training, the gain and its 95% Newcombe interval."""
    summary: dict[str, Any] = {"accuracy_before": before.get("eval/accuracy"), "accuracy_after": after.get("eval/accuracy")}
    for name, key in (("tool_calls_per_episode", "eval/tool_calls/mean"), ("turns_per_episode", "eval/turns/mean")):
        if key in before and key in after:  # what the agent does, not only whether it succeeds
            summary[f"{name}_before"], summary[f"{name}_after"] = before[key], after[key]
    if before and after:
        n_before, n_after = int(before["eval/tasks"]), int(after["eval/tasks"])
        low, high = difference_interval(round(before["eval/accuracy"] * n_before), n_before,
                                        round(after["eval/accuracy"] * n_after), n_after)
        summary.update(heldout_tasks=n_after, gain=after["eval/accuracy"] - before["eval/accuracy"],
                       gain_ci95=[low, high])
    return summary


class Trainer:
    """One training run. `callbacks` see its events (trainer/callbacks.py); `engine_factory`
    builds the rollout engine from RolloutEngine's arguments (an instrumented subclass, say)."""

    def __init__(self, config: TrainConfig, resume: bool = False, show_progress: bool = True,
                 callbacks: Iterable[Any] = (), engine_factory: Callable[..., RolloutEngine] = RolloutEngine):
        self.config, self.resume, self.engine_factory = config, resume, engine_factory
        self.show_progress = show_progress
        self.run_dir = Path(config.output_dir)
        as_given = config  # what config.yaml records (env_id as the user wrote it)
        # environment and splits are checked before anything expensive (warm start, model) loads
        self.config = config = config.model_copy(update={"env_id": resolve_env_id(config.env_id)})
        self.train_ids = train_task_ids(config)
        self.eval_ids = eval_task_ids(config) if config.eval.enabled else []
        # the warm start (and build_policy's loading) run in threads that end: no OpenMP team
        # outlives them in this thread (trainer/threads.py)
        if config.warm_start is not None and not resume:
            in_own_thread(ensure_warm_start, config.model, config.warm_start, log=lambda line: print(line, flush=True))
        seed_everything(config.seed)
        # a sharded learner whose generation runs on servers loads the model on the CPU: only its shards
        # go to the GPU (fully_shard moves them), so the model need not fit one device
        on_servers = config.generation.value == "openai" or bool(config.generation_urls())
        load_device = "cpu" if config.learner_parallel is LearnerParallel.FSDP and on_servers else config.device
        self.policy = build_policy(config.model, load_device, config.seed, lora=config.lora,
                                   generation=config.generation.value, generation_workers=config.generation_workers,
                                   generation_url=config.generation_url,
                                   generation_options=config.generation_client_options())
        self.updater = self._build_learner()
        self._plan_threads()
        self.tracker = ValueTracker(config.tracker.prior_alpha, config.tracker.prior_beta)
        if config.value_table:
            self.tracker.init_from_table(read_value_table(config.value_table), config.tracker.rho_min,
                                         config.tracker.init_smoothed)
        self.drift_cache = DriftCache.from_config(config.tracker)
        self.sampler = TaskSampler.from_config(self.train_ids, self.tracker, config.sampler)
        self.uniform = UniformTasks(self.train_ids, config.seed)
        # the run folder is touched only once everything above (model, environment, tables) was built
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(as_given, self.run_dir / "config.yaml")
        self.spo = SPOAlgorithm(self.tracker, self.drift_cache, config)
        self.grpo = GRPOAlgorithm(config)
        self.step = 0
        self.counters = {"episodes": 0, "dropped_stale": 0, "learner_wait_s": 0.0}
        self.logger = MetricsLogger(self.run_dir, config.steps, show_progress)
        self.callbacks = CallbackList([MetricsCallback(self.logger), *callbacks])
        self.episode_log = self.run_dir / "episodes.jsonl"

    def _build_learner(self) -> Any:
        """PolicyUpdater, or rank 0's handle on the FSDP2-sharded learner (distributed/learner_group.py)."""
        config = self.config
        # the lr schedule decays over the run's steps unless optim.decay_steps says otherwise
        optim = config.optim if config.optim.decay_steps else config.optim.model_copy(update={"decay_steps": config.steps})
        if config.learner_parallel is LearnerParallel.FSDP:
            from spo_agents.distributed.learner_group import ShardedLearner

            return ShardedLearner(self.policy.train_model, optim, config.loss, config.device,
                                  self.run_dir / "checkpoints")
        return PolicyUpdater(self.policy.train_model, optim, config.loss, config.device)

    def _backend_weights(self) -> dict[str, Any]:
        gather = getattr(self.updater, "backend_weights", None)  # the sharded learner gathers its shards
        return gather() if gather is not None else state_dict_for_backend(self.policy.train_model)

    def _checkpoint_model(self) -> Any:
        unsharded = getattr(self.updater, "checkpoint_model", None)
        return unsharded() if unsharded is not None else self.policy.train_model

    # ----- state ----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        json_state = {"step": self.step, "counters": self.counters, "tracker": self.tracker.state_dict(),
                      "drift_cache": self.drift_cache.state_dict(), "spo": self.spo.state_dict()}
        torch_state = {"updater": self.updater.state_dict(), "sampler": self.sampler.state_dict(),
                       "uniform": self.uniform.state_dict()}
        return json_state, torch_state

    def _restore(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return
        json_state, torch_state = load_checkpoint(path, getattr(self.updater, "export_model", self.policy.train_model))
        self.step, self.counters = json_state["step"], json_state["counters"]
        self.tracker.load_state_dict(json_state["tracker"])
        self.drift_cache.load_state_dict(json_state["drift_cache"])
        if "spo" in json_state:  # running advantage moments (checkpoints before they were saved lack it)
            self.spo.load_state_dict(json_state["spo"])
        self.updater.load_state_dict(torch_state["updater"])
        self.sampler.load_state_dict(torch_state["sampler"])
        self.uniform.load_state_dict(torch_state["uniform"])
        self.policy.backend.update_weights(self._backend_weights(), self.updater.version)

    def checkpoint(self) -> Path:
        json_state, torch_state = self._state()
        path = save_checkpoint(self.run_dir, self.step, self._checkpoint_model(), json_state, torch_state)
        self.callbacks.emit("on_checkpoint", self, path)
        return path

    def _plan_threads(self) -> None:
        """Where the learner runs and the thread budgets of it and the local decoder
        (trainer/threads.py)."""
        import torch

        config = self.config
        overlapped = not (config.algo is Algo.GRPO and config.grpo_mode is GRPOMode.BATCH)
        local = hasattr(self.policy.backend, "run_between_steps")
        self.threads = plan_threads(config.threads, torch.get_num_threads(), overlapped, local)
        if local:
            self.policy.backend.set_num_threads(self.threads.decoder)
        self._learner_pool = ThreadPoolExecutor(1, thread_name_prefix="spo-learner", initializer=use_threads,
                                                initargs=(self.threads.learner,))
        self.learner_threads_in_force, self.learner_thread = 0, ""
        # SPO's stored-episode pass runs on the decoder's thread beside the learner's forward (algorithms.py)
        aside = (local and not self.threads.alternate and config.algo is Algo.SPO
                 and config.tracker.drift_estimator is DriftEstimator.STORED_EPISODE
                 and getattr(self.updater, "scoring_may_overlap", False))
        self.side_runner = self.policy.backend.run_between_steps if aside else None
        if self.show_progress:
            print(self.threads.describe() + ("; SPO's drift pass on the decoder's thread" if aside else ""),
                  flush=True)

    async def _learn(self, fn: Callable, *args: Any) -> Any:
        """Run learner work on the decoder's thread (sharing: alternate) or in the learner
        executor, whose thread has the learner's budget."""
        if self.threads.alternate:
            return await asyncio.wrap_future(self.policy.backend.run_between_steps(self._in_learner, fn, *args))
        return await asyncio.get_running_loop().run_in_executor(self._learner_pool,
                                                                functools.partial(self._in_learner, fn, *args))

    def _in_learner(self, fn: Callable, *args: Any) -> Any:
        import torch

        self.learner_threads_in_force = torch.get_num_threads()  # what the metrics report
        self.learner_thread = threading.current_thread().name
        return fn(*args)

    # ----- main -----------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        import torch

        main_threads = torch.get_num_threads()
        use_threads(1)  # the event loop's thread adds no OpenMP team while the run computes elsewhere
        try:
            return await self._run()
        finally:
            torch.set_num_threads(main_threads)
            self._learner_pool.shutdown(wait=False)
            close = getattr(self.updater, "close", None)  # releases the sharded learner's other ranks
            if close is not None:
                close()

    async def _run(self) -> dict[str, Any]:
        if self.resume:
            self._restore()
        elif self.config.generation.value != "local":  # remote replicas start from the spec's weights
            await asyncio.to_thread(self.policy.backend.update_weights,
                                    self._backend_weights(), self.updater.version)
        started = time.monotonic()
        first_eval = await self.evaluate() if self.step == 0 else {}
        engine = self._engine()
        self.callbacks.emit("on_start", self, engine)
        try:
            if self.config.algo is Algo.GRPO and self.config.grpo_mode is GRPOMode.BATCH:
                await self._run_sync_batches(engine)
            else:
                async with engine:
                    await self._run_streaming(engine)
        finally:
            engine.close()
        self.checkpoint()
        final_eval = await self.evaluate()
        summary = {"steps": self.step, "wall_s": time.monotonic() - started, **self.counters,
                   **self._thread_metrics(),
                   **heldout_gain(first_eval, final_eval)}
        self.callbacks.emit("on_end", self, summary)
        self.policy.backend.close()
        return summary

    def _engine(self) -> RolloutEngine:
        config = self.config
        if config.algo is Algo.SPO:
            mode, tasks = RolloutMode.STREAM, PrioritisedTasks(self.sampler)
        else:
            mode = RolloutMode.GROUP if config.grpo_mode is GRPOMode.GROUP else RolloutMode.BATCH
            tasks = self.uniform
        # Admission bound (as in the throughput simulator): at most N + B episodes started but not
        # yet consumed by the learner, so a slow learner pauses generation instead of piling up
        # stale episodes (and unfinished groups).
        bound = config.rollout.max_unconsumed or config.rollout.num_slots + config.batch_size
        rollout = config.rollout.model_copy(update={"mode": mode, "group_size": config.group_size,
                                                    "max_unconsumed": bound})
        return self.engine_factory(config.env_id, self.policy.backend, self.policy.formatter, rollout, tasks,
                                   {**config.env_kwargs, "split": "train"})

    async def _get(self, engine: RolloutEngine):
        waited = time.monotonic()
        item = await engine.get()
        self.counters["learner_wait_s"] += time.monotonic() - waited
        return item

    def _record(self, episodes: list[Episode]) -> None:
        for episode in episodes:  # logged before use: a killed run loses no finished episode
            append_episode_log(self.episode_log, episode)
        self.counters["episodes"] += len(episodes)
        for episode in episodes:
            self.callbacks.emit("on_episode", self, episode)

    async def _run_streaming(self, engine: RolloutEngine) -> None:
        config, pending, groups = self.config, [], []
        per_step = config.batch_size // config.group_size if config.algo is Algo.GRPO else config.batch_size
        while self.step < config.steps:
            item = await self._get(engine)
            self._record(item if isinstance(item, list) else [item])
            if config.algo is Algo.GRPO:
                groups.append(item)
                if len(groups) >= per_step:
                    await self._learner_step(self.grpo.make_batch(groups, self.updater.version), engine)
                    groups = []
                continue
            self.spo.on_arrival(item)
            if staleness_weight(item, self.updater.version, config) == 0.0:
                self.counters["dropped_stale"] += 1
                engine.acknowledge(1)
                continue
            if config.spo_update is SPOUpdate.ACCUMULATE:
                await self._learn(self.spo.accumulate_on_arrival, self.updater, item,
                                        staleness_weight(item, self.updater.version, config))
            pending.append(item)
            if len(pending) >= per_step:
                await self._learner_step(self.spo.make_batch(pending, self.updater.version), engine)
                pending = []

    async def _run_sync_batches(self, engine: RolloutEngine) -> None:
        per_step = self.config.batch_size // self.config.group_size
        while self.step < self.config.steps:
            ids = list(self.uniform.rng.choice(self.train_ids, size=per_step, replace=False))
            waited = time.monotonic()
            episodes = await engine.collect_batch(ids)
            self.counters["learner_wait_s"] += time.monotonic() - waited
            self._record(episodes)
            groups = [[e for e in episodes if e.task_id == task_id] for task_id in ids]
            await self._learner_step(self.grpo.make_batch(groups, self.updater.version), engine)

    async def _learner_step(self, batch: Batch, engine: RolloutEngine) -> None:
        self.callbacks.emit("on_batch", self, batch)
        started = time.monotonic()
        if self.config.algo is Algo.SPO:  # the update, drift D, rho and the tracker update
            metrics = await self._learn(self.spo.learner_step, self.updater, batch, self.side_runner)
        else:
            metrics = await self._learn(self.updater.step, batch.samples, batch.advantages, batch.weights)
        weights = self._backend_weights()
        await asyncio.to_thread(self.policy.backend.update_weights, weights, self.updater.version)
        self.step += 1
        engine.acknowledge(len(batch.episodes))
        metrics.update(batch.metrics)
        metrics.update(self._batch_metrics(batch, engine, time.monotonic() - started))
        if self.config.eval.every_steps and self.step % self.config.eval.every_steps == 0 \
                and self.step < self.config.steps:
            metrics.update(await self.evaluate())
        self.callbacks.emit("on_step", self, metrics)
        if self.step % self.config.checkpoint_every == 0:
            self.checkpoint()

    def _batch_metrics(self, batch: Batch, engine: RolloutEngine, learner_s: float) -> dict[str, float]:
        rewards = [e.reward for e in batch.episodes]
        stats = engine.stats.as_dict(self.config.rollout.num_slots)
        return {"reward/mean": float(np.mean(rewards)), "reward/accuracy": float(np.mean([r >= 1 for r in rewards])),
                "episodes/total": self.counters["episodes"], "episodes/dropped_stale": self.counters["dropped_stale"],
                "learner/step_s": learner_s, "learner/wait_s_total": self.counters["learner_wait_s"],
                "rollout/episodes_per_s": stats["episodes_per_s"], "rollout/tokens_per_s": stats["tokens_per_s"],
                "rollout/slot_utilisation": stats["slot_utilisation"], "policy/version": self.updater.version,
                "tracker/tasks_seen": len(self.tracker), **self._thread_metrics()}

    def _thread_metrics(self) -> dict[str, int]:
        """torch threads in force in the learner's and the local decoder's threads (0: not run)."""
        decoder = getattr(self.policy.backend, "stats", {}).get("threads", 0)
        return {"threads/learner": self.learner_threads_in_force, "threads/decoder": decoder}

    async def evaluate(self) -> dict[str, float]:
        config = self.config
        if not config.eval.enabled:
            return {}
        ids = self.eval_ids
        result = await evaluate(self.policy.backend, self.policy.formatter, config.env_id,
                                {**config.env_kwargs, "split": config.eval.split}, ids,
                                temperature=config.eval.temperature, num_slots=config.rollout.num_slots,
                                rollout=config.rollout, ks=(1,))
        write_transcripts(self.run_dir / "transcripts" / f"eval-step-{self.step:06d}.md",
                          result.episodes[: config.transcripts], self.policy.formatter)
        metrics = {f"eval/{k}": v for k, v in result.metrics.items()}
        metrics["eval/tasks"] = float(len(ids))
        self.callbacks.emit("on_eval", self, metrics)
        return metrics
