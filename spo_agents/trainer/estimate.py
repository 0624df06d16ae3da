"""`spo-agents estimate-values`: SPO's offline value initialisation (SPO.md section 3).

Samples n0 episodes per training task from the initial policy and appends one row per task
(`{"task_id", "successes", "samples"}`) to a JSONL table. Resumable: tasks already in the
table are skipped, and rows are appended as each chunk of tasks finishes, so a killed run
loses at most one chunk. The trainer loads the table with `value_table: PATH`.
"""

from __future__ import annotations

from pathlib import Path

from spo_agents.learner import read_value_table, write_value_table
from spo_agents.rollout.config import RolloutMode
from spo_agents.rollout.engine import RolloutEngine
from spo_agents.trainer.config import TrainConfig
from spo_agents.trainer.parts import build_policy, seed_everything, train_task_ids


async def estimate_values(config: TrainConfig, out: str | Path, n0: int = 8, max_tasks: int | None = None,
                          chunk_tasks: int = 16) -> int:
    out = Path(out)
    done = set(read_value_table(out)) if out.exists() else set()
    todo = [t for t in train_task_ids(config)[:max_tasks] if t not in done]
    seed_everything(config.seed)
    policy = build_policy(config.model, config.device, config.seed)
    rollout = config.rollout.model_copy(update={"mode": RolloutMode.BATCH, "group_size": n0})
    engine = RolloutEngine(config.env_id, policy.backend, policy.formatter, rollout,
                           env_kwargs={**config.env_kwargs, "split": "train"})
    written = 0
    try:
        for start in range(0, len(todo), chunk_tasks):
            chunk = todo[start : start + chunk_tasks]
            episodes = await engine.collect_batch(chunk)
            rows = {t: (float(sum(e.reward >= 1.0 for e in episodes if e.task_id == t)), n0) for t in chunk}
            write_value_table(out, rows, append=True)
            written += len(rows)
    finally:
        engine.close()
        policy.backend.close()
    return written
