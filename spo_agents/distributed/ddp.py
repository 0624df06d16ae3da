"""A data-parallel learner step with torch.distributed (gloo on CPU, NCCL on GPU).

Why not DistributedDataParallel: the learner's loss is a *token sum* over a batch, divided once
by the batch's token count (`PolicyUpdater.accumulate` / `apply`), and SPO batches are uneven
(some ranks may get long episodes, some none). DDP's averaged gradients would weight ranks
equally, not tokens. So each rank accumulates the token-sum gradients of its shard of the
batch, the gradient sums are summed over ranks in one flat buffer per dtype, and `apply()`
divides them by the whole batch's token count (set on the updater before it steps). Every rank
then clips and steps bit-identical gradients from identical weights (broadcast from rank 0 at
start), so the replicas never drift apart, and the result equals the single-process
`PolicyUpdater.step` on the whole batch up to float summation order.

Run one process per device with `torchrun --nproc_per_node=N your_learner.py`; rank 0 pushes
the weights to the generation backend. Sharding is by index (`samples[rank::world]`), which
spreads SPO's length-sorted or arrival-ordered batches evenly enough; FSDP2 sharding of the
parameters themselves (for models larger than one device) is not implemented here.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.distributed as dist

from spo_agents.learner.update import PolicyUpdater
from spo_agents.rollout.episode import TrainingSample


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); (rank, world)."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def shard_indices(count: int, rank: int, world: int) -> list[int]:
    return list(range(rank, count, world))


class DataParallelUpdater:
    """Wraps a `PolicyUpdater` so that N processes take one step on one batch together."""

    def __init__(self, updater: PolicyUpdater, group: Any = None):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_from_env() first")
        self.updater, self.group = updater, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        with torch.no_grad():  # every replica starts from rank 0's weights
            for tensor in list(updater.model.parameters()) + list(updater.model.buffers()):
                dist.broadcast(tensor.data, src=0, group=group)

    def step(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
             weights: Sequence[float] | None = None) -> dict[str, float]:
        """One optimiser step on the whole batch; each rank passes the same full batch."""
        mine = shard_indices(len(samples), self.rank, self.world)
        local_tokens = float(sum(sum(samples[i].loss_mask) for i in mine))
        if mine:
            self.updater.accumulate([samples[i] for i in mine], [advantages[i] for i in mine],
                                    None if weights is None else [weights[i] for i in mine])
        total_tokens = self._sum_gradients(local_tokens)
        # apply() divides the gradients by the tokens it accumulated: make that the batch's count on
        # every rank, so each rank computes the same bits (PolicyUpdater keeps it in this attribute)
        self.updater._accumulated_tokens = total_tokens
        metrics = self.updater.apply()
        return merge_rank_metrics(metrics, local_tokens, total_tokens, self.group)

    def _sum_gradients(self, local_tokens: float) -> float:
        """Sum the gradient sums over ranks; returns the batch's token count."""
        params = [p for p in self.updater.model.parameters() if p.requires_grad]
        for param in params:
            if param.grad is None:  # a rank without samples still takes part with zeros
                param.grad = torch.zeros_like(param)
        device = params[0].grad.device
        tokens = torch.tensor([local_tokens], dtype=torch.float64, device=device)
        dist.all_reduce(tokens, group=self.group)
        total = float(tokens.item())
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for param in params:
            by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self._sum_identically(flat)
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
                offset += grad.numel()
        return total

    def _sum_identically(self, flat: torch.Tensor) -> None:
        """Sum over ranks, bit-identical on every rank.

        gloo's all-reduce adds in a rank-dependent order (results differ in the last bit), which
        would let replicas drift apart step after step; reduce-then-broadcast moves the same bytes
        and gives every rank rank 0's sum. NCCL's ring all-reduce is already identical on all ranks.
        """
        if dist.get_backend(self.group) == "nccl":
            dist.all_reduce(flat, group=self.group)
        else:
            dist.reduce(flat, dst=0, group=self.group)
            dist.broadcast(flat, src=0, group=self.group)


def merge_rank_metrics(metrics: dict[str, float], local_tokens: float, total_tokens: float,
                       group: Any = None) -> dict[str, float]:
    """The numbers a single process would report for the whole batch (a collective call).

    Each rank's micro-batch metrics are token-weighted over its own tokens; its `loss/total`
    is already its loss sum over the batch's token count, so those add up.
    """
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (local_tokens, metrics), group=group)
    merged = {"loss/total": sum(m.get("loss/total", 0.0) for _, m in gathered)}
    keys = {k for _, m in gathered for k in m if k not in ("grad_norm", "train_tokens", "loss/total")}
    for key in sorted(keys):
        if key.endswith("_max"):
            merged[key] = max((m[key] for t, m in gathered if key in m and t > 0), default=0.0)
            continue
        weighted = sum(t * m[key] for t, m in gathered if key in m and t > 0)
        merged[key] = weighted / max(total_tokens, 1.0)
    merged["grad_norm"] = metrics["grad_norm"]  # computed on the summed gradients: equal on all ranks
    merged["train_tokens"] = total_tokens
    return merged
