"""Trainer callbacks: the public hooks into a training run.

Why: the metrics files, the end-to-end throughput harness (bench/e2e.py) and users all want to
see the same moments of a run (an episode arrives, a batch is ready, a step is done, an
evaluation ran, a checkpoint was written) without subclassing the trainer or touching its
private methods. A callback is any object with some of the methods of `TrainerCallback`
(subclass it to get no-op defaults); `Trainer(config, callbacks=[...])` calls them in order, on
the trainer's event loop (keep them quick; hand heavy work to a thread). An exception raised by
a callback stops the run: a broken hook should not be silently ignored.

| method | when | arguments |
|---|---|---|
| `on_start(trainer, engine)` | the rollout engine is built, before the first episode | the `RolloutEngine` |
| `on_episode(trainer, episode)` | each finished episode the learner receives (after the episode log) | the `Episode` |
| `on_batch(trainer, batch)` | a batch is complete, before the learner step on it | `trainer.algorithms.Batch` |
| `on_step(trainer, metrics)` | after a learner step, its weight push and any evaluation; `trainer.step` is the new step | the step's metrics |
| `on_eval(trainer, metrics)` | after each held-out evaluation (also before and after training) | `eval/...` metrics |
| `on_checkpoint(trainer, path)` | a checkpoint was written | its folder |
| `on_end(trainer, summary)` | the run is over (final checkpoint and evaluation done) | the summary |
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from spo_agents.trainer.loop import Trainer

EVENTS = ("on_start", "on_episode", "on_batch", "on_step", "on_eval", "on_checkpoint", "on_end")


class TrainerCallback:
    """No-op defaults for every event; override the ones you need."""

    def on_start(self, trainer: "Trainer", engine: Any) -> None: ...

    def on_episode(self, trainer: "Trainer", episode: Any) -> None: ...

    def on_batch(self, trainer: "Trainer", batch: Any) -> None: ...

    def on_step(self, trainer: "Trainer", metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: "Trainer", metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None: ...

    def on_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None: ...


class CallbackList:
    """Calls one event on every callback that defines it, in registration order."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks: list[Any] = []
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: Any) -> None:
        if not any(callable(getattr(callback, event, None)) for event in EVENTS):
            raise TypeError(f"{callback!r} has none of the callback methods {EVENTS}")
        self.callbacks.append(callback)

    def emit(self, event: str, trainer: "Trainer", *args: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown trainer event {event!r}")
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(trainer, *args)


class MetricsCallback(TrainerCallback):
    """Writes metrics.jsonl / TensorBoard / the progress bar through the run's `MetricsLogger`."""

    def __init__(self, logger: Any):
        self.logger = logger

    def on_step(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        self.logger.log(trainer.step, metrics)

    def on_eval(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        self.logger.log(trainer.step, metrics, kind="eval")

    def on_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        self.logger.log(trainer.step, summary, kind="summary")
        self.logger.close()
