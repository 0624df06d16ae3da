"""`spo-agents bench sandbox`: sandbox call latency against a fresh interpreter, and throughput.

Latency: the same short snippet, alternately through a one-helper pool (every isolation layer
on) and through `python -c` in a fresh subprocess (what SkyRL/GEM do, unisolated), measured in
the same run so both see the same machine load. Throughput: calls/s with 1, 2 and 4 helpers,
each fed by two threads. Bars (../shared/design/BENCHMARKS.md): sandbox p50 <= 0.7x the fresh
interpreter's p50 and <= 10 ms. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from spo_agents.cli.checks import positive_float, positive_int

DEFAULT_SNIPPET = "print(sum(i * i for i in range(1000)))"


def helper_counts(text: str) -> str:
    """Comma-separated helper counts, each >= 1 (checked here, kept as text, parsed where used)."""
    try:
        valid = all(int(part) >= 1 for part in text.split(","))
    except ValueError:
        valid = False
    if not valid:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of helper counts >= 1")
    return text


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("sandbox", help="sandbox latency p50/p95 vs a fresh python -c; throughput")
    parser.add_argument("--calls", type=positive_int, default=200, help="measured calls of each kind (interleaved)")
    parser.add_argument("--seconds", type=positive_float, default=2.0, help="duration of each throughput measurement")
    parser.add_argument("--helpers", type=helper_counts, default="1,2,4", help="helper counts for the throughput measurement")
    parser.add_argument("--snippet", default=DEFAULT_SNIPPET, help="the code that is timed")
    parser.set_defaults(func=run_bench_sandbox)


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    values = np.asarray(samples_s) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def interleaved_latency(pool, snippet: str, calls: int) -> tuple[list[float], list[float]]:
    """(sandbox seconds, fresh-interpreter seconds), alternating call by call."""
    fresh_argv = [sys.executable, "-c", snippet]
    for _ in range(5):  # warm-up: page cache, the helper's first runners
        pool.run(snippet)
        subprocess.run(fresh_argv, capture_output=True, check=True)
    sandbox, fresh = [], []
    for _ in range(calls):
        start = time.perf_counter()
        result = pool.run(snippet)
        sandbox.append(time.perf_counter() - start)
        if not result.ok:
            raise RuntimeError(f"the benchmark snippet failed in the sandbox: {result.to_observation()}")
        start = time.perf_counter()
        subprocess.run(fresh_argv, capture_output=True, check=True)
        fresh.append(time.perf_counter() - start)
    return sandbox, fresh


def throughput(num_helpers: int, snippet: str, seconds: float) -> float:
    """Calls/s with `num_helpers` helpers kept busy by 2 threads each."""
    from spo_agents.sandbox import SandboxPool

    with SandboxPool(num_helpers=num_helpers) as pool:
        for _ in range(2 * num_helpers):
            pool.run(snippet)
        done = [0]
        lock = threading.Lock()
        stop_at = time.perf_counter() + seconds

        def worker() -> None:
            while time.perf_counter() < stop_at:
                pool.run(snippet)
                with lock:
                    done[0] += 1

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(2 * num_helpers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return done[0] / (time.perf_counter() - start)


def run_bench_sandbox(args: argparse.Namespace) -> int:
    from spo_agents.sandbox import SandboxPool

    with SandboxPool(num_helpers=1) as pool:
        mode = pool.mode.value
        sandbox, fresh = interleaved_latency(pool, args.snippet, args.calls)
    sandbox_p50, sandbox_p95 = _percentiles(sandbox)
    fresh_p50, fresh_p95 = _percentiles(fresh)
    ratio = sandbox_p50 / fresh_p50
    rates = {n: throughput(n, args.snippet, args.seconds) for n in (int(x) for x in args.helpers.split(","))}

    table = Table(title=f"bench sandbox ({mode}, {os.cpu_count()} CPUs, {args.calls} interleaved calls)")
    for column in ("measure", "value", "bar", "ok"):
        table.add_column(column)
    rows = [
        ("sandbox p50 (ms)", f"{sandbox_p50:.2f}", "<= 10", sandbox_p50 <= 10),
        ("sandbox p95 (ms)", f"{sandbox_p95:.2f}", "-", None),
        ("fresh python -c p50 (ms)", f"{fresh_p50:.2f}", "-", None),
        ("fresh python -c p95 (ms)", f"{fresh_p95:.2f}", "-", None),
        ("ratio sandbox / fresh (p50)", f"{ratio:.2f}", "<= 0.7", ratio <= 0.7),
    ]
    rows += [(f"throughput, {n} helper(s) (calls/s)", f"{rate:.0f}", "-", None) for n, rate in rates.items()]
    for name, value, bar, ok in rows:
        table.add_row(name, value, bar, "-" if ok is None else ("yes" if ok else "NO"))
    Console().print(table)
    print(json.dumps({
        "bench": "sandbox", "mode": mode, "cpus": os.cpu_count(), "calls": args.calls,
        "sandbox_p50_ms": round(sandbox_p50, 3), "sandbox_p95_ms": round(sandbox_p95, 3),
        "fresh_python_p50_ms": round(fresh_p50, 3), "fresh_python_p95_ms": round(fresh_p95, 3),
        "ratio": round(ratio, 3), "throughput_per_s": {str(n): round(rate, 1) for n, rate in rates.items()},
        "bar_p50_ok": sandbox_p50 <= 10, "bar_ratio_ok": ratio <= 0.7,
    }))
    return 0
