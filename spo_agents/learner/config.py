"""Typed configuration of the SPO/GRPO learner core, plus the enums that name its modes.

Every field has a description because the CLI turns these descriptions into `--help` text.
Defaults follow the SPO authors' reference recipe for verl (`recipe/spo/`); where the paper
differs, the paper's choice is an option and the field says so. See docs/algorithms.md for
the full side-by-side of SPO and GRPO.

This module is a leaf: it imports nothing else from the learner, so the algorithm modules
(tracker, drift, sampler, advantages, loss) can import their enums from here. What is left
out: optimiser, micro-batching, staleness and streaming settings belong to the trainer's
config, not to this pure algorithmic core.
"""

from __future__ import annotations

from enum import Enum

import pydantic
from pydantic import Field


class RhoMode(str, Enum):
    """How the tracker's forgetting factor rho is chosen for each update."""

    KL = "kl"  # rho = clip(2 ** (-D / d_half), rho_min, rho_max) from the policy drift D
    CONSTANT = "constant"  # one fixed rho for every task (the paper's ablation)


class DriftEstimator(str, Enum):
    """How the policy drift D of a task since its last visit is measured."""

    # the reference definition, log-probs from the training forward; a pass only for revisits
    STORED_EPISODE = "stored_episode"
    # the reference code's timing: a pass after each update over the batch and its revisits
    STORED_EPISODE_RESCORE = "stored_episode_rescore"
    BEHAVIOUR_RATIO = "behaviour_ratio"  # |logp_behaviour - logp_step_start| on this episode, no pass


class Normalization(str, Enum):
    """How SPO advantages are standardised over a batch."""

    EPISODE = "episode"  # every episode counts once (the paper and the reference code)
    TOKEN = "token"  # every policy token counts once (SPO++): episodes weighted by length
    NONE = "none"  # raw A = r - v_before


class MomentsMode(str, Enum):
    """How running advantage statistics are kept when episodes arrive one at a time."""

    WELFORD = "welford"  # exact mean/variance of everything since the last reset
    EMA = "ema"  # exponentially decayed mean/variance (never reset, tracks drift)


class _Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class TrackerConfig(_Config):
    """Per-task value tracker: Beta(alpha, beta) estimates with drift-adaptive forgetting."""

    rho_mode: RhoMode = Field(
        RhoMode.KL,
        description="forgetting factor: 'kl' adapts rho to the policy drift D since the task's "
        "last visit; 'constant' uses constant_rho for every update (ablation)",
    )
    d_half: float = Field(
        0.06, gt=0, description="drift (nats per policy token) at which rho = 0.5 before clipping"
    )
    rho_min: float = Field(
        0.875, gt=0, lt=1, description="lower clip of rho; also sets N0 = 1/(1-rho_min) at init"
    )
    rho_max: float = Field(
        0.96, gt=0, le=1, description="upper clip of rho (the value on a first visit)"
    )
    constant_rho: float = Field(
        0.875,
        gt=0,
        le=1,
        description="rho used when rho_mode=constant (reference config's rho.value = 0.875)",
    )
    drift_estimator: DriftEstimator = Field(
        DriftEstimator.STORED_EPISODE,
        description="how D is measured: 'stored_episode' compares the task's last episode's "
        "log-probs then and now, both taken from training forwards (a no-grad pass only for a "
        "revisited task whose new episode does not repeat the stored one); "
        "'stored_episode_rescore' is the reference code's timing (a pass after every update over "
        "the batch and the revisited stored episodes); 'behaviour_ratio' compares this episode's "
        "sampler and training-forward log-probs (no pass); see docs/algorithms.md",
    )
    drift_audit: bool = Field(
        False,
        description="also run 'stored_episode_rescore' (own cache, its pass after every update) "
        "beside the chosen estimator and log drift/audit_* (the difference in D and rho on the "
        "same tasks): measures the chosen estimator's bias, at the rescore estimator's cost",
    )
    drift_cache_max_tasks: int = Field(
        50_000, ge=1, description="stored-episode drift cache: most tasks kept (LRU eviction)"
    )
    drift_cache_max_tokens_per_episode: int = Field(
        8192, ge=1, description="stored-episode drift cache: longest stored token prefix per task"
    )
    drift_cache_max_total_tokens: int = Field(
        1 << 25,
        ge=1,
        description="stored-episode drift cache: total stored tokens over all tasks (LRU eviction)",
    )
    init_smoothed: bool = Field(
        True,
        description="offline init: v0 = (k+0.5)/(n0+1) (reference code) instead of k/n0 (paper)",
    )
    prior_alpha: float = Field(0.5, gt=0, description="alpha of a task with no estimate")
    prior_beta: float = Field(0.5, gt=0, description="beta of a task with no estimate")

    @pydantic.model_validator(mode="after")
    def _check_clip(self) -> "TrackerConfig":
        if self.rho_min > self.rho_max:
            raise ValueError(f"rho_min ({self.rho_min}) must not exceed rho_max ({self.rho_max})")
        if self.drift_audit and self.drift_estimator is DriftEstimator.STORED_EPISODE_RESCORE:
            raise ValueError(
                "drift_audit compares an estimator with stored_episode_rescore; with "
                "drift_estimator: stored_episode_rescore there is nothing to compare"
            )
        return self


class SamplerConfig(_Config):
    """Prioritised task sampling: w = sqrt(v(1-v)) / N_eff**gamma + eps."""

    prioritized: bool = Field(
        True, description="false: every task equally likely (uniform sampling; an ablation of the priority)"
    )
    eps: float = Field(0.05, ge=0, description="exploration floor added to every task's weight")
    gamma: float = Field(
        0.0, ge=0, description="N_eff exponent: >0 favours tasks with fewer effective observations"
    )
    max_in_flight_per_task: int | None = Field(
        1,
        ge=1,
        description="most episodes of one task running at once (1 = the paper's one episode per "
        "task per batch; null = unlimited)",
    )
    seed: int = Field(0, description="seed of the sampler's own random generator")


class AdvantageConfig(_Config):
    """SPO and GRPO advantage estimation."""

    normalize: Normalization = Field(
        Normalization.EPISODE,
        description="SPO batch standardisation: 'episode' (reference), 'token' (SPO++, "
        "weights episodes by policy tokens) or 'none'",
    )
    spo_eps: float = Field(1e-8, gt=0, description="added to the batch std in SPO normalisation")
    ddof: int = Field(
        1,
        ge=0,
        le=1,
        description="delta degrees of freedom of the std (1 = torch.std's unbiased default, as "
        "the reference code; token normalisation always uses the weighted population std)",
    )
    grpo_scale_by_std: bool = Field(
        True, description="GRPO: divide by the group std (false = Dr. GRPO style mean-only)"
    )
    grpo_eps: float = Field(1e-6, gt=0, description="added to the group std in GRPO")
    running_moments: MomentsMode = Field(
        MomentsMode.WELFORD,
        description="running statistics for episodes that arrive before the batch is complete",
    )
    ema_decay: float = Field(
        0.99, gt=0, lt=1, description="decay per unit weight when running_moments=ema"
    )


class LossConfig(_Config):
    """PPO-clip policy loss shared by SPO and GRPO."""

    clip_low: float = Field(0.2, ge=0, lt=1, description="ratio clipped below at 1 - clip_low")
    clip_high: float = Field(
        0.28, ge=0, description="ratio clipped above at 1 + clip_high ('clip-higher')"
    )
    dual_clip: float | None = Field(
        10.0,
        gt=1,
        description="dual clip c for negative advantages: loss at most -A*c (null = off)",
    )
    tis_cap: float | None = Field(
        None,
        gt=0,
        description="truncated importance sampling: anchor the PPO ratio on the step-start "
        "log-probs (the training forward) instead of the sampler's, and weight each token by "
        "min(exp(logp_step_start - logp_sampler), tis_cap) (null = off: ratio on the sampler's "
        "log-probs); with one optimiser step per batch the ratio is then 1, so the clips are "
        "inactive and changing them together with tis_cap is an error (docs/algorithms.md)",
    )
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="k3 KL penalty to the reference policy = the initial weights (0 = off; >0 "
        "keeps a frozen copy of the model, or disables the LoRA adapters, to score each batch)",
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="bonus on the token-mean entropy of the policy (0 = off)"
    )

    @pydantic.model_validator(mode="after")
    def _check_tis(self) -> "LossConfig":
        # compared with the defaults, not with model_fields_set, so a dumped config loads again
        fields = type(self).model_fields
        clips = [n for n in ("clip_low", "clip_high", "dual_clip") if getattr(self, n) != fields[n].default]
        if self.tis_cap is not None and clips:
            raise ValueError(
                f"{', '.join(clips)} has no effect with tis_cap: the PPO ratio is anchored on the "
                "step-start log-probs and equals 1 in our one-step update; remove it or set tis_cap: null"
            )
        return self
