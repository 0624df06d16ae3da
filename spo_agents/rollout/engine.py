"""The rollout engine: N slots play episodes independently and deliver them as they finish.

Each slot is an asyncio task looping reset -> (generate -> step)* -> Episode. Generation goes
through a `Backend` (which batches the requests of all waiting slots); environment calls run off
the event loop (`env_runner`), so a slow tool never blocks the other slots. The engine measures
policy and environment time per turn itself (never from env info).

Modes (`RolloutMode`):
- stream: a slot refills the moment its episode ends; each episode is delivered at once (SPO).
- group: G episodes of one task are played (by whichever slots are free) and delivered together
  when the last one finishes (GRPO, group-gated streaming).
- batch: `collect_batch(task_ids)` plays G episodes of each task and returns them all; nothing
  is generated between batches (GRPO, synchronous, the common default elsewhere).

Token accounting follows the chat formatter's "fixed base" method: the first prompt is rendered
once; after each turn, only the tokens that close the assistant turn (if the model stopped at
`</tool_call>` rather than an end-of-turn token), the observation and the next assistant header
are appended. Sampled ids are kept exactly as generated; history is never re-tokenised.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from spo_agents.backends.base import Backend, FinishReason, SamplingParams
from spo_agents.rollout.config import RolloutConfig, RolloutMode
from spo_agents.rollout.env_runner import EnvCrashed, EnvTimeout
from spo_agents.rollout.executors import EnvRunner, RunnerFactory, env_executor
from spo_agents.rollout.episode import Episode, Turn


class TaskSource(Protocol):
    """Where the engine gets tasks: the learner supplies SPO's prioritised sampler."""

    def next_task(self) -> str | None:
        """A task id to play, or None if none is eligible right now (the slot waits and retries)."""

    def release(self, task_id: str) -> None:
        """The episode (or group) of `task_id` is finished."""


class Formatter(Protocol):
    def initial_prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]: ...

    def observation_ids(self, new_messages: list[dict[str, Any]], completion_ids: list[int]) -> list[int]: ...

    @property
    def stop_token_ids(self) -> tuple[int, ...]: ...

    @property
    def stop_strings(self) -> tuple[str, ...]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def reply_text(self, token_ids: list[int]) -> str: ...


@dataclass
class EngineStats:
    started_at: float
    busy_seconds: float = 0.0
    episodes: int = 0
    errors: int = 0
    completion_tokens: int = 0

    def as_dict(self, num_slots: int) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        return {
            "episodes": self.episodes,
            "episode_errors": self.errors,
            "completion_tokens": self.completion_tokens,
            "elapsed_s": elapsed,
            "episodes_per_s": self.episodes / elapsed,
            "tokens_per_s": self.completion_tokens / elapsed,
            "slot_utilisation": self.busy_seconds / (num_slots * elapsed),
        }


class RolloutEngine:
    """Plays episodes of one environment with one backend in N slots.

    Each slot's environment runs where `config.env_executor` (a registered name, see
    `executors.py`) puts it, unless `runner_factory` `(engine, slot) -> runner` is given.
    """

    def __init__(self, env_id: str, backend: Backend, formatter: Formatter, config: RolloutConfig,
                 tasks: TaskSource | None = None, env_kwargs: dict[str, Any] | None = None,
                 runner_factory: RunnerFactory | None = None):
        self.env_id, self.backend, self.formatter, self.config = env_id, backend, formatter, config
        self.tasks, self.env_kwargs = tasks, dict(env_kwargs or {})
        self.runner_factory = runner_factory or env_executor(config.env_executor)
        self.thread_pool = ThreadPoolExecutor(config.env_workers or config.num_slots, thread_name_prefix="spo-env")
        self._runners: dict[int, EnvRunner] = {}
        self._reset_seeds = itertools.count(config.seed)
        self._group_ids = itertools.count()
        self._pending_group_items: list[tuple[str, int]] = []
        self._groups: dict[int, list[Episode]] = {}
        self._slot_tasks: list[asyncio.Task] = []
        self._output: asyncio.Queue | None = None
        self._started = 0  # episodes begun by the slots (streaming modes)
        self._consumed = 0  # episodes the consumer acknowledged
        self._stopping = False
        self.stats = EngineStats(started_at=time.monotonic())

    # ----- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the slots (stream and group modes)."""
        if self.config.mode is RolloutMode.BATCH:
            raise RuntimeError("batch mode has no background slots; call collect_batch()")
        if self.tasks is None:
            raise ValueError("stream and group modes need a task source")
        self._output = asyncio.Queue(maxsize=self.config.max_pending_episodes)
        self._stopping = False
        self.stats = EngineStats(started_at=time.monotonic())
        self._slot_tasks = [asyncio.create_task(self._slot_loop(slot)) for slot in range(self.config.num_slots)]

    async def stop(self) -> None:
        """Cancel the slots and wait until every one has ended."""
        self._stopping = True
        pending = set(self._slot_tasks)
        while pending:  # cancel again if a slot absorbed a cancellation (library code may)
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._slot_tasks = []

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self.thread_pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> "RolloutEngine":
        if self.config.mode is not RolloutMode.BATCH:
            self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
        self.close()

    # ----- consumer API ---------------------------------------------------------------------
    async def get(self) -> Episode | list[Episode]:
        """Next finished episode (stream mode) or complete group (group mode)."""
        if self._output is None:
            raise RuntimeError("engine not started")
        for task in self._slot_tasks:  # surface a crashed slot instead of waiting forever
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()
        return await self._output.get()

    def pending(self) -> int:
        return 0 if self._output is None else self._output.qsize()

    async def collect_batch(self, task_ids: list[str]) -> list[Episode]:
        """Batch mode: play `group_size` episodes of each task with up to N slots; return all."""
        items = asyncio.Queue()
        for task_id in task_ids:
            for _ in range(self.config.group_size):
                items.put_nowait(task_id)
        results: list[Episode] = []

        async def worker(slot: int) -> None:
            while not items.empty():
                results.append(await self._run_episode(slot, items.get_nowait()))

        await asyncio.gather(*(worker(slot) for slot in range(min(self.config.num_slots, items.qsize()))))
        return results

    # ----- slots ----------------------------------------------------------------------------
    def acknowledge(self, num_episodes: int) -> None:
        """The consumer has used (trained on or dropped) this many delivered episodes."""
        self._consumed += num_episodes

    def _admission_open(self) -> bool:
        bound = self.config.max_unconsumed
        return bound is None or self._started - self._consumed < bound

    async def _next_item(self) -> tuple[str, int | None]:
        """(task_id, group id or None) for a slot that just became free.

        Members of a group already begun always start (so every group can complete); a new
        episode or group starts only while the admission bound `max_unconsumed` allows it."""
        while True:
            if self.config.mode is RolloutMode.GROUP and self._pending_group_items:
                self._started += 1
                return self._pending_group_items.pop()
            if not self._admission_open():
                await asyncio.sleep(0.005)
                continue
            task_id = self.tasks.next_task()
            if task_id is None:
                await asyncio.sleep(0.005)
                continue
            if self.config.mode is RolloutMode.STREAM:
                self._started += 1
                return task_id, None
            group = next(self._group_ids)
            self._groups[group] = []
            self._pending_group_items.extend([(task_id, group)] * self.config.group_size)

    async def _slot_loop(self, slot: int) -> None:
        while not self._stopping:
            task_id, group = await self._next_item()
            episode = await self._run_episode(slot, task_id)
            if group is None:
                self.tasks.release(task_id)
                await self._output.put(episode)
                continue
            members = self._groups[group]
            members.append(episode)
            if len(members) == self.config.group_size:
                del self._groups[group]
                self.tasks.release(task_id)
                await self._output.put(members)

    def _runner(self, slot: int) -> EnvRunner:
        if slot not in self._runners:
            self._runners[slot] = self.runner_factory(self, slot)
        return self._runners[slot]

    def _discard_runner(self, slot: int) -> None:
        runner = self._runners.pop(slot, None)
        if runner is not None:
            runner.close(abandoned=True)

    # ----- one episode ----------------------------------------------------------------------
    async def _run_episode(self, slot: int, task_id: str) -> Episode:
        """Play one episode; any failure ends this episode only, with the error recorded."""
        episode = Episode(env_id=self.env_id, task_id=task_id, turns=[], slot=slot, started_at=time.monotonic())
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
            # arrives as the inner call finishes, so stop() could wait forever on a slot.
            async with asyncio.timeout(self.config.episode_timeout_s):
                await self._play(slot, episode)
        except asyncio.TimeoutError:
            episode.error, episode.truncated = f"episode timeout after {self.config.episode_timeout_s:g} s", True
            self._discard_runner(slot)
        except (EnvTimeout, EnvCrashed) as exc:
            episode.error, episode.truncated = f"{type(exc).__name__}: {exc}", True
            self._discard_runner(slot)
        except Exception as exc:  # env or backend failure: end this episode, keep the run going
            episode.error, episode.truncated = f"{type(exc).__name__}: {exc}", True
        episode.finished_at = time.monotonic()
        self.stats.busy_seconds += episode.finished_at - episode.started_at
        self.stats.episodes += 1
        self.stats.errors += episode.error is not None
        self.stats.completion_tokens += episode.num_completion_tokens
        return episode

    def _sampling_params(self, max_new_tokens: int) -> SamplingParams:
        c = self.config
        return SamplingParams(temperature=c.temperature, top_p=c.top_p, top_k=c.top_k, max_new_tokens=max_new_tokens,
                              stop_token_ids=self.formatter.stop_token_ids, stop_strings=self.formatter.stop_strings)

    async def _play(self, slot: int, episode: Episode) -> None:
        runner = self._runner(slot)
        options = {"task_id": episode.task_id}
        observation, info = await runner.call("reset", seed=next(self._reset_seeds), options=options)
        messages = [{"role": "user", "content": observation}]
        if info.get("system_prompt"):
            messages.insert(0, {"role": "system", "content": info["system_prompt"]})
        new_prompt_ids = self.formatter.initial_prompt_ids(messages, info.get("tools", []))
        context_ids: list[int] = list(new_prompt_ids)
        sampled = 0
        while True:
            budget = min(self.config.max_tokens_per_turn, self.config.max_tokens_per_episode - sampled,
                         self.config.max_context_tokens - len(context_ids))
            if budget <= 0:
                episode.truncated = True
                return
            turn = await self._generate_turn(context_ids, new_prompt_ids, budget)
            episode.turns.append(turn)
            sampled += len(turn.completion_ids)
            context_ids += turn.completion_ids
            out_of_budget = turn.finish_reason is FinishReason.LENGTH and len(turn.completion_ids) >= budget \
                and budget < self.config.max_tokens_per_turn
            if out_of_budget:  # the episode's own budget cut this turn short: do not act on it
                episode.truncated = True
                return
            started = time.perf_counter()
            observation, reward, terminated, truncated, info = await runner.call("step", turn.completion_text)
            turn.env_seconds = time.perf_counter() - started
            turn.reward, turn.observation = float(reward), observation
            if terminated or truncated:
                episode.terminated, episode.truncated = bool(terminated), bool(truncated)
                return
            obs_messages = info.get("messages") or [{"role": "user", "content": observation}]
            new_prompt_ids = self.formatter.observation_ids(obs_messages, turn.completion_ids)
            context_ids += new_prompt_ids

    async def _generate_turn(self, context_ids: list[int], new_prompt_ids: list[int], budget: int) -> Turn:
        started = time.perf_counter()
        result = await self.backend.generate(list(context_ids), self._sampling_params(budget))
        return Turn(
            prompt_ids=list(new_prompt_ids),
            completion_ids=list(result.token_ids),
            logprobs=list(result.logprobs),
            finish_reason=FinishReason(result.finish_reason),
            policy_version=result.policy_version,
            completion_text=self.formatter.reply_text(result.token_ids),
            policy_seconds=time.perf_counter() - started,
        )
