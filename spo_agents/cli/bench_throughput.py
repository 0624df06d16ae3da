"""`spo-agents bench throughput`: SPO streaming against GRPO on long-horizon rollouts.

Why: the headline claim of SPO is that removing groups removes the synchronisation barrier.
This command measures it side by side for GRPO sync, GRPO group-gated streaming, SPO
streaming and the ideal. Protocol and bars: design/BENCHMARKS.md section 1.

Modes are functions `run(args, out_dir) -> dict` in `MODES`: each prints its tables, writes
its raw JSON and plots into `out_dir`, and returns the payload of the final JSON line.
- `sim` (default, no model, well under a minute): the discrete-event simulator. With
  `--episode-log PATH` it resamples episode durations and tokens from a real run's JSONL
  episode log, predicting the speedup for that workload.
- `e2e` (minutes): the real trainer run three ways (`spo_agents.bench.e2e`) on environments
  with injected heavy-tailed tool latency, a small model on CPU; options `--e2e-*`. Its
  module imports torch, so it is imported only when this mode runs.

`--backend ray` runs another benchmark instead: how environment throughput scales with Ray
env actors (`spo_agents.distributed.bench.run_ray_scaling`, options `--ray-*`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from spo_agents.bench import report
from spo_agents.distributions import describe, parse_distribution
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
from spo_agents.distributed.bench import add_ray_arguments, run_ray_scaling

DEFAULT_SIGMAS = "0.25,0.375,0.5,0.625,0.75,0.875,1.0,1.125,1.25,1.375,1.5"
# Defaults of the end-to-end mode, mirrored from spo_agents.bench.e2e.E2EConfig (not imported
# here: that module imports torch).
E2E_DEFAULTS = {"slots": 8, "batch": 8, "group": 4, "steps": 12, "repeats": 2,
                "latency": "lognormal:median=0.3,sigma=1.5", "max_latency": 20.0}


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


def add_e2e_arguments(p: argparse.ArgumentParser) -> None:
    d = E2E_DEFAULTS
    g = p.add_argument_group("end-to-end mode (--mode e2e; --seed is shared)")
    g.add_argument("--e2e-envs", default="auto",
                   help="comma-separated env ids, or auto: spo/Calculator-v0 plus spo/ChainCalc-v0 and "
                        "spo/FileSearch-v0 when registered")
    g.add_argument("--e2e-latency", default=d["latency"],
                   help="tool latency injected into every env step (LatencyWrapper spec)")
    g.add_argument("--e2e-max-latency", type=float, default=d["max_latency"],
                   help="cap on one injected delay, seconds (0: no cap)")
    g.add_argument("--e2e-slots", type=int, default=d["slots"], help="rollout slots N")
    g.add_argument("--e2e-batch", type=int, default=d["batch"], help="episodes per learner step B")
    g.add_argument("--e2e-group", type=int, default=d["group"], help="GRPO group size G")
    g.add_argument("--e2e-steps", type=int, default=d["steps"], help="learner steps per method (budget: steps x B)")
    g.add_argument("--e2e-repeats", type=int, default=d["repeats"],
                   help="rounds of the three methods, in rotated order; ratios are medians over rounds")
    g.add_argument("--e2e-model", default="tiny", help="model spec of the trainer (CPU)")
    g.add_argument("--e2e-max-tokens", type=int, default=16, help="sampled tokens per turn (per episode: 4x)")
    g.add_argument("--e2e-set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override applied to every method (repeatable)")


def _e2e_config(args):
    from spo_agents.bench import e2e

    return e2e.E2EConfig(
        env_ids=e2e.resolve_env_ids(args.e2e_envs), latency=args.e2e_latency,
        max_latency_s=args.e2e_max_latency or None, slots=args.e2e_slots, batch=args.e2e_batch,
        group=args.e2e_group, steps=args.e2e_steps, repeats=args.e2e_repeats, model=args.e2e_model,
        max_tokens_per_turn=args.e2e_max_tokens, max_tokens_per_episode=4 * args.e2e_max_tokens,
        seed=args.seed, overrides=tuple(args.e2e_set),
    )


def _print_e2e(cfg, res) -> None:
    from spo_agents.bench import e2e

    title = (f"throughput (end-to-end) {res.env_id}: N={cfg.slots} B={cfg.batch} G={cfg.group}, {cfg.steps} "
             f"steps, tool latency {cfg.latency}, median of {cfg.repeats} round(s)")
    report.print_tables([report.metrics_table(res.metrics, title)])
    print(report.COLUMN_NOTE + "; ideal: N slots always busy with the round's mean episode duration")
    report.print_tables([e2e.detail_table(res.metrics, f"episodes and durations, {res.env_id}")])
    print(e2e.DETAIL_NOTE)
    rounds = ", ".join(f"{r['spo_vs_grpo_sync']:.2f}/{r['spo_vs_grpo_group']:.2f}" for r in res.ratios_by_round)
    same, long = res.prediction["same_horizon"], res.prediction["long_run"]
    r = res.ratios
    print(f"SPO / GRPO sync = {r['spo_vs_grpo_sync']:.2f}x, SPO / GRPO group-gated = "
          f"{r['spo_vs_grpo_group']:.2f}x (episodes/s; per round sync/group: {rounds}); "
          f"fresh episodes/s: {r['fresh_spo_vs_grpo_sync']:.2f}x / {r['fresh_spo_vs_grpo_group']:.2f}x")
    print(f"simulator on the GRPO sync run's episode log: {same['spo_vs_grpo_sync']:.2f}x / "
          f"{same['spo_vs_grpo_group']:.2f}x at this horizon, {long['spo_vs_grpo_sync']:.2f}x / "
          f"{long['spo_vs_grpo_group']:.2f}x over 200 steps")


def _e2e_plot(res, slots: int, out_dir: Path) -> str | None:
    series = {m: (np.asarray(t), np.asarray(u)) for m, (t, u) in res.timeline.items()}
    end = max(t[-1] for t, _ in series.values())
    series["ideal"] = (np.array([0.0, end]), np.ones(2))
    name = f"utilisation-{res.env_id.replace('/', '_')}.png"
    title = f"slot utilisation, first round, {res.env_id}, N={slots}"
    return name if report.plot_utilisation(series, out_dir / name, title) else None


def run_e2e(args, out_dir: Path) -> dict:
    """The end-to-end mode: the real trainer three ways, on envs with injected latency."""
    from spo_agents.bench import e2e

    t0 = time.perf_counter()
    cfg = _e2e_config(args)
    print(f"end-to-end: {len(cfg.env_ids)} env(s) x {cfg.repeats} round(s) x 3 methods, "
          f"{cfg.steps} steps of {cfg.batch} episodes each; run folders under {out_dir}")
    results = e2e.run_e2e(cfg, out_dir)
    plots = []
    for res in results:
        _print_e2e(cfg, res)
        plots.append(_e2e_plot(res, cfg.slots, out_dir))
    head = results[0]
    payload = {
        "bench": "throughput",
        "mode": "e2e",
        "e2e_spo_vs_grpo_sync": head.ratios["spo_vs_grpo_sync"],
        "e2e_spo_vs_grpo_group": head.ratios["spo_vs_grpo_group"],
        "e2e_fresh_spo_vs_grpo_sync": head.ratios["fresh_spo_vs_grpo_sync"],
        "e2e_fresh_spo_vs_grpo_group": head.ratios["fresh_spo_vs_grpo_group"],
        "env": head.env_id,
        "e2e_by_env": {r.env_id: r.ratios for r in results},
        "e2e_sim_prediction": head.prediction["same_horizon"],
        "spo_slot_utilisation": head.metrics["spo"]["slot_utilisation"],
        "slots": cfg.slots, "batch": cfg.batch, "group": cfg.group, "steps": cfg.steps,
        "repeats": cfg.repeats, "latency": cfg.latency, "model": cfg.model,
        "seconds": time.perf_counter() - t0,
        "out": str(out_dir),
    }
    report.write_json(out_dir / "results.json", {"summary": payload, **e2e.results_json(cfg, results),
                                                  "plots": [p for p in plots if p]})
    return payload


MODES = {"sim": run_sim, "e2e": run_e2e}


def run(args) -> int:
    out_dir = Path(args.out) if args.out else report.default_run_dir()
    if args.backend == "ray":
        payload = {"bench": "throughput", "backend": "ray", **run_ray_scaling(args, out=str(out_dir))}
    else:
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
                   help="sim: discrete-event simulation, no model; e2e: the real trainer on CPU (minutes)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: the chosen mode; ray: env throughput vs number of Ray env actors (--ray-*)")
    p.add_argument("--out", default=None,
                   help="run folder (default runs/bench-throughput-<timestamp>)")
    add_sim_arguments(p)
    add_e2e_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=run)
    return p
