"""Run under torchrun: STEPS data-parallel learner steps; rank 0 saves weights and metrics."""

import sys

import torch
import torch.distributed as dist

from ddp_cases import STEPS, batch, make_updater
from spo_agents.distributed.ddp import DataParallelUpdater, init_from_env


def main(out_path: str) -> None:
    rank, world = init_from_env("gloo")
    torch.manual_seed(1234 + rank)  # replicas must not depend on their own RNG
    updater, tokenizer = make_updater()
    if rank == 1:  # a replica starting from other weights is overwritten by rank 0's at start
        with torch.no_grad():
            for param in updater.model.parameters():
                param.add_(1.0)
    parallel = DataParallelUpdater(updater)
    metrics = []
    for step in range(STEPS):
        samples, advantages = batch(updater, tokenizer, step)
        metrics.append(parallel.step(samples, advantages))
    state = {k: v.detach().clone() for k, v in updater.model.state_dict().items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, state)
    if rank == 0:
        torch.save({"state": state, "metrics": metrics, "world": world,
                    "replicas_equal": all(torch.equal(gathered[0][k], g[k]) for g in gathered for k in state)},
                   out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
