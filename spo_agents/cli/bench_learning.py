"""`spo-agents bench learning`: SPO vs GRPO held-out accuracy against wall-clock and episodes.

The method, the arms and the bar are in spo_agents/bench/learning.py and docs/benchmarks.md
("Learning"). Prints a table, writes result.json, learning.png and calibration.png in the output
folder, and ends with one JSON line (the curves and runs are in result.json only).
"""

from __future__ import annotations

import argparse
import json

QUICK = {"overrides": ["steps=48"], "arms": ["spo", "spo-noinit", "grpo-g4"], "checkpoint_every": 12,
         "eval_tasks": 200}


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    from spo_agents.bench.learning import ARMS, DEFAULT_ARMS

    p = bench_subparsers.add_parser("learning", help="SPO vs GRPO learning efficiency on a revisited task pool "
                                    "(same model, warm start, env, pool, episode budget, seeds)")
    p.add_argument("--config", "--preset", dest="config", default="learning-bench",
                   help="base training config: a preset name or a YAML file (default learning-bench)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base config for every arm (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (at least 3 for the bar)")
    p.add_argument("--arms", nargs="+", default=None, choices=sorted(ARMS),
                   help=f"methods to compare (default: {' '.join(DEFAULT_ARMS)})")
    p.add_argument("--n0", type=int, default=2, help="offline value estimation: episodes per pool task")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between evaluated checkpoints "
                   "(default: the config's checkpoint_every; --quick 12)")
    p.add_argument("--eval-tasks", type=int, default=None, help="held-out tasks per evaluation, greedy "
                   "(default: the config's eval.num_tasks; --quick 200)")
    p.add_argument("--quick", action="store_true", help="a smaller variant: half the steps, arms spo, "
                   "spo-noinit, grpo-g4")
    p.add_argument("--output-dir", "--out", dest="output_dir", default="runs/bench-learning")
    p.set_defaults(func=run_bench_learning)


def run_bench_learning(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pathlib import Path

    from spo_agents.bench.learning import DEFAULT_ARMS, arms_problem, output_problem, run_learning_bench
    from spo_agents.bench.learning_report import TABLE_COLUMNS, table_rows
    from spo_agents.cli.errors import UserError

    if args.n0 < 1 or (args.checkpoint_every or 1) < 1 or (args.eval_tasks or 1) < 1:
        raise UserError("--n0, --checkpoint-every and --eval-tasks must be >= 1")
    quick = QUICK if args.quick else {}
    overrides = [*quick.get("overrides", []), *args.set]
    arms = args.arms or quick.get("arms") or list(DEFAULT_ARMS)
    problem = arms_problem(arms) or output_problem(Path(args.output_dir))
    if problem:
        raise UserError(problem)
    console = Console(stderr=True)
    result = run_learning_bench(args.config, overrides, list(args.seeds), args.output_dir,
                                args.checkpoint_every or quick.get("checkpoint_every"),
                                args.eval_tasks or quick.get("eval_tasks"), arms=arms, n0=args.n0,
                                log=console.print)
    table = Table(title=f"bench learning: {result['model']} on {result['env_id']}, pool {result['train_tasks']} "
                        f"tasks, seeds {result['seeds']}, {result['episode_budget']} episodes per run, "
                        f"{result['heldout_tasks']} held-out tasks, start {result['initial_accuracy']:.3f}")
    for column in TABLE_COLUMNS:
        table.add_column(column)
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    ratio, interval = result["spo_time_to_grpo_final_ratio"], result["spo_time_ratio_ci95"]
    console.print(f"{result['spo_arm']} reaches {result['grpo_reference_arm']}'s final accuracy "
                  f"({result['grpo_final_accuracy']:.3f}) in "
                  + ("never (within the budget)" if ratio is None else f"{ratio:.2f}x its wall-clock")
                  + ("" if interval is None else f" (per seed, 95% interval {interval[0]:.2f} to {interval[1]:.2f})")
                  + f"; bar <= {result['bar_ratio']}x with GRPO gain >= {result['min_grpo_gain']:.2f}: "
                  + ("met" if result["bar_met"] else "not met"))
    if result["note"]:
        console.print(f"note: {result['note']}")
    if len(result["seeds"]) < 3:
        console.print("note: fewer than 3 seeds; the bar needs at least 3")
    print(json.dumps({k: v for k, v in result.items() if k != "per_arm"}))
    return 0
