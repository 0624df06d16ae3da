"""The same trainer on Ray: env actors and generation replicas selected by config only."""

import asyncio
import json

from spo_agents.trainer.config import load_config
from spo_agents.trainer.loop import Trainer


def test_spo_training_with_ray_env_actors_and_generation_replicas(ray_cluster, tmp_path):
    config = load_config(None, ["generation=ray", "generation_workers=1", "rollout.env_executor=ray",
                                "rollout.env_workers=2", "rollout.num_slots=4", "steps=2", "batch_size=4",
                                "rollout.max_tokens_per_turn=12", "eval.enabled=false", f"output_dir={tmp_path}"])
    summary = asyncio.run(Trainer(config, show_progress=False).run())
    assert summary["steps"] == 2 and summary["episodes"] >= 8
    episodes = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert all(e["error"] is None for e in episodes)
    versions = {t["policy_version"] for e in episodes for t in e["turns"]}
    assert versions <= {0, 1, 2}
