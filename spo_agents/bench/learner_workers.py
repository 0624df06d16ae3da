"""One system of `spo-agents bench learner`, run in a process of its own.

`python -m spo_agents.bench.learner_workers SYSTEM MODEL_FOLDER --warmup W --timed T` trains
for W + T steps on the benchmark's prompts (learner_setup.py) and prints one JSON line: the
seconds and completion tokens of the T timed steps after the W warm-up steps, and the peak
resident memory of the whole process (`ru_maxrss`: imports, model, optimiser and every step).
A process per system and round keeps one system's allocations from inflating another's peak.

Systems:
- `trl`: TRL's `GRPOTrainer` (8 prompts x 8 generations per step, beta 0, one optimisation
  step per generation, `model.generate` for sampling), fp32 on CPU.
- `grpo`: our trainer, GRPO synchronous batches (8 tasks x 8 episodes, then a step).
- `spo`: our trainer, SPO streaming (`collect`, B = 64 from 64 slots).
All: 64 completions of at most 64 tokens per step, temperature 1, AdamW lr 1e-5.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spo_agents.bench.learner_setup import ENV_ID, register_env, sum_reward, sum_tasks

SYSTEMS = ("trl", "grpo", "spo")
COMPLETIONS_PER_STEP = 64
GROUP_SIZE = 8
MAX_NEW_TOKENS = 64
LEARNING_RATE = 1e-5


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def our_config(algo: str, model_folder: str, steps: int, output_dir: str, overrides: list[str]) -> Any:
    """The TrainConfig of our side: everything the comparison fixes, plus `--set` overrides."""
    from spo_agents.trainer.config import load_config

    base = [
        f"algo={algo}", f"model={model_folder}", f"env_id={ENV_ID}", "env_kwargs={}", f"steps={steps}",
        f"batch_size={COMPLETIONS_PER_STEP}", f"group_size={GROUP_SIZE}", "grpo_mode=batch", "spo_update=collect",
        f"rollout.num_slots={COMPLETIONS_PER_STEP}", f"rollout.max_tokens_per_turn={MAX_NEW_TOKENS}",
        f"rollout.max_tokens_per_episode={MAX_NEW_TOKENS}", "rollout.temperature=1.0",
        f"optim.lr={LEARNING_RATE}", "eval.enabled=false", "transcripts=0", f"checkpoint_every={steps + 1}",
        f"output_dir={output_dir}",
    ]
    return load_config(None, base + list(overrides))


def run_ours(algo: str, model_folder: str, warmup: int, timed: int, overrides: list[str]) -> dict[str, Any]:
    import asyncio

    from spo_agents.trainer.loop import Trainer
    from spo_agents.trainer.metrics import read_metrics

    register_env()
    with tempfile.TemporaryDirectory(prefix=f"spo-bench-{algo}-") as run_dir:
        config = our_config(algo, model_folder, warmup + timed, run_dir, overrides)
        asyncio.run(Trainer(config, show_progress=False).run())
        records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"]
    by_step = {r["step"]: r for r in records}
    window = [by_step[s] for s in range(warmup + 1, warmup + timed + 1)]
    seconds = by_step[warmup + timed]["wall_s"] - by_step[warmup]["wall_s"]
    extra = {k: v for k, v in records[-1].items() if k.startswith(("learner/threads", "generation/threads"))}
    return {"seconds": seconds, "completion_tokens": int(sum(r["train_tokens"] for r in window)),
            "step_seconds": [b["wall_s"] - a["wall_s"] for a, b in zip([by_step[warmup]] + window, window)],
            **extra}


def run_trl(model_folder: str, warmup: int, timed: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tasks = sum_tasks()
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": t.prompt}], "answer": t.answer}
                                 for t in tasks])
    tokens_per_call: list[int] = []

    def reward(completions: list, answer: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        tokens_per_call.append(sum(len(ids) for ids in completion_ids))
        return [sum_reward(c[-1]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    stamps: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="spo-bench-trl-") as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=COMPLETIONS_PER_STEP, num_generations=GROUP_SIZE,
            max_completion_length=MAX_NEW_TOKENS, learning_rate=LEARNING_RATE, temperature=1.0, beta=0.0,
            max_steps=warmup + timed, use_cpu=True, bf16=False, fp16=False, logging_steps=1, save_strategy="no",
            report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0)
        model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_folder)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[StepClock()])
        trainer.train()
    seconds = stamps[warmup + timed - 1] - stamps[warmup - 1]
    return {"seconds": seconds, "completion_tokens": int(sum(tokens_per_call[warmup: warmup + timed])),
            "step_seconds": [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("model_folder")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override our trainer's config (ignored for trl)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.timed < 1:
        parser.error("--warmup and --timed must be at least 1")
    started = time.perf_counter()
    if args.system == "trl":
        result = run_trl(args.model_folder, args.warmup, args.timed)
    else:
        result = run_ours(args.system, args.model_folder, args.warmup, args.timed, args.set)
    result.update(system=args.system, steps=args.timed, peak_rss_mib=peak_rss_mib(),
                  process_s=time.perf_counter() - started)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
