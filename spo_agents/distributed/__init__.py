"""Scale-out on Ray (env workers, generation replicas) and torch.distributed (the learner).

Why a separate package: Ray and torch.distributed are optional. `import ray` happens only in
this package, and its modules are loaded on first attribute access, so importing
`spo_agents.distributed` costs nothing and the in-process path never needs Ray. The rollout
engine never imports it: `spo_agents/__init__.py` registers the `ray` env executor by module path
(`spo_agents.rollout.executors`), imported when a run sets `RolloutConfig(env_executor="ray")`.

- `RayEnvPool`, `RayEnvRunner`, `EnvWorker`, `bind_pool` (env_pool): environments in Ray actors;
- `RayGenerationBackend`, `GenerationSpec`, `GenerationWorker` (generation): the Backend protocol
  over replicas hosting transformers, an OpenAI-compatible client, or vLLM;
- `DataParallelUpdater`, `init_from_env` (ddp): one learner step over N torchrun processes;
- `ShardedUpdater` (fsdp): the same step with FSDP2-sharded weights, gradients and optimiser;
  `ShardedLearner`, `run_follower` (learner_group): the trainer on rank 0 driving it
  (`learner_parallel: fsdp`);
- `init_ray`, `to_plain` (transport): joining a cluster; the plain data that crosses actors;
- `run_ray_scaling`, `env_scaling` (bench): env throughput against the number of env actors.
See docs/distributed.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RayEnvPool": "spo_agents.distributed.env_pool",
    "RayEnvRunner": "spo_agents.distributed.env_pool",
    "EnvWorker": "spo_agents.distributed.env_pool",
    "bind_pool": "spo_agents.distributed.env_pool",
    "RayGenerationBackend": "spo_agents.distributed.generation",
    "GenerationSpec": "spo_agents.distributed.generation",
    "GenerationWorker": "spo_agents.distributed.generation",
    "DataParallelUpdater": "spo_agents.distributed.ddp",
    "ShardedUpdater": "spo_agents.distributed.fsdp",
    "ShardedLearner": "spo_agents.distributed.learner_group",
    "run_follower": "spo_agents.distributed.learner_group",
    "init_from_env": "spo_agents.distributed.ddp",
    "init_ray": "spo_agents.distributed.transport",
    "to_plain": "spo_agents.distributed.transport",
    "run_ray_scaling": "spo_agents.distributed.bench",
    "env_scaling": "spo_agents.distributed.bench",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spo_agents.distributed' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
