"""The learner's algorithmic core: SPO's value tracker, drift-adaptive forgetting, prioritised
task sampling, SPO/GRPO advantages and the shared PPO-clip loss.

Everything here works on plain numbers, arrays and tensors: the learner never imports an
environment or a backend, and it sees a model only through a `logprob_fn` callable it is given.
The streaming trainer that wires these parts to rollouts lives elsewhere.

Importing this package does not import torch; the loss (which needs it) is imported from
`spo_agents.learner.loss` explicitly.
"""

from spo_agents.learner.advantages import RunningMoments, grpo_advantages, spo_advantages
from spo_agents.learner.config import (
    AdvantageConfig,
    DriftEstimator,
    LossConfig,
    MomentsMode,
    Normalization,
    RhoMode,
    SamplerConfig,
    TrackerConfig,
)
from spo_agents.learner.drift import (
    DriftCache,
    behaviour_ratio_drift,
    forgetting_factor,
    rho_from_drift,
)
from spo_agents.learner.sampler import NoEligibleTaskError, TaskSampler, priority_weights
from spo_agents.learner.tracker import (
    TrackerUpdate,
    ValueTracker,
    init_alpha_beta,
    read_value_table,
    write_value_table,
)

__all__ = [
    "AdvantageConfig",
    "DriftCache",
    "DriftEstimator",
    "LossConfig",
    "MomentsMode",
    "NoEligibleTaskError",
    "Normalization",
    "RhoMode",
    "RunningMoments",
    "SamplerConfig",
    "TaskSampler",
    "TrackerConfig",
    "TrackerUpdate",
    "ValueTracker",
    "behaviour_ratio_drift",
    "forgetting_factor",
    "grpo_advantages",
    "init_alpha_beta",
    "priority_weights",
    "read_value_table",
    "rho_from_drift",
    "spo_advantages",
    "write_value_table",
]
