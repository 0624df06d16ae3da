"""Train with a reward function from a script, through the trainer's public API.

    python examples/reward_function/train.py [--steps N] [--output-dir DIR]

Uses config.yaml next to this file (paths made absolute, so it runs from any folder), then
evaluates the final checkpoint with `spo_agents.trainer.evaluate`.
"""

import argparse
import json
from pathlib import Path

import yaml

from spo_agents.trainer import evaluate, train

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output-dir", default="runs/reward-function")
    args = parser.parse_args()
    config = yaml.safe_load((HERE / "config.yaml").read_text())
    config["env_kwargs"].update(dataset=str(HERE / "prompts.jsonl"), reward=f"{HERE / 'rewards.py'}:exact_word")
    config.update(steps=args.steps, output_dir=args.output_dir)
    summary = train(config)
    print(json.dumps({"train": summary}))
    result = evaluate(f"{args.output_dir}/checkpoints/step-{args.steps:06d}", "reward/RewardFn-v0",
                      env_kwargs=config["env_kwargs"], tasks=4, k=1)
    print(json.dumps({"eval": result}))


if __name__ == "__main__":
    main()
