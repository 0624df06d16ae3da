"""Run under torchrun (gloo, CPU): sharded learner steps, a sharded checkpoint and its resume.

1. STEPS sharded steps on the batches of ddp_cases (behaviour log-probs come from the sharded
   `logprobs`, a collective too); the full weights are gathered after each step;
2. after step 1 the sharded state is saved with DCP; a fresh model (other weights) loads it and
   takes step 2 again: its gathered weights must equal the uninterrupted run's.
Rank 0 saves what the test compares.
"""

import sys
import tempfile

import torch
import torch.distributed as dist

from ddp_cases import OPTIM, STEPS, batch, make_updater
from spo_agents.backends.models import load_model
from spo_agents.distributed.ddp import init_from_env
from spo_agents.distributed.fsdp import ShardedUpdater


def main(out_path: str) -> None:
    rank, world = init_from_env("gloo")
    torch.manual_seed(1234 + rank)
    base, tokenizer = make_updater()
    if rank == 1:  # another start is overwritten by rank 0's weights
        with torch.no_grad():
            for param in base.model.parameters():
                param.add_(1.0)
    sharded = ShardedUpdater(base.model, OPTIM)
    local_shapes = {n: tuple(p.to_local().shape) for n, p in sharded.model.named_parameters()}
    folder = tempfile.mkdtemp(prefix="spo-fsdp-") if rank == 0 else None
    holder = [folder]
    dist.broadcast_object_list(holder, src=0)
    folder = holder[0]
    metrics, states, batches = [], [], []
    for step in range(STEPS):
        samples, advantages = batch(sharded, tokenizer, step)
        batches.append((samples, advantages))
        metrics.append(sharded.step(samples, advantages))
        states.append(sharded.full_state_dict())
        if step == 0:
            sharded.save(folder)

    fresh = ShardedUpdater(load_model("tiny", seed=7).model, OPTIM)
    fresh.load(folder)
    resumed_version = fresh.version
    fresh.step(*batches[1])
    resumed = fresh.full_state_dict()
    if rank == 0:
        torch.save({"states": states, "metrics": metrics, "resumed": resumed, "resumed_version": resumed_version,
                    "world": world, "local_shapes": local_shapes, "layers": sharded.layer_classes,
                    "others_empty": None}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
