"""The trainer's sharded learner: rank 0 drives, the other ranks follow.

Why: the trainer (event loop, rollout engine, generation backend, task sampler, value tracker)
runs once, on rank 0, but every forward and backward of an FSDP2-sharded model is a collective
that all ranks must join. `ShardedLearner` is the object the trainer holds on rank 0: it has
`PolicyUpdater`'s interface (`accumulate`, `apply`, `step`, `logprobs`, `last_logprobs`,
`version`, `state_dict`, `load_state_dict`), and each call first broadcasts `(operation,
arguments)` to the other ranks, which run `run_follower` and replay it on their
`ShardedUpdater`. Only plain data crosses (token ids, masks, log-probs, advantages).

Launch (selected by `learner_parallel: fsdp` in the training config):

    torchrun --nproc_per_node=N -m spo_agents train --config run.yaml --set learner_parallel=fsdp

`spo-agents train` sends ranks >= 1 to `run_follower`. Rank 0 announces itself after its warm
start and model build, so the followers load the model (e.g. a warm-start folder rank 0 just
wrote) only then; the weights themselves are rank 0's, broadcast when the learner is sharded.

Weights for generation: `backend_weights()` gathers the full weights (rank 0, CPU). Checkpoints:
`state_dict()` writes the sharded model and optimiser state with DCP into
`checkpoints/sharded-vNNNNNN` (every rank its shards) before the trainer publishes its
`step-N` folder, which names it; `checkpoint_model()` is an unsharded CPU copy holding the
current weights, for the trainer's `model.safetensors`. `load_state_dict` on resume reads the
sharded folder back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from spo_agents.distributed.ddp import init_from_env
from spo_agents.distributed.fsdp import ShardedUpdater
from spo_agents.rollout.episode import TrainingSample

__all__ = ["ShardedLearner", "run_follower", "follower_rank"]

_OPERATIONS = ("accumulate", "apply", "step", "logprobs", "full_state_dict", "save", "load", "set_version")
_READY, _STOP = "ready", "stop"


def _send(message: Any) -> None:
    dist.broadcast_object_list([message], src=0)


def _receive() -> Any:
    holder: list[Any] = [None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class ShardedLearner:
    """Rank 0's handle on the sharded learner (see the module docstring)."""

    def __init__(self, train_model: torch.nn.Module, optim: Any, loss: Any, device: str, checkpoint_root: Path):
        _require_torchrun()
        rank, world = init_from_env()
        if rank != 0:
            raise RuntimeError("ShardedLearner runs on rank 0; ranks >= 1 run run_follower(config)")
        self.world, self.checkpoint_root = world, Path(checkpoint_root)
        self.export_model = copy.deepcopy(train_model).to("cpu")  # unsharded, for model.safetensors
        _send(_READY)  # the followers may now load the model (rank 0's warm start is done)
        self.sharded = ShardedUpdater(train_model, optim, loss, device)
        self.optim_config, self.loss_config = self.sharded.optim_config, self.sharded.loss_config
        self.closed = False

    def _call(self, operation: str, *args: Any) -> Any:
        if self.closed:
            raise RuntimeError("the sharded learner is closed")
        _send((operation, args))
        return getattr(self.sharded, operation)(*args)

    # ------------------------------------------------------------------ PolicyUpdater's interface
    @property
    def version(self) -> int:
        return self.sharded.version

    @property
    def last_logprobs(self) -> list[np.ndarray]:
        return self.sharded.last_logprobs

    def accumulate(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
                   weights: Sequence[float] | None = None) -> dict[str, float]:
        return self._call("accumulate", list(samples), list(advantages), None if weights is None else list(weights))

    def apply(self) -> dict[str, float]:
        return self._call("apply")

    def step(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
             weights: Sequence[float] | None = None) -> dict[str, float]:
        return self._call("step", list(samples), list(advantages), None if weights is None else list(weights))

    def logprobs(self, token_ids_list: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]] | None = None
                 ) -> list[np.ndarray]:
        return self._call("logprobs", [list(ids) for ids in token_ids_list])

    # ------------------------------------------------------------------ weights and checkpoints
    def backend_weights(self) -> dict[str, torch.Tensor]:
        """The full weights (CPU), gathered from the shards, for the generation backend."""
        return self._call("full_state_dict")

    def checkpoint_model(self) -> torch.nn.Module:
        """An unsharded CPU copy of the policy holding the current weights."""
        self.export_model.load_state_dict(self.backend_weights())
        return self.export_model

    def state_dict(self) -> dict[str, Any]:
        """Write the sharded state (all ranks) and return what names it."""
        name = f"sharded-v{self.version:06d}"
        self._call("save", str(self.checkpoint_root / name))
        return {"version": self.version, "sharded": name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "sharded" not in state:
            raise ValueError("this checkpoint was written by a single-process learner; resume it with "
                             "learner_parallel: none (or start a new run)")
        self._call("load", str(self.checkpoint_root / state["sharded"]))
        self._call("set_version", int(state["version"]))

    def close(self) -> None:
        """Release the followers (they return from run_follower)."""
        if not self.closed:
            _send(_STOP)
            self.closed = True


def _require_torchrun() -> None:
    import os

    if not dist.is_initialized() and "RANK" not in os.environ:
        raise RuntimeError("learner_parallel: fsdp runs one process per device under torchrun, e.g. "
                           "torchrun --nproc_per_node=2 -m spo_agents train --set learner_parallel=fsdp ...")


def follower_rank() -> int:
    """This process's rank under torchrun (0 when not launched by it)."""
    import os

    return int(os.environ.get("RANK", 0))


def run_follower(config: Any) -> None:
    """Ranks >= 1: build the same model and learner, then replay rank 0's operations until it stops."""
    from spo_agents.backends.models import load_model

    rank, _ = init_from_env()
    if rank == 0:
        raise RuntimeError("run_follower runs on ranks >= 1; rank 0 runs the trainer")
    if _receive() != _READY:
        raise RuntimeError("the sharded learner's protocol is out of step (expected rank 0's ready)")
    # on the CPU: fully_shard moves only this rank's shards to the device (fp32 master weights)
    model = load_model(config.model, device="cpu", seed=config.seed).model.to(dtype=torch.float32)
    sharded = ShardedUpdater(model, config.optim, config.loss, config.device)
    while True:
        message = _receive()
        if message == _STOP:
            return
        operation, args = message
        if operation not in _OPERATIONS:
            raise RuntimeError(f"unknown learner operation {operation!r} from rank 0")
        getattr(sharded, operation)(*args)
