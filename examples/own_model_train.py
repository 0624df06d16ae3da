"""Train and evaluate a model you bring as a Hugging Face folder (config.json, weights, tokenizer
with its chat template), e.g. a downloaded Qwen2.5-0.5B-Instruct or Llama-3.2-1B-Instruct:

    spo-agents train --set model=/path/to/model-folder --set warm_start=null ...

Offline and in CI there is no such download, so this script first writes a small folder of the
same shape: a random Llama with tied input/output embeddings (as most small instruct models
have) and a ChatML tokenizer whose template renders tools. The model's own template is used;
a template without tool support gets the tool schemas in its system turn (docs/training.md).

    python examples/own_model_train.py [--steps N] [--output-dir DIR]
"""

import argparse
import json
from pathlib import Path

from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer
from spo_agents.trainer import evaluate, train


def write_model_folder(folder: Path) -> Path:
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, hidden_size=64, tie_word_embeddings=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output-dir", default="runs/own-model")
    args = parser.parse_args()
    folder = write_model_folder(Path(args.output_dir) / "model")
    config = {"model": str(folder), "warm_start": None, "env_id": "spo/Calculator-v0", "env_kwargs": {"difficulty": 1},
              "steps": args.steps, "batch_size": 4, "checkpoint_every": args.steps, "output_dir": args.output_dir,
              "eval": {"num_tasks": 4},
              "rollout": {"num_slots": 4, "max_tokens_per_turn": 24, "max_tokens_per_episode": 64}}
    print(json.dumps({"train": train(config)}))
    checkpoint = Path(args.output_dir) / "checkpoints" / f"step-{args.steps:06d}"
    print(json.dumps({"eval": evaluate(str(checkpoint), "spo/Calculator-v0", env_kwargs={"difficulty": 1}, tasks=4)}))


if __name__ == "__main__":
    main()
