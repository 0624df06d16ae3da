"""The `spo-agents` command line.

Each subcommand lives in its own module exposing `register(subparsers)`; `bench`
collects benchmark modules that expose `register_bench(bench_subparsers)`. Heavy imports
(torch, transformers, ray) happen inside the command functions, never at parser build, so
`spo-agents --help` stays instant.

A user's mistake (bad flag, missing file, invalid config) is one line on stderr and exit code 2;
a bug keeps its traceback (spo_agents.cli.errors). `--debug` or SPO_AGENTS_DEBUG=1 shows the
traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spo_agents.cli.errors import OneLineArgumentParser, debug_enabled, report, user_error_message

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
    parser = OneLineArgumentParser(
        prog="spo-agents",
        description="Train tool-calling LLM agents with Single-stream Policy Optimization.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors (or SPO_AGENTS_DEBUG=1)")
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
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"spo-agents {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if user_error_message(exc) is None or debug_enabled(args):
            raise  # a bug (or --debug): the traceback is the report
        return report(args.command, exc)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
