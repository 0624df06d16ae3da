"""Turning finished episodes into weighted, advantage-carrying training samples, and SPO's step.

SPO and GRPO side by side, on top of the pure functions in `spo_agents.learner`:
- `SPOAlgorithm`: the baseline of each episode is read from the value tracker the moment the
  episode arrives (before its own reward is absorbed); advantages are standardised over the
  batch (collect mode) or with running statistics (accumulate mode, `AdvantageConfig`'s
  `running_moments`, `ema_decay`, `normalize`, `ddof`, `spo_eps`). `learner_step` runs the
  update and measures drift D with the configured estimator (the log-probs of the training
  forward, a no-grad pass only where the estimator needs one), then rho and the tracker update
  follow (the reference code's order: update, drift, rho, tracker). Given a `side_runner` (the
  local decoder's thread, which the trainer passes when the learner has a thread of its own),
  `stored_episode`'s no-grad pass runs there while the training forward runs here: both read
  the step-start weights, and the decoder has slack while the learner is the bottleneck.
- `GRPOAlgorithm`: group mean/std baseline over complete groups; degenerate groups counted.
Both apply the staleness bound: an episode more than `max_staleness` versions behind the
learner is dropped or down-weighted.
"""

from __future__ import annotations

import concurrent.futures
import time
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
from spo_agents.learner.config import DriftEstimator, Normalization
from spo_agents.learner.drift import behaviour_ratio_drift
from spo_agents.learner.update import PolicyUpdater
from spo_agents.rollout.episode import Episode, TrainingSample
from spo_agents.trainer.config import SPOUpdate, StalenessPolicy, TrainConfig


@dataclass
class Batch:
    episodes: list[Episode]
    samples: list[TrainingSample]
    advantages: list[float]
    weights: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: list[float] = field(default_factory=list)  # what each reward was compared with (SPO: v_before,
    # GRPO: its group's mean reward), so a callback can see the raw advantage r - b and the tracker's calibration


# submits fn(*args) to another thread; the future holds its result (TransformersBackend.run_between_steps)
SideRunner = Callable[..., concurrent.futures.Future]


class ScoredAhead:
    """Log-probs of the stored episodes D must re-score, computed on a side thread while the
    training forward runs; a `logprob_fn` for `DriftCache.measure_and_store_from_forward`."""

    def __init__(self, updater: PolicyUpdater, token_ids: list[list[int]], loss_masks: list[list[int]],
                 side_runner: SideRunner):
        self.token_ids = token_ids
        # one job per micro-batch, so the decoder steps between them rather than stalling for the whole pass
        groups = updater.microbatch_groups(token_ids, loss_masks)
        self.jobs = [(group, side_runner(updater.logprobs, [token_ids[i] for i in group],
                                         [loss_masks[i] for i in group])) for group in groups]

    def __call__(self, token_ids: list[list[int]], loss_masks: list[list[int]]) -> list[np.ndarray]:
        if token_ids != self.token_ids:
            raise RuntimeError("the drift cache asked for other episodes than were scored ahead")
        scored: list[np.ndarray] = [np.zeros(0)] * len(token_ids)
        for group, job in self.jobs:
            for index, logprobs in zip(group, job.result(), strict=True):
                scored[index] = logprobs
        return scored


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
        self.moments = RunningMoments(config.advantage.running_moments, config.advantage.ema_decay)
        # the reference estimator run beside the chosen one (tracker.drift_audit), own cache
        self.audit_cache = DriftCache.from_config(config.tracker) if config.tracker.drift_audit else None
        self._values_before: dict[int, float] = {}
        self._arrival_logprobs: dict[int, np.ndarray] = {}  # accumulate mode: training-forward log-probs

    def on_arrival(self, episode: Episode) -> float:
        """Baseline v(x) before the episode's reward is absorbed; remembered for the batch."""
        value = self.tracker.value(episode.task_id)
        self._values_before[id(episode)] = value
        return value

    def running_advantage(self, episode: Episode) -> float:
        """Accumulate mode: A = r - v_before standardised with running statistics (episode or token
        measure, as `advantage.normalize`; raw A with `none`, or while fewer than 2 have arrived)."""
        c = self.config.advantage
        raw = episode.reward - self._values_before[id(episode)]
        if c.normalize is Normalization.NONE:
            return raw
        token_measure = c.normalize is Normalization.TOKEN
        self.moments.update(raw, episode.num_completion_tokens if token_measure else 1.0)
        if self.moments.arrivals < 2:
            return raw
        return float(self.moments.normalize(raw, eps=c.spo_eps, ddof=0 if token_measure else c.ddof))

    def accumulate_on_arrival(self, updater: PolicyUpdater, episode: Episode, weight: float) -> None:
        """Accumulate mode: this episode's gradient now; its training-forward log-probs kept for D."""
        updater.accumulate([episode.training_view()], [self.running_advantage(episode)], [weight])
        self._arrival_logprobs[id(episode)] = updater.last_logprobs[0]

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
        return Batch(episodes, samples, [float(a) for a in advantages], weights, metrics, values.tolist())

    def learner_step(self, updater: PolicyUpdater, batch: Batch, side_runner: SideRunner | None = None
                     ) -> dict[str, float]:
        """The update (collect: forward/backward of the batch; accumulate: gradients already summed on
        arrival), drift D from the configured estimator, rho, tracker update; returns metrics
        (`learner/drift_s`: seconds spent measuring D, the update excluded, waiting for a pass
        on `side_runner` included)."""
        ahead = self._score_ahead(updater, batch, side_runner)
        if self.config.spo_update is SPOUpdate.ACCUMULATE:
            forward = [self._arrival_logprobs.pop(id(e)) for e in batch.episodes]
        else:
            updater.accumulate(batch.samples, batch.advantages, batch.weights)
            forward = updater.last_logprobs
        started = time.perf_counter()
        drifts, metrics = self._drift_before_update(updater, batch, forward, ahead)
        drift_s = time.perf_counter() - started
        metrics.update(updater.apply())
        if drifts is None:  # stored_episode_rescore: measured under the updated weights
            started = time.perf_counter()
            drifts = self._rescore(self.drift_cache, batch, updater)
            drift_s += time.perf_counter() - started
        rhos = [forgetting_factor(float(d), self.config.tracker) for d in drifts]
        if self.audit_cache is not None:
            metrics.update(self._audit(drifts, rhos, batch, updater))
        for episode, rho in zip(batch.episodes, rhos):
            self.tracker.update(episode.task_id, float(np.clip(episode.reward, 0.0, 1.0)), rho)
            self._values_before.pop(id(episode), None)
        metrics.update({"rho/mean": float(np.mean(rhos)), "rho/min": float(np.min(rhos)),
                        "rho/max": float(np.max(rhos)), "drift/mean": float(np.mean(drifts)),
                        "learner/drift_s": drift_s})
        return metrics

    def _score_ahead(self, updater: PolicyUpdater, batch: Batch, side_runner: SideRunner | None
                     ) -> ScoredAhead | None:
        """stored_episode with a side runner: start the re-scoring pass there before the forward."""
        if side_runner is None or self.config.tracker.drift_estimator is not DriftEstimator.STORED_EPISODE:
            return None
        token_ids, loss_masks = self.drift_cache.to_rescore([e.task_id for e in batch.episodes],
                                                            [s.token_ids for s in batch.samples])
        return ScoredAhead(updater, token_ids, loss_masks, side_runner) if token_ids else None

    def _drift_before_update(self, updater: PolicyUpdater, batch: Batch, forward: list[np.ndarray],
                             ahead: ScoredAhead | None = None) -> tuple[np.ndarray | None, dict[str, float]]:
        """D from the training forward's log-probs (step-start weights); None when the estimator
        measures after the update."""
        estimator = self.config.tracker.drift_estimator
        if estimator is DriftEstimator.BEHAVIOUR_RATIO:
            return np.array([behaviour_ratio_drift(s.behaviour_logprobs, lp, s.loss_mask)
                             for s, lp in zip(batch.samples, forward)]), {}
        if estimator is DriftEstimator.STORED_EPISODE:  # a pass, if any, with the forward's weights
            drifts, counts = self.drift_cache.measure_and_store_from_forward(
                [e.task_id for e in batch.episodes], [s.token_ids for s in batch.samples],
                [s.loss_mask for s in batch.samples], forward, ahead or updater.logprobs, updater.version)
            counts["rescored_aside"] = counts["rescored"] if ahead is not None else 0.0
            return drifts, {f"drift/{k}": v for k, v in counts.items()}
        return None, {}

    @staticmethod
    def _rescore(cache: DriftCache, batch: Batch, updater: PolicyUpdater) -> np.ndarray:
        """The reference code's timing: one no-grad pass after the update (stored and new episodes)."""
        return cache.measure_and_store([e.task_id for e in batch.episodes], [s.token_ids for s in batch.samples],
                                       [s.loss_mask for s in batch.samples], updater.logprobs, updater.version)

    def _audit(self, drifts: np.ndarray, rhos: list[float], batch: Batch, updater: PolicyUpdater
               ) -> dict[str, float]:
        """D and rho of the reference estimator on the same visits; compared where both have a stored
        episode (the reference's D > 0 or the task was seen before by both caches)."""
        seen = np.array([e.task_id in self.audit_cache for e in batch.episodes])
        reference = self._rescore(self.audit_cache, batch, updater)
        if not seen.any():
            return {"drift/audit_tasks": 0.0}
        reference_rhos = np.array([forgetting_factor(float(d), self.config.tracker) for d in reference])
        return {"drift/audit_tasks": float(seen.sum()),
                "drift/audit_mean": float(drifts[seen].mean()),
                "drift/audit_reference_mean": float(reference[seen].mean()),
                "drift/audit_abs_diff": float(np.abs(drifts - reference)[seen].mean()),
                "drift/audit_diff": float((drifts - reference)[seen].mean()),
                "rho/audit_abs_diff": float(np.abs(np.array(rhos) - reference_rhos)[seen].mean())}

    def state_dict(self) -> dict:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])


class GRPOAlgorithm:
    def __init__(self, config: TrainConfig):
        self.config = config

    def make_batch(self, groups: list[list[Episode]], version: int) -> Batch:
        episodes = [e for group in groups for e in group]
        group_ids = np.array([g for g, group in enumerate(groups) for _ in group])
        rewards = np.array([e.reward for e in episodes])
        c = self.config.advantage
        advantages, degenerate = grpo_advantages(rewards, group_ids, scale_by_std=c.grpo_scale_by_std,
                                                 eps=c.grpo_eps, ddof=c.ddof)
        weights = [staleness_weight(e, version, self.config) for e in episodes]
        metrics = {"grpo/degenerate_group_frac": degenerate / max(len(groups), 1)}
        metrics.update(_staleness_metrics(episodes, version))
        means = [float(np.mean([e.reward for e in group])) for group in groups for _ in group]
        return Batch(episodes, [e.training_view() for e in episodes], [float(a) for a in advantages], weights,
                     metrics, means)
