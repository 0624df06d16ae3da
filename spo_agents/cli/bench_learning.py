"""`spo-agents bench learning`: SPO vs GRPO held-out accuracy against wall-clock and episodes.

The method and the bar are in spo_agents/trainer/learning_bench.py and BENCHMARKS.md section 2.
Prints a table, writes result.json and learning.png in the output folder, and ends with one
JSON line (the curves are in result.json only).
"""

from __future__ import annotations

import argparse
import json


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    p = bench_subparsers.add_parser("learning", help="SPO vs GRPO learning efficiency (same model, env, "
                                    "episode budget, seeds)")
    p.add_argument("--config", default="cpu-default", help="base training config (YAML file or preset name)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base config for both algorithms (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (at least 3 for the bar)")
    p.add_argument("--checkpoint-every", type=int, default=5, help="steps between evaluated checkpoints")
    p.add_argument("--eval-tasks", type=int, default=200, help="held-out tasks per evaluation (greedy)")
    p.add_argument("--output-dir", default="runs/bench-learning")
    p.set_defaults(func=run_bench_learning)


def run_bench_learning(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from spo_agents.trainer.learning_bench import run_learning_bench, table_rows

    console = Console(stderr=True)
    result = run_learning_bench(args.config, list(args.set), list(args.seeds), args.output_dir,
                                args.checkpoint_every, args.eval_tasks, log=console.print)
    table = Table(title=f"bench learning: {result['model']} on {result['env_id']}, seeds {result['seeds']}, "
                        f"{result['episode_budget']} episodes per run, {result['heldout_tasks']} held-out tasks")
    for column in ("metric", "SPO", "GRPO"):
        table.add_column(column)
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    ratio = result["time_ratio"]
    console.print(f"SPO reaches GRPO's final accuracy ({result['grpo_final_accuracy_mean']:.3f}) in "
                  + ("never (within the budget)" if ratio is None else f"{ratio:.2f}x GRPO's wall-clock")
                  + f"; bar <= {result['bar_ratio']}x: "
                  + {True: "met", False: "not met", None: "undefined"}[result["bar_met"]])
    if result["note"]:
        console.print(f"note: {result['note']}")
    if len(result["seeds"]) < 3:
        console.print("note: fewer than 3 seeds; the bar needs at least 3")
    print(json.dumps({k: v for k, v in result.items() if k not in ("curves", "runs")}))
    return 0
