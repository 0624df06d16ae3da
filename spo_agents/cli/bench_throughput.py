"""`spo-agents bench throughput`: SPO streaming against GRPO on long-horizon rollouts.

Why: the headline claim of SPO is that removing groups removes the synchronisation barrier.
This command measures it side by side for GRPO sync, GRPO group-gated streaming, SPO
streaming and the ideal. Protocol and bars: design/BENCHMARKS.md section 1.

Modes are functions `run(args, out_dir) -> dict` in `MODES`: each prints its tables, writes
its raw JSON and plots into `out_dir`, and returns the payload of the final JSON line. Only
the simulated mode (`sim`, no model, well under a minute) is here; the end-to-end mode plugs
in as one more entry of `MODES` plus its options in `register_bench` (`--mode` accepts the
keys of `MODES`), reusing `report.metrics_table` and `report.json_line`.

With `--episode-log PATH` the simulator resamples episode durations and tokens from a real
run's JSONL episode log, predicting the speedup for that workload.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from spo_agents.bench import report
from spo_agents.bench.latency import describe, parse_distribution
from spo_agents.bench.simulator import (
    PAPER_READING,
    PAPER_READINGS,
    ComponentModel,
    SimConfig,
    Workload,
    compare,
    paper_setting,
    read_episode_log,
    tail_sweep,
    utilisation_timeline,
)

DEFAULT_SIGMAS = "0.25,0.375,0.5,0.625,0.75,0.875,1.0,1.125,1.25,1.375,1.5"


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated mode")
    g.add_argument("--slots", type=int, default=64, help="concurrent rollout slots N")
    g.add_argument("--batch", type=int, default=32, help="episodes per learner step B")
    g.add_argument("--group", type=int, default=8, help="GRPO group size G (B must be a multiple of G)")
    g.add_argument("--step-seconds", type=float, default=10.0, help="learner step time")
    g.add_argument("--batches", type=int, default=200, help="learner steps per method")
    g.add_argument("--max-pending", type=int, default=None,
                   help="streaming admission bound: episodes started and not yet trained "
                        "(default slots + batch)")
    g.add_argument("--turns", default="lognormal:median=4,sigma=0.5",
                   help="turns per episode (rounded, >= 1)")
    g.add_argument("--tokens-per-turn", default="lognormal:median=300,sigma=0.6",
                   help="completion tokens per turn (rounded, >= 1)")
    g.add_argument("--token-seconds", default="lognormal:median=0.02,sigma=0.1",
                   help="generation seconds per token, drawn per turn")
    g.add_argument("--tool-seconds", default="lognormal:median=2,sigma=1",
                   help="tool latency per turn, seconds")
    g.add_argument("--success", default="beta:a=1,b=1",
                   help="per-task success probability distribution")
    g.add_argument("--episode-log", type=Path, default=None,
                   help="JSONL episode log of a real run: resample its episode durations")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--paper-reps", type=int, default=2000,
                   help="repetitions averaged for the paper setting")
    g.add_argument("--sweep-sigmas", default=DEFAULT_SIGMAS,
                   help="comma-separated log-normal sigmas for the tail sweep ('' to skip)")
    g.add_argument("--sweep-median-seconds", type=float, default=30.0,
                   help="median episode duration in the tail sweep")


def _episode_model(args) -> tuple[object, str]:
    if args.episode_log is not None:
        model = read_episode_log(args.episode_log)
        d = np.asarray(model.durations)
        log_sigma = float(np.log(np.maximum(d, 1e-9)).std())
        desc = (f"episode log {args.episode_log}: {len(d)} episodes, median {np.median(d):.2f} s, "
                f"p90 {np.quantile(d, 0.9):.2f} s, max {d.max():.2f} s, "
                f"std of log duration {log_sigma:.2f} (compare with the sweep's sigma)")
        return model, desc
    model = ComponentModel(
        turns=parse_distribution(args.turns),
        tokens_per_turn=parse_distribution(args.tokens_per_turn),
        token_seconds=parse_distribution(args.token_seconds),
        tool_seconds=parse_distribution(args.tool_seconds),
    )
    desc = (f"turns {describe(model.turns)}; tokens/turn {describe(model.tokens_per_turn)}; "
            f"s/token {describe(model.token_seconds)}; tool s {describe(model.tool_seconds)}")
    return model, desc


def _plots(comparison, workload, rows, out_dir: Path) -> list[str]:
    # About 25 ideal batch-fills: long enough to see several sync cycles, short enough to
    # resolve them.
    ideal_fill = comparison.metrics["ideal"]["batch_fill_s"]
    horizon = min(min(t.elapsed for t in comparison.traces.values()), 25 * ideal_fill)
    series = {
        m: utilisation_timeline(t, workload, horizon, bins=150)
        for m, t in comparison.traces.items()
    }
    written = []
    cfg = comparison.config
    title = f"slot utilisation, N={cfg.slots} B={cfg.batch} G={cfg.group}"
    if report.plot_utilisation(series, out_dir / "utilisation.png", title):
        written.append("utilisation.png")
    paper = {r: PAPER_READINGS[r][2] for r in PAPER_READINGS}
    title = f"speedup vs tail, N={cfg.slots} B={cfg.batch} G={cfg.group}"
    if rows and report.plot_tail_sweep(rows, out_dir / "tail_sweep.png", paper, title):
        written.append("tail_sweep.png")
    return written


def run_sim(args, out_dir: Path) -> dict:
    """The simulated mode: methods side by side, the paper setting, the tail sweep."""
    t0 = time.perf_counter()
    cfg = SimConfig(args.slots, args.batch, args.group, args.step_seconds, args.batches,
                    args.max_pending)
    model, workload_desc = _episode_model(args)
    workload = Workload(model, parse_distribution(args.success), seed=args.seed)
    comparison = compare(workload, cfg)
    m = comparison.metrics
    papers = {r: paper_setting(args.seed, args.paper_reps, r) for r in PAPER_READINGS}
    sigmas = [float(s) for s in args.sweep_sigmas.split(",") if s.strip()]
    rows = tail_sweep(sigmas, cfg, args.seed, args.sweep_median_seconds) if sigmas else []

    title = (f"throughput (simulated): N={cfg.slots} B={cfg.batch} G={cfg.group} "
             f"step {cfg.step_seconds:g} s, {cfg.batches} steps")
    print(f"workload: {workload_desc}")
    report.print_tables([report.metrics_table(m, title)])
    print(report.COLUMN_NOTE)
    if rows:
        report.print_tables([report.sweep_table(rows)])
    for r, res in papers.items():
        print(f"paper setting [{r}] sigma {res['sigma']:.2f}: GRPO {res['grpo_batch_fill_s']:.0f} s"
              f" vs SPO {res['spo_batch_fill_s']:.0f} s = {res['speedup']:.2f}x "
              f"(paper 486 s vs 112 s = 4.34x)")
    plots = _plots(comparison, workload, rows, out_dir)
    head = papers[PAPER_READING]
    payload = {
        "bench": "throughput",
        "mode": "sim",
        "paper_setting_speedup": head["speedup"],
        "paper_reading": PAPER_READING,
        "paper_sigma": head["sigma"],
        "spo_utilisation_vs_ideal": m["spo"]["utilisation_ratio_to_ideal"],
        "spo_vs_grpo_sync": m["spo"]["episodes_per_s"] / m["grpo_sync"]["episodes_per_s"],
        "spo_vs_grpo_group": m["spo"]["episodes_per_s"] / m["grpo_group"]["episodes_per_s"],
        "spo_useful_vs_grpo_sync": m["spo"]["useful_episodes_per_s"]
        / m["grpo_sync"]["useful_episodes_per_s"],
        "slots": cfg.slots, "batch": cfg.batch, "group": cfg.group,
        "workload": "episode_log" if args.episode_log else "components",
        "seconds": time.perf_counter() - t0,
        "out": str(out_dir),
    }
    report.write_json(out_dir / "results.json", {
        "summary": payload, "config": vars(cfg) | {"pending_cap": cfg.pending_cap},
        "workload": workload_desc, "metrics": m, "paper_setting": papers, "tail_sweep": rows,
        "plots": plots,
    })
    return payload


MODES = {"sim": run_sim}


def run(args) -> int:
    out_dir = Path(args.out) if args.out else report.default_run_dir()
    payload = MODES[args.mode](args, out_dir)
    print(report.json_line(payload))
    return 0


def register_bench(bench_subparsers) -> argparse.ArgumentParser:
    p = bench_subparsers.add_parser(
        "throughput",
        help="SPO streaming vs GRPO rollout throughput (simulated by default)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--mode", choices=sorted(MODES), default="sim",
                   help="sim: discrete-event simulation, no model")
    p.add_argument("--out", default=None,
                   help="run folder (default runs/bench-throughput-<timestamp>)")
    add_sim_arguments(p)
    p.set_defaults(func=run)
    return p
