"""Turning finished episodes into weighted, advantage-carrying training samples.

SPO and GRPO side by side, on top of the pure functions in `spo_agents.learner`:
- `SPOAlgorithm`: the baseline of each episode is read from the value tracker the moment the
  episode arrives (before its own reward is absorbed); advantages are standardised over the
  batch (collect mode) or with running statistics (accumulate mode); after the learner step,
  drift D is measured on each task's stored episode, rho follows, and the tracker absorbs the
  rewards (the reference code's order of operations).
- `GRPOAlgorithm`: group mean/std baseline over complete groups; degenerate groups counted.
Both apply the staleness bound: an episode more than `max_staleness` versions behind the
learner is dropped or down-weighted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from spo_agents.learner import (
    DriftCache,
    RunningMoments,
    ValueTracker,
    forgetting_factor,
    grpo_advantages,
    spo_advantages,
)
from spo_agents.learner.config import DriftEstimator
from spo_agents.learner.drift import behaviour_ratio_drift
from spo_agents.rollout.episode import Episode, TrainingSample
from spo_agents.trainer.config import StalenessPolicy, TrainConfig


@dataclass
class Batch:
    episodes: list[Episode]
    samples: list[TrainingSample]
    advantages: list[float]
    weights: list[float]
    metrics: dict[str, float] = field(default_factory=dict)


def staleness_weight(episode: Episode, learner_version: int, config: TrainConfig) -> float:
    """1 within the bound; beyond it 0 (drop) or decay ** excess (downweight)."""
    oldest = min(episode.policy_versions, default=learner_version)
    excess = learner_version - oldest - config.max_staleness
    if excess <= 0:
        return 1.0
    return 0.0 if config.staleness_policy is StalenessPolicy.DROP else config.staleness_decay**excess


def _staleness_metrics(episodes: Sequence[Episode], version: int) -> dict[str, float]:
    lags = [version - min(e.policy_versions, default=version) for e in episodes]
    return {"staleness/mean": float(np.mean(lags)) if lags else 0.0, "staleness/max": float(max(lags, default=0))}


class SPOAlgorithm:
    def __init__(self, tracker: ValueTracker, drift_cache: DriftCache, config: TrainConfig):
        self.tracker, self.drift_cache, self.config = tracker, drift_cache, config
        self.moments = RunningMoments()
        self._values_before: dict[int, float] = {}

    def on_arrival(self, episode: Episode) -> float:
        """Baseline v(x) before the episode's reward is absorbed; remembered for the batch."""
        value = self.tracker.value(episode.task_id)
        self._values_before[id(episode)] = value
        return value

    def running_advantage(self, episode: Episode) -> float:
        """Accumulate mode: A = r - v_before standardised with running statistics."""
        raw = episode.reward - self._values_before[id(episode)]
        self.moments.update(raw)
        return float(self.moments.normalize(raw)) if self.moments.count > 1 else raw

    def make_batch(self, episodes: list[Episode], version: int) -> Batch:
        values = np.array([self._values_before[id(e)] for e in episodes])
        rewards = np.array([e.reward for e in episodes])
        samples = [e.training_view() for e in episodes]
        num_tokens = np.array([s.num_sampled_tokens for s in samples], dtype=float)
        c = self.config.advantage
        advantages = spo_advantages(rewards, values, num_tokens, normalize=c.normalize.value, eps=c.spo_eps,
                                    ddof=c.ddof)
        weights = [staleness_weight(e, version, self.config) for e in episodes]
        metrics = {"adv/mean_raw": float(np.mean(rewards - values)), "adv/std_raw": float(np.std(rewards - values)),
                   "value/mean_before": float(values.mean()), "value/calibration_error": float(np.mean(
                       np.abs(values - rewards)))}
        metrics.update(_staleness_metrics(episodes, version))
        return Batch(episodes, samples, [float(a) for a in advantages], weights, metrics)

    def after_step(self, episodes: list[Episode], samples: list[TrainingSample], logprob_fn: Callable,
                   version: int) -> dict[str, float]:
        """Drift -> rho -> tracker update, after the learner step (reference order); `samples` are
        the episodes' training views (already built for the step)."""
        if self.config.tracker.drift_estimator is DriftEstimator.STORED_EPISODE:
            drifts = self.drift_cache.measure_and_store([e.task_id for e in episodes],
                                                        [s.token_ids for s in samples],
                                                        [s.loss_mask for s in samples], logprob_fn, version)
        else:
            now = logprob_fn([s.token_ids for s in samples], [s.loss_mask for s in samples])
            drifts = np.array([behaviour_ratio_drift(s.behaviour_logprobs, lp, s.loss_mask)
                               for s, lp in zip(samples, now)])
        rhos = [forgetting_factor(float(d), self.config.tracker) for d in drifts]
        for episode, rho in zip(episodes, rhos):
            self.tracker.update(episode.task_id, float(np.clip(episode.reward, 0.0, 1.0)), rho)
            self._values_before.pop(id(episode), None)
        return {"rho/mean": float(np.mean(rhos)), "rho/min": float(np.min(rhos)), "rho/max": float(np.max(rhos)),
                "drift/mean": float(np.mean(drifts))}


class GRPOAlgorithm:
    def __init__(self, config: TrainConfig):
        self.config = config

    def make_batch(self, groups: list[list[Episode]], version: int) -> Batch:
        episodes = [e for group in groups for e in group]
        group_ids = np.array([g for g, group in enumerate(groups) for _ in group])
        rewards = np.array([e.reward for e in episodes])
        advantages, degenerate = grpo_advantages(rewards, group_ids, ddof=self.config.advantage.ddof)
        weights = [staleness_weight(e, version, self.config) for e in episodes]
        metrics = {"grpo/degenerate_group_frac": degenerate / max(len(groups), 1)}
        metrics.update(_staleness_metrics(episodes, version))
        return Batch(episodes, [e.training_view() for e in episodes], [float(a) for a in advantages], weights,
                     metrics)
