"""`spo-agents bench envs`: calculator evaluations/s and math-grader latency.

Bars (../shared/design/BENCHMARKS.md section 3): calculator >= 20,000 evaluations/s
in-process; grader p50 <= 10 ms on typical answers. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from spo_agents.cli.checks import positive_float, positive_int


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("envs", help="calculator evaluations/s and grader latency p50/p95")
    parser.add_argument("--seconds", type=positive_float, default=2.0, help="time spent on the calculator measurement")
    parser.add_argument("--grades", type=positive_int, default=300, help="grader calls measured")
    parser.set_defaults(func=run_bench_envs)


def calculator_rate(expressions: list[str], seconds: float) -> dict[str, float]:
    """Evaluations/s of the bare evaluator (task expressions, repeated, and 20,000 unique ones
    that miss the parse cache) and of the full tool call (validation included)."""
    from spo_agents.tools.calculator import evaluate
    from spo_env_calculator.env import calculator

    rates = {}
    rng = np.random.default_rng(0)
    unique = [f"{a}*{b}+{c}" for a, b, c in rng.integers(1, 10**9, size=(20_000, 3))]  # no parse-cache hits
    start = time.perf_counter()
    for expression in unique:
        evaluate(expression)
    rates["evaluator_unique"] = len(unique) / (time.perf_counter() - start)
    for name, fn in (("evaluator", evaluate), ("tool_call", lambda e: calculator({"expression": e}))):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            for expression in expressions:
                fn(expression)
            count += len(expressions)
        rates[name] = count / (time.perf_counter() - start)
    return rates


def typical_grading_cases(num: int) -> list[tuple[str, str]]:
    """(reply, reference) pairs: exact, equivalent-but-different and wrong answers."""
    from spo_env_mathverify.problems import bundled_problems

    variants = {"\\frac{1}{2}": "0.5", "2\\sqrt{2}": "\\sqrt{8}", "\\frac{3}{4}": "3/4", "9\\pi": "9\\pi"}
    cases = []
    for i, task in enumerate(bundled_problems(num)):
        if i % 3 == 0:
            reply = task.answer
        elif i % 3 == 1:
            reply = variants.get(task.answer, f"{task.answer} ")
        else:
            reply = "17"
        cases.append((f"So the answer is \\boxed{{{reply}}}.", task.answer))
    for reference, equivalent in variants.items():
        cases.append((f"\\boxed{{{equivalent}}}", reference))
    return cases


def grader_latency(num: int) -> dict[str, float]:
    from spo_agents.grading import MathGrader

    cases = typical_grading_cases(num)
    with MathGrader() as grader:
        for reply, reference in cases[:10]:  # warm-up: worker start, sympy imports
            grader.grade(reply, reference)
        latencies = []
        for reply, reference in cases:
            start = time.perf_counter()
            grader.grade(reply, reference)
            latencies.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "calls": len(latencies)}


def run_bench_envs(args: argparse.Namespace) -> int:
    from spo_env_calculator.tasks import generate_tasks

    expressions = [t.metadata["expression"] for level in (1, 2, 3) for t in generate_tasks(50, level=level)]
    rates = calculator_rate(expressions, args.seconds)
    grading = grader_latency(args.grades)
    table = Table(title="bench envs")
    for column in ("measure", "value", "bar", "ok"):
        table.add_column(column)
    rows = [
        ("calculator evaluator (evals/s)", f"{rates['evaluator']:,.0f}", ">= 20,000", rates["evaluator"] >= 20_000),
        ("calculator, all-unique expressions", f"{rates['evaluator_unique']:,.0f}", ">= 20,000",
         rates["evaluator_unique"] >= 20_000),
        ("calculator tool call (calls/s)", f"{rates['tool_call']:,.0f}", "-", None),
        ("grader p50 (ms)", f"{grading['p50_ms']:.2f}", "<= 10", grading["p50_ms"] <= 10),
        ("grader p95 (ms)", f"{grading['p95_ms']:.2f}", "-", None),
    ]
    for name, value, bar, ok in rows:
        table.add_row(name, value, bar, "-" if ok is None else ("yes" if ok else "NO"))
    Console().print(table)
    print(json.dumps({
        "bench": "envs",
        "calculator_evals_per_s": round(rates["evaluator"]),
        "calculator_unique_evals_per_s": round(rates["evaluator_unique"]),
        "calculator_tool_calls_per_s": round(rates["tool_call"]),
        "grader_p50_ms": round(grading["p50_ms"], 3),
        "grader_p95_ms": round(grading["p95_ms"], 3),
    }))
    return 0
