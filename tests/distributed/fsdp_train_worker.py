"""Run under torchrun: `spo-agents train --set learner_parallel=fsdp` for 2 steps, then `--resume`
to 3 steps, in the same processes (rank 0 trains, rank 1 follows both times)."""

import sys

from spo_agents.cli import main

FAST = ["--set", "model=tiny", "--set", "warm_start=null", "--set", "env_id=spo/Calculator-v0", "--set", "env_kwargs={}", "--set", "batch_size=4",
        "--set", "eval.num_tasks=2", "--set", "rollout.num_slots=4", "--set", "rollout.max_tokens_per_turn=12",
        "--set", "rollout.max_tokens_per_episode=24", "--set", "checkpoint_every=1", "--set", "transcripts=0",
        "--set", "learner_parallel=fsdp", "--set", "optim.lr=1e-3", "--set", "loss.entropy_coef=0.05",
        "--no-progress"]  # the entropy term moves the weights although an untrained tiny model earns no reward

if __name__ == "__main__":
    run = sys.argv[1]
    assert main(["train", "--output-dir", run, "--set", "steps=2", *FAST]) == 0
    assert main(["train", "--output-dir", run, "--set", "steps=3", "--resume", *FAST]) == 0
