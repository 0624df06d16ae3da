"""`spo-agents bench learner --against trl`: our GRPO and SPO trainers against TRL's GRPOTrainer.

Protocol (design/BENCHMARKS.md section 3, "Learner"): the same model folder, prompts, reward and
step shape for every system (learner_setup.py, learner_workers.py): 64 completions of at most 64
tokens per step, lr 1e-5, fp32 on CPU. Each system runs in a fresh process per round (so its
peak resident memory is its own), `warmup` steps untimed, then `timed` steps timed. Rounds run
the systems in a rotated order (round r starts with system r mod 3), so slow drifts in machine
load hit every system alike; the summary is the median over rounds of each system's completion
tokens/s, seconds/step and peak RSS, and the ratios of those medians to TRL's. The load average
before and after is recorded, since the machine may be shared.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from spo_agents.bench.learner_setup import build_model_folder
from spo_agents.bench.learner_workers import SYSTEMS

LABELS = {"trl": "TRL GRPOTrainer", "grpo": "spo-agents GRPO (batch 8x8)", "spo": "spo-agents SPO (collect, B=64)"}


def rotated(systems: list[str], round_index: int) -> list[str]:
    shift = round_index % len(systems)
    return systems[shift:] + systems[:shift]


def run_worker(system: str, model_folder: Path, warmup: int, timed: int, overrides: list[str],
               env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """One system, one round, in its own process; its last stdout line is its JSON record."""
    command = [sys.executable, "-m", "spo_agents.bench.learner_workers", system, str(model_folder),
               "--warmup", str(warmup), "--timed", str(timed)] + [f"--set={item}" for item in overrides]
    process = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                             env={**os.environ, **env})
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        tail = "\n".join(process.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{system} worker failed (exit {process.returncode}):\n{tail}")
    return json.loads(lines[-1])


def summarise(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    """Per-system medians over rounds, and each system's ratios to TRL's medians."""
    per_system: dict[str, Any] = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        rates = [r["completion_tokens"] / r["seconds"] for r in mine]
        per_system[system] = {
            "s_per_step": statistics.median(r["seconds"] / r["steps"] for r in mine),
            "tok_s": statistics.median(rates), "tok_s_per_round": [round(x, 1) for x in rates],
            "tokens_per_step": statistics.median(r["completion_tokens"] / r["steps"] for r in mine),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
        }
        threads = {k: v for k, v in mine[-1].items() if k.startswith(("learner/threads", "generation/threads"))}
        per_system[system].update(threads)
    ratios: dict[str, float] = {}
    if "trl" in per_system:
        trl = per_system["trl"]
        for system in (s for s in systems if s != "trl"):
            ratios[f"{system}_vs_trl_tok_s"] = per_system[system]["tok_s"] / trl["tok_s"]
            ratios[f"{system}_vs_trl_peak_rss"] = per_system[system]["peak_rss_mib"] / trl["peak_rss_mib"]
        ours = [s for s in systems if s != "trl"]
        if ours:
            ratios["peak_rss_vs_trl"] = max(ratios[f"{s}_vs_trl_peak_rss"] for s in ours)
    return {"systems": per_system, "ratios": ratios}


def run_learner_bench(out_dir: Path, systems: list[str], rounds: int, warmup: int, timed: int,
                      overrides: list[str], env: dict[str, str], timeout_s: float,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_folder = out_dir / "model"
    model_info = build_model_folder(model_folder)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for system in rotated(list(systems), round_index):
            started = time.monotonic()
            record = run_worker(system, model_folder, warmup, timed, overrides, env, timeout_s)
            record["round"] = round_index
            runs.append(record)
            log(f"round {round_index} {system:>4}: {record['seconds'] / timed:.2f} s/step, "
                f"{record['completion_tokens'] / record['seconds']:.0f} tok/s, "
                f"peak RSS {record['peak_rss_mib']:.0f} MiB ({time.monotonic() - started:.0f} s, "
                f"load {os.getloadavg()[0]:.1f})")
    result = {"bench": "learner", "against": "trl", "model": model_info, "rounds": rounds, "warmup": warmup,
              "timed_steps": timed, "overrides": overrides, "env": env, "cpus": len(os.sched_getaffinity(0)),
              "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "runs": runs,
              **summarise(runs, list(systems))}
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def table_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'system':<34}{'s/step':>8}{'tok/s':>9}{'tok/step':>10}{'peak RSS MiB':>14}{'tok/s vs TRL':>14}"]
    trl = result["systems"].get("trl")
    for system, row in result["systems"].items():
        ratio = f"{row['tok_s'] / trl['tok_s']:.2f}x" if trl else "-"
        lines.append(f"{LABELS[system]:<34}{row['s_per_step']:>8.2f}{row['tok_s']:>9.0f}{row['tokens_per_step']:>10.0f}"
                     f"{row['peak_rss_mib']:>14.0f}{ratio:>14}")
    return lines


def json_line(result: dict[str, Any]) -> dict[str, Any]:
    ratios = result["ratios"]
    line = {"bench": "learner", "against": "trl", "rounds": result["rounds"], "timed_steps": result["timed_steps"]}
    for key in ("grpo_vs_trl_tok_s", "spo_vs_trl_tok_s", "peak_rss_vs_trl"):
        if key in ratios:
            line[key] = round(ratios[key], 3)
    for system, row in result["systems"].items():
        line[f"{system}_tok_s"] = round(row["tok_s"], 1)
        line[f"{system}_peak_rss_mib"] = round(row["peak_rss_mib"])
    line["load_avg_before"] = round(result["load_avg_before"][0], 2)
    line["load_avg_after"] = round(result["load_avg_after"][0], 2)
    return line
