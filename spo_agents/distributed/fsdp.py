"""A sharded learner: FSDP2 (`torch.distributed.fsdp.fully_shard`) around the policy update.

Why: a model whose weights, gradients and AdamW state do not fit one device can still be
trained when every rank holds only its shard of each (ZeRO-3). FSDP2 shards each decoder layer
(the classes a Hugging Face model lists in `_no_split_modules`) and then the root, gathers a
layer's full weights just before it runs, and reduce-scatters its gradients after backward.

The loss semantics are those of the single-process `PolicyUpdater`: gradients are token *sums*
until the step, which divides them once by the whole batch's token count. FSDP2 averages
gradients over ranks by default, which would weight ranks equally rather than tokens; with a
divide factor of 1 its reduce-scatter sums instead, and `apply()` divides by the token count
summed over ranks. Each rank trains on `samples[rank::world]`. Every forward and backward is a
collective (the all-gathers and reduce-scatters of the layers), so all ranks must run the same
number of micro-batches: a rank with fewer pads with zero-weight micro-batches of two tokens,
which add nothing to the gradients. The result equals the single-process step on the whole batch
up to float summation order (tests/distributed/test_fsdp_learner.py).

Weights for the generation backend: `full_state_dict()` gathers the full tensors (a collective;
rank 0 gets them on CPU, the others an empty dict). Checkpoints: `save(folder)` / `load(folder)`
write and read the sharded model and optimiser state with torch.distributed.checkpoint (DCP),
each rank its own shards, so no rank ever holds the full optimiser state; DCP can also reshard
on load when the number of ranks changes.

The model may be loaded on the CPU: `fully_shard` moves each rank's shards (and one layer at a
time in full, while sharding it) to the device, so no device ever holds the whole model.

Not supported with sharding (rejected at construction): the KL penalty's frozen reference model
(`loss.kl_coef > 0`, it would be a full copy on every rank) and LoRA adapters.

Run one process per device under torchrun (`init_from_env()` of ddp.py); `ShardedLearner`
(learner_group.py) lets a trainer on rank 0 drive the other ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from spo_agents.distributed.ddp import merge_rank_metrics, shard_indices
from spo_agents.learner.config import LossConfig
from spo_agents.learner.update import OptimConfig, PolicyUpdater, microbatches
from spo_agents.rollout.episode import TrainingSample

__all__ = ["ShardedUpdater", "shard_policy", "full_state_dict"]

_PAD = TrainingSample([0, 0], [0, 0], [0.0, 0.0])  # a zero-weight micro-batch: keeps the collectives in step


def shard_policy(model: torch.nn.Module, device_type: str = "cpu", reshard_after_forward: bool = True) -> list[str]:
    """Apply `fully_shard` to the model's decoder layers, then to the root; returns the layer classes.

    Gradients are reduced as sums (divide factor 1): the learner divides by tokens itself.
    """
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call init_from_env() first")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    inner = getattr(model, "base_model", model)  # peft wraps the model; rejected by ShardedUpdater anyway
    layer_classes |= set(getattr(inner, "_no_split_modules", None) or ())
    for module in model.modules():
        if module is not model and type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain sums: gloo has no PREMUL_SUM
    return sorted(layer_classes)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU on rank 0, `{}` elsewhere. Every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


class ShardedUpdater:
    """`PolicyUpdater`'s interface over an FSDP2-sharded model; every rank calls every method."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig | None = None, loss: LossConfig | None = None,
                 device: str | torch.device = "cpu", reshard_after_forward: bool = True):
        loss = loss or LossConfig()
        if loss.kl_coef > 0:
            raise ValueError("loss.kl_coef > 0 is not supported with the sharded learner: its frozen reference "
                             "model would be a full copy on every rank")
        if hasattr(model, "disable_adapter"):
            raise ValueError("LoRA adapters are not supported with the sharded learner; train all weights")
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_from_env() first")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        device = torch.device(device)
        _broadcast_from_rank0(model, device)
        self.layer_classes = shard_policy(model, device.type, reshard_after_forward)
        self.model = model
        # one forward call per micro-batch: FSDP2 frees the gathered weights after each call (a second
        # call's backward would find them gone) and every rank must make the same calls
        optim = optim or OptimConfig()
        if optim.share_prefix:
            raise ValueError("optim.share_prefix is not supported with the sharded learner; leave it unset")
        optim = optim.model_copy(update={"share_prefix": False})
        self.updater = PolicyUpdater(model, optim, loss, device)  # its AdamW holds the sharded parameters
        self.optim_config, self.loss_config = self.updater.optim_config, self.updater.loss_config
        self.last_logprobs: list[np.ndarray] = []
        self._local_tokens = 0.0

    @property
    def version(self) -> int:
        return self.updater.version

    # ------------------------------------------------------------------ the step
    def _padded(self, lengths: Sequence[int]) -> int:
        """How many padding micro-batches this rank runs so that all ranks run the same number."""
        mine = len(microbatches(lengths, self.optim_config.microbatch_tokens)) if lengths else 0
        count = torch.tensor([mine], dtype=torch.int64)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item()) - mine

    def accumulate(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
                   weights: Sequence[float] | None = None) -> dict[str, float]:
        """Forward/backward this rank's shard of the episodes (token-sum gradients until `apply`).

        Afterwards `last_logprobs[i]` holds sample i's training-forward log-probs, gathered from
        the rank that computed it, as `PolicyUpdater.last_logprobs` does."""
        mine = shard_indices(len(samples), self.rank, self.world)
        pads = self._padded([len(samples[i]) for i in mine])
        metrics: dict[str, float] = {}
        local: list[np.ndarray] = []
        if mine:
            metrics = self.updater.accumulate([samples[i] for i in mine], [advantages[i] for i in mine],
                                              None if weights is None else [weights[i] for i in mine])
            local = list(self.updater.last_logprobs)
            self._local_tokens += float(sum(sum(samples[i].loss_mask) for i in mine))
        for _ in range(pads):
            self.updater.accumulate([_PAD], [0.0], [0.0])
        self.last_logprobs = self._gather_rows(len(samples), mine, local)
        return metrics

    def apply(self) -> dict[str, float]:
        """Divide the summed gradients by the batch's token count (all ranks), clip, step."""
        tokens = torch.tensor([self._local_tokens], dtype=torch.float64)
        dist.all_reduce(tokens)
        total, local = float(tokens.item()), self._local_tokens
        self.updater._accumulated_tokens = total  # PolicyUpdater.apply divides by this attribute
        metrics = self.updater.apply()
        metrics["grad_norm"] = _as_float(metrics["grad_norm"])
        self._local_tokens = 0.0
        return merge_rank_metrics(metrics, local, total)

    def step(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
             weights: Sequence[float] | None = None) -> dict[str, float]:
        self.accumulate(samples, advantages, weights)
        return self.apply()

    @torch.no_grad()
    def logprobs(self, token_ids_list: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]] | None = None
                 ) -> list[np.ndarray]:
        """Per-token log-probs under the current weights, each rank computing its shard."""
        mine = shard_indices(len(token_ids_list), self.rank, self.world)
        pads = self._padded([len(token_ids_list[i]) for i in mine])
        local = self.updater.logprobs([token_ids_list[i] for i in mine]) if mine else []
        for _ in range(pads):
            self.updater.logprobs([_PAD.token_ids])
        return self._gather_rows(len(token_ids_list), mine, local)

    def _gather_rows(self, count: int, mine: list[int], local: list[np.ndarray]) -> list[np.ndarray]:
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, (mine, local))
        rows: list[np.ndarray] = [np.zeros(0)] * count
        for indices, arrays in gathered:
            for index, array in zip(indices, arrays):
                rows[index] = array
        return rows

    # ------------------------------------------------------------------ weights and checkpoints
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights on rank 0 (for the generation backend), `{}` on the others; collective."""
        return full_state_dict(self.model)

    def save(self, folder: str | Path) -> None:
        """Write the sharded model and optimiser state (DCP: each rank its shards) and the version."""
        model_state, optim_state = get_state_dict(self.model, self.updater.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
        if self.rank == 0:
            (Path(folder) / "learner.json").write_text(f'{{"version": {self.version}, "world": {self.world}}}\n')
        dist.barrier()

    def load(self, folder: str | Path) -> None:
        """Restore what `save` wrote (DCP reshards if the number of ranks changed)."""
        import json

        model_state, optim_state = get_state_dict(self.model, self.updater.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.updater.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.updater.version = int(json.loads((Path(folder) / "learner.json").read_text())["version"])

    def state_dict(self) -> dict:
        """The updater's small state (the model and optimiser go through `save`)."""
        return {"version": self.version, "sharded": True}

    def load_state_dict(self, state: dict) -> None:
        self.set_version(int(state["version"]))

    def set_version(self, version: int) -> None:
        self.updater.version = int(version)


@torch.no_grad()
def _broadcast_from_rank0(model: torch.nn.Module, device: torch.device) -> None:
    """Every rank starts from rank 0's weights (as with the data-parallel learner).

    The model may still be on the CPU (a model larger than one GPU is loaded there and
    `fully_shard` moves only the shards to the GPU): NCCL needs GPU tensors, so each tensor goes
    through a temporary copy on the device, one at a time."""
    via_device = dist.get_backend() == "nccl"
    for tensor in list(model.parameters()) + list(model.buffers()):
        if via_device and tensor.device.type != "cuda":
            staged = tensor.data.to(device)
            dist.broadcast(staged, src=0)
            tensor.data.copy_(staged.cpu())
        else:
            dist.broadcast(tensor.data, src=0)


def _as_float(value: Any) -> float:
    """`clip_grad_norm_` of DTensor gradients returns a (replicated) DTensor."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
