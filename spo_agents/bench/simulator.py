"""Discrete-event simulator of long-horizon rollout throughput: SPO streaming versus GRPO.

Why: SPO's headline claim is that dropping groups removes the synchronisation barrier. This
module measures that claim without a model: N rollout slots run episodes whose durations are
drawn from a latency model, and four ways of feeding a learner consume them.

- `grpo_sync`: take B/G tasks x G episodes, run them on min(N, B) slots, wait for all of them,
  run the learner step (generation waits), repeat. Episodes are never stale.
- `grpo_group`: N slots refill continuously; an episode becomes usable only when all G
  members of its group have finished; the learner takes B/G complete groups, first complete
  first taken, and runs concurrently with generation.
- `spo`: N slots refill continuously; the learner takes any B finished episodes, first
  finished first taken.
- `ideal`: as `spo` with no admission bound and a learner that never holds anything up; its
  elapsed time is the time the last batch became ready (the physical limit of N slots).

Every method consumes the same episode stream (`Workload`): the k-th episode started has the
same duration, tokens and reward draw in every method. Episodes map to tasks as k // G for
the GRPO methods and one task per episode for SPO, with per-task success probabilities, so
degenerate groups (all G rewards equal: zero advantage) are counted. An SPO episode counts as
useful unless its task's success probability is exactly 0 or 1, where a converged value
tracker gives zero advantage.

Streaming methods have an admission bound (`max_pending`, default N + B): at most that many
episodes may be started and not yet taken by the learner, as off-policy systems bound how far
generation runs ahead of training. It is what costs group-gated streaming slot time: finished
members of an incomplete group count against it.

Left out: weight-sync pauses, dropping episodes beyond a staleness bound, prioritised task
sampling, and correlation between an episode's duration and its reward. The end-to-end mode
(real engine, real learner) measures what this model cannot.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from spo_agents.distributions import Beta, Constant, Distribution, LogNormal

METHODS = ("grpo_sync", "grpo_group", "spo", "ideal")


class EpisodeModel(Protocol):
    """Draws per-episode (durations in seconds, completion tokens)."""

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ComponentModel:
    """Duration = sum over turns of tokens x per-token seconds + tool seconds.

    Turns and tokens are rounded to integers >= 1; every turn, including the last, pays a
    tool latency (set it to 0 for a final answer without a call if that matters to you).
    """

    turns: Distribution = LogNormal(4.0, 0.5)
    tokens_per_turn: Distribution = LogNormal(300.0, 0.6)
    token_seconds: Distribution = LogNormal(0.02, 0.1)
    tool_seconds: Distribution = LogNormal(2.0, 1.0)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        turns = np.maximum(1, np.rint(self.turns.sample(rng, n))).astype(np.int64)
        total = int(turns.sum())
        tokens = np.maximum(1, np.rint(self.tokens_per_turn.sample(rng, total)))
        turn_seconds = tokens * self.token_seconds.sample(rng, total)
        turn_seconds += self.tool_seconds.sample(rng, total)
        first = np.concatenate(([0], np.cumsum(turns)[:-1]))
        return np.add.reduceat(turn_seconds, first), np.add.reduceat(tokens, first)


def lognormal_episodes(median_s: float, sigma: float, tokens: int = 1000) -> ComponentModel:
    """One turn per episode with a log-normal duration (median `median_s`) and fixed tokens."""
    return ComponentModel(
        turns=Constant(1),
        tokens_per_turn=Constant(tokens),
        token_seconds=LogNormal(median_s / tokens, sigma),
        tool_seconds=Constant(0.0),
    )


@dataclass(frozen=True)
class EmpiricalEpisodes:
    """Resamples whole recorded episodes, keeping each one's duration and tokens together."""

    durations: tuple[float, ...]
    tokens: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.durations or len(self.durations) != len(self.tokens):
            raise ValueError("need at least one episode and as many token counts as durations")

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.durations), n)
        return np.asarray(self.durations)[idx], np.asarray(self.tokens, dtype=float)[idx]


def read_episode_log(path: str | Path) -> EmpiricalEpisodes:
    """Episodes of a JSONL episode log: duration = sum of turns' policy + env seconds.

    Tokens are the completion tokens of all turns. Episodes that ended in an error are kept:
    they occupied a slot. Blank lines are skipped; a line that is not a JSON object raises.
    """
    durations: list[float] = []
    tokens: list[float] = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or "turns" not in record:
            raise ValueError(f"{path}:{line_no}: not an episode record (no 'turns')")
        turns = record["turns"]
        seconds = (float(t.get("policy_seconds") or 0.0) + float(t.get("env_seconds") or 0.0)
                   for t in turns)
        durations.append(sum(seconds))
        tokens.append(float(sum(len(t.get("completion_ids") or ()) for t in turns)))
    if not durations:
        raise ValueError(f"{path}: no episodes")
    return EmpiricalEpisodes(tuple(durations), tuple(tokens))


class Workload:
    """The episode stream shared by all methods, drawn lazily in fixed chunks.

    Episode k's duration, tokens and reward draw u_k do not depend on who asks first or how
    many episodes were drawn before, so methods that start different numbers of episodes still
    see the same stream. Task j's success probability p_j comes from `success`; episode k of
    task j is rewarded 1 if u_k < p_j.
    """

    def __init__(
        self,
        episodes: EpisodeModel,
        success: Distribution = Beta(1.0, 1.0),
        seed: int = 0,
        chunk: int = 2048,
    ) -> None:
        self.episodes, self.success, self.chunk = episodes, success, chunk
        self._episode_rng = np.random.default_rng([seed, 1])
        self._task_rng = np.random.default_rng([seed, 2])
        self.duration = np.empty(0)
        self.tokens = np.empty(0)
        self.reward_draw = np.empty(0)
        self.task_p = np.empty(0)

    def ensure(self, n_episodes: int, n_tasks: int = 0) -> None:
        while len(self.duration) < n_episodes:
            d, t = self.episodes.sample(self._episode_rng, self.chunk)
            u = self._episode_rng.random(self.chunk)
            self.duration = np.concatenate((self.duration, d))
            self.tokens = np.concatenate((self.tokens, t))
            self.reward_draw = np.concatenate((self.reward_draw, u))
        while len(self.task_p) < n_tasks:
            p = np.clip(self.success.sample(self._task_rng, self.chunk), 0.0, 1.0)
            self.task_p = np.concatenate((self.task_p, p))


@dataclass(frozen=True)
class SimConfig:
    slots: int = 64
    batch: int = 32
    group: int = 8
    step_seconds: float = 10.0
    batches: int = 200
    max_pending: int | None = None  # None: slots + batch

    def __post_init__(self) -> None:
        if min(self.slots, self.batch, self.group, self.batches) < 1 or self.step_seconds < 0:
            raise ValueError(f"invalid simulator config {self}")
        if self.batch % self.group:
            raise ValueError(f"batch {self.batch} is not a multiple of group {self.group}")
        if self.pending_cap < self.batch + self.group:
            raise ValueError("max_pending below batch + group can deadlock streaming")

    @property
    def pending_cap(self) -> int:
        return self.slots + self.batch if self.max_pending is None else self.max_pending


@dataclass
class Trace:
    """What one method did: every started episode, every batch, every trained episode."""

    method: str
    slots: int
    start: np.ndarray  # start time of every started episode, by episode index
    ready: np.ndarray  # time each batch became available to the learner
    taken: np.ndarray  # time the learner took each batch
    elapsed: float
    trained: np.ndarray  # episode indices, in the order the learner took them
    staleness: np.ndarray  # learner steps between each trained episode's start and its use
    learner_busy: float  # learner seconds within [0, elapsed]


class _Stream:
    """Event loop for the streaming methods; `gate` = G episodes per usable unit (1 for SPO)."""

    def __init__(self, workload: Workload, cfg: SimConfig, gate: int, cap: float, step_s: float):
        self.w, self.cfg, self.gate, self.cap, self.step_s = workload, cfg, gate, cap, step_s
        self.t, self.learner_end = 0.0, -math.inf
        self.running: list[tuple[float, int]] = []  # heap of (finish time, episode)
        self.starts: list[float] = []
        self.start_version: list[int] = []
        self.pending = 0
        self.finished_in_group: dict[int, int] = {}
        self.usable: deque[int] = deque()
        self.usable_times: list[float] = []
        self.taken: list[float] = []
        self.trained: list[int] = []
        self.staleness: list[int] = []
        self._dur: list[float] = []

    def _version(self) -> int:
        return len(self.taken) if self.t >= self.learner_end else len(self.taken) - 1

    def _fill_slots(self) -> None:
        while len(self.running) < self.cfg.slots and self.pending < self.cap:
            k = len(self.starts)
            if k >= len(self._dur):
                self.w.ensure(k + 1)
                self._dur = self.w.duration.tolist()
            heapq.heappush(self.running, (self.t + self._dur[k], k))
            self.starts.append(self.t)
            self.start_version.append(self._version())
            self.pending += 1

    def _try_take(self) -> bool:
        batch = self.cfg.batch
        if self.t < self.learner_end or len(self.usable) < batch:
            return False
        version = len(self.taken)
        for _ in range(batch):
            k = self.usable.popleft()
            self.trained.append(k)
            self.staleness.append(version - self.start_version[k])
        self.taken.append(self.t)
        self.learner_end = self.t + self.step_s
        self.pending -= batch
        return True

    def _advance(self) -> None:
        wake_learner = self.t < self.learner_end and len(self.usable) >= self.cfg.batch
        if not self.running and not wake_learner:
            raise RuntimeError("simulation stalled: nothing running and no batch ready")
        if wake_learner and (not self.running or self.learner_end <= self.running[0][0]):
            self.t = self.learner_end
            return
        self.t, k = heapq.heappop(self.running)
        group = k // self.gate
        done = self.finished_in_group.get(group, 0) + 1
        if done < self.gate:
            self.finished_in_group[group] = done
            return
        self.finished_in_group.pop(group, None)
        self.usable.extend(range(group * self.gate, (group + 1) * self.gate))
        self.usable_times.extend([self.t] * self.gate)

    def run(self, method: str) -> Trace:
        n = self.cfg.batches
        while len(self.taken) < n:
            self._fill_slots()
            if not self._try_take():
                self._advance()
        ready = np.asarray(self.usable_times)[self.cfg.batch - 1 :: self.cfg.batch][:n]
        taken = np.asarray(self.taken)
        elapsed = float(ready[-1] if method == "ideal" else taken[-1])
        busy = float(np.clip(elapsed - taken, 0.0, self.step_s).sum())
        return Trace(
            method, self.cfg.slots, np.asarray(self.starts), ready, taken, elapsed,
            np.asarray(self.trained), np.asarray(self.staleness), busy,
        )


def simulate_sync(workload: Workload, cfg: SimConfig) -> Trace:
    """GRPO synchronous batch: B episodes on min(N, B) slots, wait for all, step, repeat."""
    b, lanes, n = cfg.batch, min(cfg.slots, cfg.batch), cfg.batches
    workload.ensure(n * b)
    dur = workload.duration
    starts = np.empty(n * b)
    ready = np.empty(n)
    t = 0.0
    for i in range(n):
        free = [t] * lanes  # a heap of slot-free times; all equal, so already a heap
        done = t
        for k in range(i * b, (i + 1) * b):
            s = heapq.heappop(free)
            starts[k] = s
            heapq.heappush(free, s + dur[k])
            done = max(done, s + dur[k])
        ready[i] = done
        t = done + cfg.step_seconds
    elapsed = float(ready[-1])
    busy = float(cfg.step_seconds * (n - 1))
    return Trace(
        "grpo_sync", cfg.slots, starts, ready, ready.copy(), elapsed,
        np.arange(n * b), np.zeros(n * b, dtype=int), busy,
    )


def simulate(workload: Workload, cfg: SimConfig, method: str) -> Trace:
    """Run one method on the workload."""
    if method == "grpo_sync":
        return simulate_sync(workload, cfg)
    if method == "grpo_group":
        return _Stream(workload, cfg, cfg.group, cfg.pending_cap, cfg.step_seconds).run(method)
    if method == "spo":
        return _Stream(workload, cfg, 1, cfg.pending_cap, cfg.step_seconds).run(method)
    if method == "ideal":
        return _Stream(workload, cfg, 1, math.inf, 0.0).run(method)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def useful_mask(trace: Trace, workload: Workload, group: int) -> np.ndarray:
    """Which trained episodes carry a non-zero advantage (see the module docstring)."""
    k = trace.trained
    if trace.method in ("grpo_sync", "grpo_group"):
        workload.ensure(int(k.max()) + 1, int(k.max()) // group + 1)
        rewards = workload.reward_draw[k] < workload.task_p[k // group]
        per_group = rewards.reshape(-1, group)  # trained in whole groups, members in order
        degenerate = per_group.all(axis=1) | ~per_group.any(axis=1)
        return np.repeat(~degenerate, group)
    workload.ensure(int(k.max()) + 1, int(k.max()) + 1)
    p = workload.task_p[k]
    return (p > 0.0) & (p < 1.0)


def busy_slot_seconds(start: np.ndarray, end: np.ndarray, until: np.ndarray) -> np.ndarray:
    """Busy slot-seconds within [0, u] for each u in `until`."""
    u = np.asarray(until, dtype=float)[:, None]
    return np.clip(np.minimum(end[None, :], u) - start[None, :], 0.0, None).sum(axis=1)


def utilisation_timeline(
    trace: Trace, workload: Workload, horizon: float | None = None, bins: int = 100
):
    """(bin centres in seconds, busy fraction of slot-time per bin) over [0, horizon].

    The horizon defaults to the trace's elapsed time; past it the method has stopped.
    """
    start = trace.start
    end = start + workload.duration[: len(start)]
    edges = np.linspace(0.0, trace.elapsed if horizon is None else horizon, bins + 1)
    busy = np.diff(busy_slot_seconds(start, end, edges))
    return (edges[:-1] + edges[1:]) / 2, busy / (trace.slots * np.diff(edges))


def summarise(trace: Trace, workload: Workload, cfg: SimConfig) -> dict[str, float]:
    """The report's numbers for one method."""
    n, t_end = len(trace.ready), trace.elapsed
    start = trace.start
    end = start + workload.duration[: len(start)]
    useful = useful_mask(trace, workload, cfg.group)
    busy = float(busy_slot_seconds(start, end, np.array([t_end]))[0])
    batch_fill = float(trace.ready[-1] / n)
    if trace.method == "ideal":  # the learner is fed at the ideal rate and never delays it
        learner_idle = max(0.0, 1.0 - cfg.step_seconds / batch_fill)
    else:
        learner_idle = 1.0 - trace.learner_busy / t_end
    return {
        "batch_fill_s": batch_fill,
        "first_batch_s": float(trace.ready[0]),
        "episodes_per_s": len(trace.trained) / t_end,
        "useful_episodes_per_s": float(useful.sum()) / t_end,
        "tokens_per_s": float(workload.tokens[trace.trained].sum()) / t_end,
        "slot_utilisation": busy / (trace.slots * t_end),
        "learner_idle_fraction": learner_idle,
        "staleness_mean": float(trace.staleness.mean()),
        "staleness_max": int(trace.staleness.max()),
        "degenerate_fraction": 1.0 - float(useful.mean()),
        "elapsed_s": t_end,
    }


@dataclass
class Comparison:
    config: SimConfig
    traces: dict[str, Trace] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def compare(workload: Workload, cfg: SimConfig, methods=METHODS) -> Comparison:
    """Every method on the same workload, with each method's ratio to the ideal."""
    out = Comparison(cfg)
    for method in methods:
        out.traces[method] = simulate(workload, cfg, method)
        out.metrics[method] = summarise(out.traces[method], workload, cfg)
    if "ideal" in out.metrics:
        ideal = out.metrics["ideal"]
        for m in out.metrics.values():
            m["eps_ratio_to_ideal"] = m["episodes_per_s"] / ideal["episodes_per_s"]
            m["utilisation_ratio_to_ideal"] = m["slot_utilisation"] / ideal["slot_utilisation"]
    return out


# --- The SPO paper's setting and the tail sweep -------------------------------------------

PAPER_SPEEDUP = 486.0 / 112.0  # 4.34: GRPO groups vs SPO, batch of 24, groups of 8
PAPER_MEDIAN_S = 121.0  # chosen so SPO's batch fills in about the paper's 112 s (first reading)
# Readings of the unpublished protocol -> (GRPO method, GRPO slots, calibrated sigma).
PAPER_READINGS = {
    # GRPO runs exactly 3 groups (24 episodes) and waits for all; SPO keeps 48 in flight.
    "sync24_vs_spo48": ("grpo_sync", 24, 0.69),
    # Both keep 48 in flight; GRPO needs 3 of its 6 groups complete.
    "group48_vs_spo48": ("grpo_group", 48, 1.10),
}
PAPER_READING = "sync24_vs_spo48"


def paper_setting(
    seed: int = 0, reps: int = 2000, reading: str = PAPER_READING, sigma: float | None = None
) -> dict:
    """GRPO batch-fill time over SPO's at the paper's setting (B = 24, G = 8, SPO N = 48).

    Per-episode durations are log-normal (median `PAPER_MEDIAN_S`); each repetition fills one
    batch from a cold start with both methods on the same episodes, and the speedup is the
    ratio of the mean fill times over `reps` repetitions.
    """
    grpo_method, grpo_slots, default_sigma = PAPER_READINGS[reading]
    sigma = default_sigma if sigma is None else sigma
    model = lognormal_episodes(PAPER_MEDIAN_S, sigma)
    grpo_cfg = SimConfig(slots=grpo_slots, batch=24, group=8, step_seconds=0.0, batches=1)
    spo_cfg = SimConfig(slots=48, batch=24, group=8, step_seconds=0.0, batches=1)
    grpo_fill = np.empty(reps)
    spo_fill = np.empty(reps)
    for r in range(reps):
        workload = Workload(model, seed=seed * 1_000_003 + r, chunk=128)
        grpo_fill[r] = simulate(workload, grpo_cfg, grpo_method).ready[0]
        spo_fill[r] = simulate(workload, spo_cfg, "spo").ready[0]
    speedup = float(grpo_fill.mean() / spo_fill.mean())
    return {
        "reading": reading,
        "sigma": sigma,
        "median_s": PAPER_MEDIAN_S,
        "reps": reps,
        "grpo_batch_fill_s": float(grpo_fill.mean()),
        "spo_batch_fill_s": float(spo_fill.mean()),
        "speedup": speedup,
        "paper_speedup": PAPER_SPEEDUP,
        "relative_error": speedup / PAPER_SPEEDUP - 1.0,
    }


def tail_sweep(
    sigmas, cfg: SimConfig, seed: int = 0, median_s: float = 30.0, paper_reps: int = 300
) -> list[dict]:
    """Speedups against log-normal sigma: long-run episodes/s ratios and the paper readings."""
    rows = []
    for sigma in sigmas:
        workload = Workload(lognormal_episodes(median_s, float(sigma)), seed=seed)
        m = compare(workload, cfg).metrics
        row = {
            "sigma": float(sigma),
            "spo_vs_grpo_sync": m["spo"]["episodes_per_s"] / m["grpo_sync"]["episodes_per_s"],
            "spo_vs_grpo_group": m["spo"]["episodes_per_s"] / m["grpo_group"]["episodes_per_s"],
            "spo_useful_vs_grpo_sync": m["spo"]["useful_episodes_per_s"]
            / m["grpo_sync"]["useful_episodes_per_s"],
            "spo_utilisation": m["spo"]["slot_utilisation"],
            "grpo_group_utilisation": m["grpo_group"]["slot_utilisation"],
            "grpo_sync_utilisation": m["grpo_sync"]["slot_utilisation"],
        }
        for reading in PAPER_READINGS:
            res = paper_setting(seed, paper_reps, reading, float(sigma))
            row[f"paper_{reading}"] = res["speedup"]
        rows.append(row)
    return rows
