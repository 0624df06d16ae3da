"""Train on your own environment without installing it: `env_id: path/to/file.py:EnvId`.

    python examples/own_env_train.py [--steps N] [--output-dir DIR]

custom_env_tools.py registers `examples/UnitConversion-v0` when imported; the trainer imports
the file first because the env_id names it (the same works with an importable module,
`mypkg.envs:mypkg/MyEnv-v0`, or with an installed plugin's id). The CLI equivalent:

    spo-agents train --set env_id=examples/custom_env_tools.py:examples/UnitConversion-v0 --set model=tiny \\
        --set warm_start=null --set steps=4
"""

import argparse
import json
from pathlib import Path

from spo_agents.trainer import train

ENV_ID = f"{Path(__file__).resolve().parent / 'custom_env_tools.py'}:examples/UnitConversion-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output-dir", default="runs/own-env")
    args = parser.parse_args()
    config = {"model": "tiny", "warm_start": None, "env_id": ENV_ID, "steps": args.steps, "batch_size": 4,
              "output_dir": args.output_dir, "eval": {"num_tasks": 4},
              "rollout": {"num_slots": 4, "max_tokens_per_turn": 24, "max_tokens_per_episode": 64}}
    print(json.dumps(train(config)))


if __name__ == "__main__":
    main()
