"""`spo-agents bench learner --against trl`: completion tokens/s and peak memory of our GRPO and
SPO trainers against TRL's GRPOTrainer on the same model, prompts, reward and step shape.

Protocol: spo_agents/bench/learner_vs_trl.py. TRL is an optional extra:
`pip install 'spo-agents[trl]'`. Prints one line per run, a table of medians, then one JSON
line with `grpo_vs_trl_tok_s`, `spo_vs_trl_tok_s` and `peak_rss_vs_trl`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    p = bench_subparsers.add_parser("learner", help="our GRPO and SPO trainers vs TRL's GRPOTrainer (tokens/s, "
                                    "peak RSS)", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", choices=["trl"], default="trl", help="the reference implementation")
    p.add_argument("--systems", nargs="+", default=["trl", "grpo", "spo"], choices=["trl", "grpo", "spo"],
                   help="systems to run (trl is the reference of the ratios)")
    p.add_argument("--rounds", type=int, default=4, help="rounds; each runs every system once, rotated order")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every run")
    p.add_argument("--timed", type=int, default=10, help="timed steps per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override our trainer's config (both our systems; repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for every system's process, e.g. OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before one run is abandoned")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-learner-<time>)")
    p.set_defaults(func=run_bench_learner)


def run_bench_learner(args: argparse.Namespace) -> int:
    from spo_agents.bench.learner_vs_trl import json_line, run_learner_bench, table_lines

    if "trl" in args.systems and importlib.util.find_spec("trl") is None:
        raise SystemExit("bench learner --against trl needs TRL: pip install 'spo-agents[trl]'")
    if args.rounds < 1 or args.warmup < 1 or args.timed < 1:
        raise SystemExit("--rounds, --warmup and --timed must be at least 1")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env {item!r} must look like NAME=VALUE")
        env[name] = value
    out = Path(args.out or f"runs/bench-learner-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_learner_bench(out, list(dict.fromkeys(args.systems)), args.rounds, args.warmup, args.timed,
                               list(args.set), env, args.timeout)
    info = result["model"]
    print(f"model: Qwen2 {info['parameters'] / 1e6:.1f}M parameters (vocab {info['vocab_size']}, tied embeddings); "
          f"{result['cpus']} CPUs, load average {result['load_avg_before'][0]:.1f} -> {result['load_avg_after'][0]:.1f}; "
          f"medians of {result['rounds']} rounds x {result['timed_steps']} steps")
    for line in table_lines(result):
        print(line)
    print(json.dumps(json_line(result)))
    return 0
