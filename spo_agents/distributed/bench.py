"""How environment throughput scales with the number of Ray env actors.

Why: the point of env actors is that CPU-heavy tools (graders, Python tools, sandboxes) run on
more cores than the trainer's process has. This benchmark plays the same scripted episodes
(`bench_env`: a tool that costs a fixed amount of pure-Python work, or a sleep) with the
in-process thread executor and then with 1, 2, 4, ... env actors, and reports episodes/s and
the speedup over one actor. The policy is scripted and instant, so the environment is the only
bottleneck and nothing but env placement changes between rows.

Reading the numbers: with CPU-bound tools, throughput grows with actors until actors outnumber
free cores; the driver (engine + Ray calls) needs a core share too. On a 2-core machine the
ceiling is about 2x whatever the count; on a cluster each added CPU node adds its cores.
With `--ray-tool sleep` the work needs no cores and a single threaded actor already overlaps all
slots' sleeps, so actors add little: the slots, not the actors, bound that case.

`run_ray_scaling(args)` is the `spo-agents bench throughput --backend ray` entry: it prints a
table and returns the payload; `add_ray_arguments(parser)` declares its options (all `--ray-*`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from spo_agents.distributed.bench_env import ENV_ID, busy_policy, calibrate, spin
from spo_agents.rollout.config import RolloutConfig
from spo_agents.rollout.engine import RolloutEngine
from spo_agents.rollout.scripted import ScriptedBackend

DEFAULTS = {"ray_workers": "1,2,4", "ray_episodes": 96, "ray_slots": 8, "ray_tool": "cpu", "ray_tool_ms": 20.0,
            "ray_address": None, "ray_num_cpus": None, "ray_thread_baseline": True, "out": None}


class _CycleTasks:
    def __init__(self, num_tasks: int):
        self.num_tasks, self.index = num_tasks, 0

    def next_task(self) -> str:
        self.index += 1
        return f"b{self.index % self.num_tasks}"

    def release(self, task_id: str) -> None:
        pass


async def _stream(engine: RolloutEngine, warmup: int, episodes: int) -> dict[str, Any]:
    async with engine:
        for _ in range(warmup):  # actors started, envs made, first calls paid
            await engine.get()
        started = time.perf_counter()
        got = [await engine.get() for _ in range(episodes)]
        elapsed = time.perf_counter() - started
    errors = [e.error for e in got if e.error]
    return {"episodes": len(got), "seconds": elapsed, "episodes_per_s": len(got) / elapsed,
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "mean_env_s_per_episode": sum(e.env_seconds for e in got) / len(got),
            "reward_mean": sum(e.reward for e in got) / len(got)}


def measure(executor: str, num_workers: int | None, env_kwargs: dict[str, Any], slots: int, episodes: int,
            warmup: int) -> dict[str, Any]:
    """episodes/s of one executor setting (a fresh engine; a fresh pool of `num_workers` actors)."""
    backend = ScriptedBackend(busy_policy)
    config = RolloutConfig(num_slots=slots, env_executor=executor, env_workers=num_workers)
    engine = RolloutEngine(ENV_ID, backend, backend.formatter, config, _CycleTasks(64), env_kwargs=env_kwargs)
    pool = None
    if executor == "ray":
        from spo_agents.distributed.env_pool import RayEnvPool, bind_pool

        pool = RayEnvPool(num_workers, ENV_ID, env_kwargs, num_cpus=1)
        pool.ready()
        bind_pool(engine, pool)
    try:
        result = asyncio.run(_stream(engine, warmup, episodes))
    finally:
        engine.close()
        if pool is not None:
            pool.shutdown()
    return {"executor": executor, "workers": num_workers, **result}


def env_scaling(num_workers_list: list[int], *, episodes: int = 96, slots: int = 8, tool: str = "cpu",
                tool_ms: float = 20.0, thread_baseline: bool = True, address: str | None = None,
                num_cpus: int | None = None) -> dict[str, Any]:
    """Measure the thread executor and Ray with each actor count; the payload (no printing)."""
    from spo_agents.distributed.transport import init_ray

    units = calibrate(tool_ms) if tool == "cpu" else 0
    env_kwargs = {"work_units": units, "mode": tool, "sleep_s": tool_ms / 1000}
    warmup = max(slots, 8)
    points = []
    if thread_baseline:
        points.append(measure("thread", None, env_kwargs, slots, episodes, warmup))
    import ray

    started_here = not ray.is_initialized()
    resources = init_ray(address, num_cpus=num_cpus or max(num_workers_list), log_to_driver=False)
    try:
        for count in num_workers_list:
            points.append(measure("ray", count, env_kwargs, slots, episodes, warmup))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    finally:
        if started_here:
            ray.shutdown()
    checks = []
    for _ in range(5 if tool == "cpu" else 0):  # what one tool call really cost, after the runs
        started = time.thread_time()
        spin(units)
        checks.append(1000 * (time.thread_time() - started))
    base = next((p["episodes_per_s"] for p in points if p["executor"] == "ray" and p["workers"] == 1), None)
    for point in points:
        point["speedup_vs_1_actor"] = point["episodes_per_s"] / base if base else None
    return {"benchmark": "ray_env_scaling", "env_id": ENV_ID, "tool": tool, "tool_ms": tool_ms,
            "work_units": units, "tool_cpu_ms_measured": sorted(checks)[len(checks) // 2] if checks else None,
            "slots": slots, "episodes_per_point": episodes, "machine_cpus": os.cpu_count(),
            "cluster_cpus": resources.get("CPU"), "cluster_nodes": nodes, "points": points}


def print_scaling(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"env throughput: {payload['tool']} tool of {payload['tool_ms']:g} ms, "
                        f"{payload['slots']} slots, {payload['episodes_per_point']} episodes per row")
    for header in ("executor", "actors", "episodes/s", "x 1 actor", "env s/episode", "errors"):
        table.add_column(header, justify="right")
    for p in payload["points"]:
        speedup = "" if p["speedup_vs_1_actor"] is None else f"{p['speedup_vs_1_actor']:.2f}"
        table.add_row(p["executor"], "-" if p["workers"] is None else str(p["workers"]), f"{p['episodes_per_s']:.1f}",
                      speedup, f"{p['mean_env_s_per_episode']:.3f}", str(p["errors"]))
    console = Console()
    console.print(table)
    measured = payload["tool_cpu_ms_measured"]
    cost = f"one tool call measured {measured:.1f} CPU ms after the runs; " if measured else ""
    console.print(f"{cost}machine: {payload['machine_cpus']} CPUs; Ray cluster: {payload['cluster_nodes']} node(s), "
                  f"{payload['cluster_cpus']:g} logical CPUs. CPU-bound tools cannot scale past the free cores.")


def _options(args: argparse.Namespace | dict[str, Any] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    merged = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS and v is not None}, **overrides}
    if isinstance(merged["ray_workers"], str):
        merged["ray_workers"] = [int(x) for x in merged["ray_workers"].split(",") if x.strip()]
    return merged


def run_ray_scaling(args: argparse.Namespace | dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the scaling benchmark from CLI options (or keyword arguments), print it, return the payload."""
    o = _options(args, overrides)
    payload = env_scaling(list(o["ray_workers"]), episodes=int(o["ray_episodes"]), slots=int(o["ray_slots"]),
                          tool=o["ray_tool"], tool_ms=float(o["ray_tool_ms"]), address=o["ray_address"],
                          thread_baseline=bool(o["ray_thread_baseline"]), num_cpus=o["ray_num_cpus"])
    print_scaling(payload)
    if o["out"]:
        out = Path(o["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "ray_env_scaling.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ray backend (env actor scaling)")
    g.add_argument("--ray-workers", default=DEFAULTS["ray_workers"], help="env actor counts to measure, e.g. 1,2,4")
    g.add_argument("--ray-episodes", type=int, default=DEFAULTS["ray_episodes"], help="episodes timed per row")
    g.add_argument("--ray-slots", type=int, default=DEFAULTS["ray_slots"], help="concurrent episodes (slots)")
    g.add_argument("--ray-tool", choices=("cpu", "sleep"), default=DEFAULTS["ray_tool"],
                   help="cpu: fixed pure-Python work per tool call; sleep: a wait")
    g.add_argument("--ray-tool-ms", type=float, default=DEFAULTS["ray_tool_ms"],
                   help="tool cost per call in ms (cpu: calibrated on one idle core)")
    g.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or a local one)")
    g.add_argument("--ray-num-cpus", type=int, default=None,
                   help="logical CPUs of a local cluster (default: the largest actor count)")
    g.add_argument("--ray-no-thread-baseline", dest="ray_thread_baseline", action="store_false",
                   help="skip the in-process thread executor row")
