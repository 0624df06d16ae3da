"""End-to-end throughput: the real trainer, run three ways, on environments with injected latency.

Why: the simulator (`simulator.py`) predicts the SPO-vs-GRPO throughput gap from a latency
model; this module measures it on the real system. Each method is one run of `Trainer` with
only `algo` / `grpo_mode` switched: GRPO sync (grpo, batch mode), GRPO group-gated (grpo,
group mode), SPO (spo, stream mode). Everything else is shared: the rollout engine, a real
environment wrapped in `LatencyWrapper` (heavy-tailed latency in every `step`, the same delay
for the k-th episode started in every method), a model on CPU (`tiny` behind the
TransformersBackend by default), the real learner (PolicyUpdater steps and weight pushes),
the seeds, and the budget: `steps` learner steps of `batch` episodes each. Evaluation and
in-loop checkpoints are off. Rounds run the three methods back to back in rotated order and
the reported ratios are medians over rounds (the machine is shared and noisy).

Measured per run, over the training phase: from the engine's start to the moment the learner
takes its last batch (the simulator's convention; model building is excluded):
- episodes/s: episodes in learner batches / wall; tokens/s: their completion tokens / wall;
- fresh episodes/s: those with a nonzero weight (GRPO keeps an episode beyond the staleness
  bound in its batch with weight 0; SPO drops it before batching, which costs it wall time);
- useful episodes/s: fresh and with a nonzero advantage (a degenerate GRPO group, all rewards
  equal, contributes none);
- batch fill: mean interval between learner-ready batches (sync: includes the learner step);
- slot utilisation: slot-seconds inside episodes (finished, or still running at the end) over
  N x wall, timed around the engine's `_run_episode`;
- learner idle fraction: the trainer's `learner_wait_s` / wall;
- staleness: the trainer's `staleness/mean` and `staleness/max` (metrics.jsonl);
- ideal (estimated): N slots always busy with the round's mean episode duration.
The GRPO sync run's episode log (with its learner step time) is then fed to the simulator
(`read_episode_log`), which predicts the same ratios: a check of the simulator against the
measurement, and the prediction a GRPO user would make before switching.

Instrumentation uses the trainer's public callbacks (`on_start`: the engine starts, `on_batch`:
a batch is ready) and its `engine_factory`, which builds an engine subclass that times every
episode around `RolloutEngine._run_episode` (running episodes included, which no finished
`Episode` can tell). The training loop itself is untouched. This module imports torch through
the trainer, so only `--mode e2e` imports it.

Left out: GPUs, several learner processes, and trained models (a random `tiny` model ends
almost every episode at its first reply, so turns per episode stay near 1 even in the
long-horizon environments; the heavy tail comes from the injected latency).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
from rich.table import Table

from spo_agents.distributions import Beta, parse_distribution
from spo_agents.bench.report import METHOD_LABELS
from spo_agents.bench.simulator import SimConfig, Workload, compare, read_episode_log
from spo_agents.env.latency import LATENCY_ENV_ID
from spo_agents.rollout.engine import RolloutEngine
from spo_agents.trainer.callbacks import TrainerCallback
from spo_agents.trainer.config import TrainConfig, load_config
from spo_agents.trainer.loop import Trainer
from spo_agents.trainer.metrics import read_metrics

METHOD_OVERRIDES = {
    "grpo_sync": ("algo=grpo", "grpo_mode=batch"),
    "grpo_group": ("algo=grpo", "grpo_mode=group"),
    "spo": ("algo=spo",),
}
METHODS = tuple(METHOD_OVERRIDES)
DEFAULT_ENV = "spo/Calculator-v0"
LONG_HORIZON_ENVS = ("spo/ChainCalc-v0", "spo/FileSearch-v0")
DEFAULT_LATENCY = "lognormal:median=0.3,sigma=1.5"
_ZERO_ADVANTAGE = 1e-9


@dataclass(frozen=True)
class E2EConfig:
    env_ids: tuple[str, ...] = (DEFAULT_ENV,)
    latency: str = DEFAULT_LATENCY
    max_latency_s: float | None = 20.0
    slots: int = 8
    batch: int = 8
    group: int = 4
    steps: int = 12
    repeats: int = 2
    model: str = "tiny"
    max_tokens_per_turn: int = 16
    max_tokens_per_episode: int = 64
    seed: int = 0
    overrides: tuple[str, ...] = ()  # TrainConfig overrides (`key.sub=value`) for every method

    def __post_init__(self) -> None:
        if min(self.slots, self.batch, self.group, self.steps, self.repeats) < 1:
            raise ValueError(f"slots, batch, group, steps and repeats must be >= 1: {self}")
        if self.batch % self.group:
            raise ValueError(f"batch {self.batch} is not a multiple of group {self.group}")
        if not self.env_ids:
            raise ValueError("need at least one environment")
        parse_distribution(self.latency)  # a bad spec fails here, not after the first model build


def resolve_env_ids(spec: str) -> tuple[str, ...]:
    """`auto`: the calculator plus the long-horizon environments that are registered;
    otherwise a comma-separated list of registered ids."""
    import spo_agents  # noqa: F401  (registers the built-in environments)

    if spec.strip() == "auto":
        return (DEFAULT_ENV, *(e for e in LONG_HORIZON_ENVS if e in gymnasium.registry))
    ids = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [e for e in ids if e not in gymnasium.registry]
    if unknown or not ids:
        raise ValueError(f"unknown environment(s) {unknown or spec!r}; see `spo-agents envs`")
    return ids


def train_config(cfg: E2EConfig, env_id: str, method: str, run_dir: Path) -> TrainConfig:
    """The one TrainConfig of `method`: shared settings, then the method's switch, then the user's."""
    env_kwargs = {"inner_env_id": env_id, "latency": cfg.latency, "latency_seed": cfg.seed,
                  "max_latency_s": cfg.max_latency_s}
    step_timeout = max(120.0, 2 * (cfg.max_latency_s or 0.0))
    shared = [
        f"model={cfg.model}", f"env_id={LATENCY_ENV_ID}", f"env_kwargs={json.dumps(env_kwargs)}",
        f"steps={cfg.steps}", f"batch_size={cfg.batch}", f"group_size={cfg.group}", f"seed={cfg.seed}",
        f"output_dir={json.dumps(str(run_dir))}", f"checkpoint_every={cfg.steps + 1}", "eval.enabled=false",
        "transcripts=0", f"rollout.num_slots={cfg.slots}", f"rollout.seed={cfg.seed}",
        f"rollout.max_tokens_per_turn={cfg.max_tokens_per_turn}",
        f"rollout.max_tokens_per_episode={cfg.max_tokens_per_episode}",
        f"rollout.env_step_timeout_s={step_timeout}",
    ]
    return load_config(None, [*shared, *METHOD_OVERRIDES[method], *cfg.overrides])


# ----- instrumentation --------------------------------------------------------------------------
class TimedEngine(RolloutEngine):
    """The rollout engine, recording when each episode started and finished."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.finished: list[tuple[float, float]] = []
        self.running: dict[int, float] = {}
        self._keys = itertools.count()

    async def _run_episode(self, slot: int, task_id: str):
        key = next(self._keys)
        self.running[key] = time.monotonic()
        try:
            episode = await super()._run_episode(slot, task_id)
        finally:
            started = self.running.pop(key)
        self.finished.append((started, time.monotonic()))
        return episode


class Measurement(TrainerCallback):
    """The measurements above, taken through the trainer's callbacks; the training loop is the trainer's."""

    def __init__(self) -> None:
        self.engine: TimedEngine | None = None
        self.t0 = 0.0
        self.ready: list[float] = []
        self.totals = {"trained": 0, "fresh": 0, "useful": 0, "tokens": 0, "turns": 0}
        self.end: dict[str, Any] | None = None

    def on_start(self, trainer: Trainer, engine: RolloutEngine) -> None:
        if not isinstance(engine, TimedEngine):
            raise TypeError("Measurement needs the trainer's engine_factory to be TimedEngine")
        self.engine, self.t0 = engine, time.monotonic()

    def on_batch(self, trainer: Trainer, batch) -> None:
        now = time.monotonic()
        self.ready.append(now - self.t0)
        self.totals["trained"] += len(batch.episodes)
        self.totals["fresh"] += sum(1 for w in batch.weights if w > 0)
        self.totals["useful"] += sum(1 for a, w in zip(batch.advantages, batch.weights)
                                     if w > 0 and abs(a) > _ZERO_ADVANTAGE)
        self.totals["tokens"] += sum(e.num_completion_tokens for e in batch.episodes)
        self.totals["turns"] += sum(len(e.turns) for e in batch.episodes)
        if trainer.step + 1 >= trainer.config.steps:  # the learner takes its last batch: the run's end
            self.end = self._snapshot(now, trainer.counters)

    def _snapshot(self, now: float, counters: dict[str, float]) -> dict[str, Any]:
        intervals = [*self.engine.finished, *((s, now) for s in self.engine.running.values())]
        rel = [(max(s, self.t0) - self.t0, min(e, now) - self.t0) for s, e in intervals if s < now]
        durations = [e - s for s, e in self.engine.finished]
        return {"wall_s": now - self.t0, "intervals": rel, "counters": dict(counters),
                "episodes_finished": len(self.engine.finished), "durations": durations}


@dataclass
class RunRecord:
    """Raw measurements of one trainer run (times in seconds from the engine's start)."""

    method: str
    env_id: str
    round: int
    run_dir: str
    wall_s: float
    batch_ready_s: list[float]
    totals: dict[str, int]
    intervals: list[tuple[float, float]]
    durations: list[float]
    episodes_finished: int
    counters: dict[str, float]
    staleness_mean: float
    staleness_max: float
    learner_step_s: float


def run_method(cfg: E2EConfig, env_id: str, method: str, round_: int, run_dir: Path) -> RunRecord:
    measure = Measurement()
    trainer = Trainer(train_config(cfg, env_id, method, run_dir), show_progress=False, callbacks=[measure],
                      engine_factory=TimedEngine)
    asyncio.run(trainer.run())
    if measure.end is None:
        raise RuntimeError(f"{method} on {env_id} finished without taking its last batch")
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    end = measure.end
    return RunRecord(
        method, env_id, round_, str(run_dir), end["wall_s"], measure.ready, dict(measure.totals),
        end["intervals"], end["durations"], end["episodes_finished"], end["counters"],
        float(np.mean([r["staleness/mean"] for r in train])), float(max(r["staleness/max"] for r in train)),
        float(np.median([r["learner/step_s"] for r in train])),
    )


# ----- metrics ----------------------------------------------------------------------------------
def method_metrics(rec: RunRecord, slots: int) -> dict[str, float]:
    """The table's columns (keys of `report.COLUMNS`) plus counts, for one run."""
    wall, t = rec.wall_s, rec.totals
    busy = sum(e - s for s, e in rec.intervals)
    return {
        "batch_fill_s": float(np.mean(np.diff([0.0, *rec.batch_ready_s]))),
        "episodes_per_s": t["trained"] / wall,
        "useful_episodes_per_s": t["useful"] / wall,
        "fresh_episodes_per_s": t["fresh"] / wall,
        "tokens_per_s": t["tokens"] / wall,
        "slot_utilisation": busy / (slots * wall),
        "learner_idle_fraction": rec.counters["learner_wait_s"] / wall,
        "staleness_mean": rec.staleness_mean,
        "staleness_max": rec.staleness_max,
        "wall_s": wall,
        "episodes_trained": t["trained"],
        "episodes_fresh": t["fresh"],
        "episodes_useful": t["useful"],
        "episodes_finished": rec.episodes_finished,
        "episodes_dropped_stale": rec.counters["dropped_stale"],
        "turns_per_episode": t["turns"] / max(t["trained"], 1),
        "mean_episode_s": float(np.mean(rec.durations)) if rec.durations else float("nan"),
        "learner_step_s": rec.learner_step_s,
    }


def round_metrics(records: list[RunRecord], cfg: E2EConfig) -> dict[str, dict[str, float]]:
    """Per-method metrics of one round plus the estimated ideal and each ratio to it."""
    metrics = {r.method: method_metrics(r, cfg.slots) for r in records}
    durations = [d for r in records for d in r.durations]
    mean_s = float(np.mean(durations))
    tokens_per_episode = sum(r.totals["tokens"] for r in records) / sum(r.totals["trained"] for r in records)
    ideal_eps = cfg.slots / mean_s
    metrics["ideal"] = {"batch_fill_s": cfg.batch / ideal_eps, "episodes_per_s": ideal_eps,
                        "tokens_per_s": ideal_eps * tokens_per_episode, "slot_utilisation": 1.0,
                        "mean_episode_s": mean_s}
    for m in metrics.values():
        m["eps_ratio_to_ideal"] = m["episodes_per_s"] / ideal_eps
    return metrics


def _median_metrics(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {method: {key: float(statistics.median(r[method][key] for r in rounds)) for key in rounds[0][method]}
            for method in rounds[0]}


def _ratios(metrics: dict[str, dict[str, float]], key: str = "episodes_per_s", prefix: str = "") -> dict[str, float]:
    spo = metrics["spo"][key]
    return {f"{prefix}spo_vs_grpo_sync": spo / metrics["grpo_sync"][key],
            f"{prefix}spo_vs_grpo_group": spo / metrics["grpo_group"][key]}


def utilisation_series(intervals: list[tuple[float, float]], slots: int, horizon: float,
                       bins: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Busy fraction of the slots in `bins` equal bins over [0, horizon] (bin centres, values)."""
    edges = np.linspace(0.0, horizon, bins + 1)
    if not intervals:
        return (edges[:-1] + edges[1:]) / 2, np.zeros(bins)
    iv = np.asarray(intervals, dtype=float)
    overlap = np.minimum(iv[:, 1:2], edges[None, 1:]) - np.maximum(iv[:, 0:1], edges[None, :-1])
    busy = np.clip(overlap, 0.0, None).sum(axis=0)
    return (edges[:-1] + edges[1:]) / 2, busy / (slots * np.diff(edges))


def predict_from_log(log_path: Path, cfg: E2EConfig, step_s: float, seeds: int = 20) -> dict[str, dict]:
    """The simulator's ratios from an episode log: at this run's horizon (`steps`, averaged
    over `seeds` resamplings) and in the long run (200 steps). No admission bound, like the
    trainer's engine within a short run."""
    model = read_episode_log(log_path)
    out = {}
    for name, batches, n_seeds in (("same_horizon", cfg.steps, seeds), ("long_run", 200, 1)):
        sim = SimConfig(cfg.slots, cfg.batch, cfg.group, step_s, batches, max_pending=10**9)
        ratios = []
        for seed in range(n_seeds):
            m = compare(Workload(model, Beta(1.0, 1.0), seed=cfg.seed + seed), sim,
                        methods=("grpo_sync", "grpo_group", "spo")).metrics
            ratios.append(_ratios(m))
        out[name] = {k: float(np.mean([r[k] for r in ratios])) for k in ratios[0]}
    return out


# ----- the benchmark ----------------------------------------------------------------------------
@dataclass
class EnvResult:
    env_id: str
    rounds: list[dict[str, dict[str, float]]] = field(default_factory=list)
    ratios_by_round: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    prediction: dict[str, dict] = field(default_factory=dict)
    timeline: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    records: list[RunRecord] = field(default_factory=list)


def _slug(env_id: str) -> str:
    return env_id.replace("/", "_")


def run_env(cfg: E2EConfig, env_id: str, out_dir: Path, log: Callable[[str], None] = print) -> EnvResult:
    """All rounds on one environment: each round runs the three methods in rotated order."""
    result = EnvResult(env_id)
    for round_ in range(cfg.repeats):
        order = METHODS[round_ % len(METHODS):] + METHODS[: round_ % len(METHODS)]
        records = []
        for method in order:
            rec = run_method(cfg, env_id, method, round_, out_dir / _slug(env_id) / f"round-{round_}" / method)
            records.append(rec)
            log(f"{env_id} round {round_} {method}: {rec.totals['trained']} episodes in {rec.wall_s:.1f} s "
                f"({rec.totals['trained'] / rec.wall_s:.2f}/s)")
        result.records.extend(records)
        metrics = round_metrics(records, cfg)
        result.rounds.append(metrics)
        result.ratios_by_round.append({**_ratios(metrics), **_ratios(metrics, "fresh_episodes_per_s", "fresh_")})
    result.metrics = _median_metrics(result.rounds)
    result.ratios = {k: float(statistics.median(r[k] for r in result.ratios_by_round))
                     for k in result.ratios_by_round[0]}
    # GRPO sync's log holds every episode its run started; a streaming run's log lacks those
    # still running at its end, the longest ones, which biases a short run's log.
    sync = next(r for r in result.records if r.method == "grpo_sync")
    result.prediction = predict_from_log(Path(sync.run_dir) / "episodes.jsonl", cfg, sync.learner_step_s)
    first = result.records[: len(METHODS)]
    width = max(r.wall_s for r in first) / 120  # one bin width; each curve ends with its run
    for rec in first:
        t, u = utilisation_series(rec.intervals, cfg.slots, rec.wall_s, max(1, round(rec.wall_s / width)))
        result.timeline[rec.method] = (t.tolist(), u.tolist())
    return result


def run_e2e(cfg: E2EConfig, out_dir: Path, log: Callable[[str], None] = print) -> list[EnvResult]:
    return [run_env(cfg, env_id, out_dir, log) for env_id in cfg.env_ids]


DETAIL_COLUMNS = (
    ("wall_s", "wall s", "{:.1f}"), ("episodes_trained", "trained", "{:.0f}"), ("episodes_fresh", "fresh", "{:.0f}"),
    ("episodes_useful", "useful", "{:.0f}"), ("episodes_finished", "finished", "{:.0f}"),
    ("episodes_dropped_stale", "dropped", "{:.0f}"), ("turns_per_episode", "turns/ep", "{:.2f}"),
    ("mean_episode_s", "episode s", "{:.2f}"), ("learner_step_s", "step s", "{:.2f}"),
)
DETAIL_NOTE = (
    "trained: episodes in learner batches (the budget); fresh: with nonzero weight; useful: fresh with a "
    "nonzero advantage; finished: episodes the engine completed; dropped: SPO episodes over the staleness "
    "bound; episode s: mean duration of finished episodes; step s: median learner step"
)


def detail_table(metrics: dict[str, dict[str, float]], title: str) -> Table:
    """Counts and durations behind the rates (medians over rounds)."""
    table = Table(title=title)
    table.add_column("method")
    for _, header, _ in DETAIL_COLUMNS:
        table.add_column(header, justify="right")
    for method in METHODS:
        m = metrics[method]
        table.add_row(METHOD_LABELS.get(method, method), *(fmt.format(m[key]) for key, _, fmt in DETAIL_COLUMNS))
    return table


def results_json(cfg: E2EConfig, results: list[EnvResult]) -> dict[str, Any]:
    """Everything measured, for results.json (per-episode intervals stay in the run folders)."""
    envs = {}
    for r in results:
        runs = [{k: v for k, v in asdict(rec).items() if k not in ("intervals", "durations")} for rec in r.records]
        envs[r.env_id] = {"metrics": r.metrics, "ratios": r.ratios, "rounds": r.rounds,
                          "ratios_by_round": r.ratios_by_round, "simulator_prediction": r.prediction,
                          "utilisation_timeline": r.timeline, "runs": runs}
    return {"config": asdict(cfg), "envs": envs}
