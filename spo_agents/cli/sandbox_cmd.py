"""`spo-agents sandbox`: see which isolation layers are active, or run a snippet in the sandbox.

    spo-agents sandbox check            # exit status 0 only when snippets are really isolated
    spo-agents sandbox run 'print(6*7)'
    echo 'print(input())' | spo-agents sandbox run - --stdin 'hello'
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def _add_mode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["auto", "namespaces", "bwrap", "unisolated"], default="auto",
                        help="isolation to use (auto: namespaces, else bubblewrap)")
    parser.add_argument("--allow-unisolated", action="store_true",
                        help="let auto fall back to running code WITHOUT isolation (not a sandbox)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sandbox", help="the isolated Python sandbox: check its layers, run code in it")
    sub = parser.add_subparsers(dest="sandbox_command", required=True, metavar="SANDBOX_COMMAND")
    check = sub.add_parser("check", help="print which isolation layers are active (measured inside a sandbox)")
    _add_mode_options(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=run_check)
    run = sub.add_parser("run", help="run CODE (or - to read it from stdin) in the sandbox and print the result")
    run.add_argument("code", help="Python source, or - for stdin")
    run.add_argument("--stdin", default=None, help="text the snippet reads from sys.stdin")
    run.add_argument("--timeout", type=float, default=5.0, help="wall-clock limit in seconds")
    run.add_argument("--memory-mb", type=int, default=1024, help="address-space limit in MB")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    _add_mode_options(run)
    run.set_defaults(func=run_code)


def _config(args: argparse.Namespace, **fields):
    from spo_agents.sandbox import SandboxConfig

    return SandboxConfig(mode=args.mode, allow_unisolated=args.allow_unisolated, **fields)


def run_check(args: argparse.Namespace) -> int:
    from spo_agents.sandbox import detect_capabilities

    report = detect_capabilities(_config(args))
    if args.json:
        data = asdict(report)
        data["mode"] = report.mode.value if report.mode else None
        data["isolated"] = report.isolated
        print(json.dumps(data, indent=2))
    else:
        print(report.format())
    return 0 if report.isolated else 1


def run_code(args: argparse.Namespace) -> int:
    from spo_agents.sandbox import SandboxPool

    code = sys.stdin.read() if args.code == "-" else args.code
    with SandboxPool(_config(args, num_helpers=1, timeout_s=args.timeout, memory_mb=args.memory_mb)) as pool:
        result = pool.run(code, stdin=args.stdin)
    if args.json:
        data = asdict(result)
        data["status"] = result.status.value
        print(json.dumps(data, indent=2))
    else:
        print(result.to_observation(max_chars=100_000))
    return 0 if result.ok else 1
