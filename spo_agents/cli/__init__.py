"""The `spo-agents` command line.

Each subcommand lives in its own module exposing `register(subparsers)`; `bench`
collects benchmark modules that expose `register_bench(bench_subparsers)`. Heavy imports
(torch, transformers, ray) happen inside the command functions, never at parser build, so
`spo-agents --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules with `register(subparsers)`, in the order they appear in --help.
COMMAND_MODULES = [
    "spo_agents.cli.sft_cmd",
    "spo_agents.cli.train_cmd",
    "spo_agents.cli.envs_cmd",
    "spo_agents.cli.demo_cmd",
    "spo_agents.cli.sandbox_cmd",
    "spo_agents.cli.serve_cmd",
]
# Modules with `register_bench(bench_subparsers)`.
BENCH_MODULES = [
    "spo_agents.cli.bench_envs",
    "spo_agents.cli.bench_generation",
    "spo_agents.cli.bench_throughput",
    "spo_agents.cli.bench_sandbox",
    "spo_agents.cli.bench_learning",
    "spo_agents.cli.bench_learner",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spo-agents",
        description="Train tool-calling LLM agents with Single-stream Policy Optimization.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    bench = subparsers.add_parser("bench", help="benchmarks: a table, then one JSON line")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name in BENCH_MODULES:
        importlib.import_module(name).register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
