"""Learner configs: reference defaults, help text, validation, and agreement with the functions."""

import inspect

import pydantic
import pytest

from spo_agents.learner.advantages import RunningMoments, grpo_advantages, spo_advantages
from spo_agents.learner.config import (
    AdvantageConfig,
    DriftEstimator,
    LossConfig,
    Normalization,
    RhoMode,
    SamplerConfig,
    TrackerConfig,
)
from spo_agents.learner.drift import DriftCache, rho_from_drift
from spo_agents.learner.loss import policy_loss
from spo_agents.learner.sampler import TaskSampler
from spo_agents.learner.tracker import ValueTracker, init_alpha_beta

CONFIGS = [TrackerConfig, SamplerConfig, AdvantageConfig, LossConfig]


def test_defaults_are_the_reference_recipe_numbers():
    tracker, sampler, loss = TrackerConfig(), SamplerConfig(), LossConfig()
    assert (tracker.d_half, tracker.rho_min, tracker.rho_max) == (0.06, 0.875, 0.96)
    assert tracker.rho_mode is RhoMode.KL and tracker.constant_rho == 0.875
    assert tracker.drift_estimator is DriftEstimator.STORED_EPISODE and tracker.init_smoothed
    assert (sampler.eps, sampler.gamma, sampler.max_in_flight_per_task) == (0.05, 0.0, 1)
    assert AdvantageConfig().normalize is Normalization.EPISODE
    assert (loss.clip_low, loss.clip_high, loss.dual_clip) == (0.2, 0.28, 10.0)
    assert (loss.tis_cap, loss.kl_coef, loss.entropy_coef) == (None, 0.0, 0.0)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_field_has_help_text(config):
    for name, field in config.model_fields.items():
        assert field.description, f"{config.__name__}.{name} has no description"


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_round_trip_through_json(config):
    instance = config()
    assert config.model_validate_json(instance.model_dump_json()) == instance


def test_validation_rejects_bad_values():
    with pytest.raises(pydantic.ValidationError):
        TrackerConfig(rho_min=0.97, rho_max=0.96)
    with pytest.raises(pydantic.ValidationError):
        TrackerConfig(rho_mode="sometimes")
    with pytest.raises(pydantic.ValidationError):
        LossConfig(clip_lo=0.1)  # typo: extra fields are forbidden
    with pytest.raises(pydantic.ValidationError):
        SamplerConfig(max_in_flight_per_task=0)
    assert SamplerConfig(max_in_flight_per_task=None).max_in_flight_per_task is None
    assert AdvantageConfig(normalize="token").normalize is Normalization.TOKEN


def _defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_function_defaults_agree_with_the_configs():
    tracker, sampler = TrackerConfig(), SamplerConfig()
    advantage, loss = AdvantageConfig(), LossConfig()
    rho = _defaults(rho_from_drift)
    assert (rho["d_half"], rho["rho_min"], rho["rho_max"]) == (
        tracker.d_half, tracker.rho_min, tracker.rho_max
    )
    assert _defaults(init_alpha_beta)["rho_min"] == tracker.rho_min
    assert _defaults(init_alpha_beta)["smoothed"] == tracker.init_smoothed
    cache = _defaults(DriftCache.__init__)
    assert cache["max_tasks"] == tracker.drift_cache_max_tasks
    assert cache["max_tokens_per_episode"] == tracker.drift_cache_max_tokens_per_episode
    assert cache["max_total_tokens"] == tracker.drift_cache_max_total_tokens
    assert _defaults(ValueTracker.__init__) == {
        "prior_alpha": tracker.prior_alpha, "prior_beta": tracker.prior_beta
    }
    s = _defaults(TaskSampler.__init__)
    assert (s["eps"], s["gamma"], s["max_in_flight_per_task"], s["seed"]) == (
        sampler.eps, sampler.gamma, sampler.max_in_flight_per_task, sampler.seed
    )
    spo = _defaults(spo_advantages)
    assert (spo["normalize"], spo["eps"], spo["ddof"]) == (
        advantage.normalize, advantage.spo_eps, advantage.ddof
    )
    grpo = _defaults(grpo_advantages)
    assert (grpo["scale_by_std"], grpo["eps"]) == (advantage.grpo_scale_by_std, advantage.grpo_eps)
    moments = _defaults(RunningMoments.__init__)
    assert moments["mode"] == advantage.running_moments
    assert moments["ema_decay"] == advantage.ema_decay
    p = _defaults(policy_loss)
    for name in ["clip_low", "clip_high", "dual_clip", "tis_cap", "kl_coef", "entropy_coef"]:
        assert p[name] == getattr(loss, name), name
