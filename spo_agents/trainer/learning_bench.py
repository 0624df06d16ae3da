"""`spo-agents bench learning`: does SPO learn faster than GRPO in wall-clock, not just run faster?

BENCHMARKS.md section 2: the same model, environment, episode budget and seeds for SPO and
GRPO; held-out accuracy against wall-clock and against episodes; at least 3 seeds; mean and
spread. Bar: SPO reaches GRPO's final held-out accuracy in <= 0.7x GRPO's wall-clock.

Method, chosen so that the two algorithms are measured the same way:
- Each (seed, algorithm) run is an ordinary `Trainer` run of one base config with only `algo`,
  `seed` and `output_dir` changed, so the model, environment, batch size and number of steps
  (hence the episode budget) are identical. Runs of one seed are back to back, alternating
  which algorithm goes first, so slow drifts of a shared machine's load hit both.
- In-run evaluation is switched off: the trainer's evaluation would pause GRPO's synchronous
  batches but not SPO's streaming slots, and its time would count as training time. Instead
  the runs checkpoint every `checkpoint_every` steps, and every checkpoint is evaluated after
  the fact on the same held-out tasks, greedily. A checkpoint's wall-clock and episode count
  are read from the training record of its step in metrics.jsonl.
- Time to target: GRPO's final accuracy (mean over seeds) is the target; SPO's time is the
  first checkpoint where SPO's mean-over-seeds curve reaches it (checkpoint times are averaged
  over seeds). Ratio = that time / GRPO's mean final wall-clock. If SPO's curve never reaches
  the target the ratio is null and the bar is not met.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file

from spo_agents.trainer.config import TrainConfig, load_config
from spo_agents.trainer.evaluate import evaluate
from spo_agents.trainer.metrics import read_metrics
from spo_agents.trainer.parts import build_policy, task_ids

BAR_RATIO = 0.7


@dataclass
class CurvePoint:
    step: int
    wall_s: float
    episodes: int
    accuracy: float


@dataclass
class RunCurve:
    algo: str
    seed: int
    points: list[CurvePoint] = field(default_factory=list)
    wall_s: float = 0.0
    episodes: int = 0


def run_config(config_path: str | None, overrides: list[str], algo: str, seed: int, out_dir: Path,
               checkpoint_every: int) -> TrainConfig:
    """The base config with only algo, seed, output folder, checkpointing and in-run eval changed."""
    return load_config(config_path, [*overrides, f"algo={algo}", f"seed={seed}", f"output_dir={out_dir}",
                                     f"checkpoint_every={checkpoint_every}", "eval.enabled=false", "transcripts=0"])


def checkpoint_times(run_dir: Path) -> dict[int, tuple[float, int]]:
    """step -> (wall_s, episodes) from the run's training records."""
    return {r["step"]: (float(r["wall_s"]), int(r["episodes/total"]))
            for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"}


async def _accuracy(policy, config: TrainConfig, ids: list[str]) -> float:
    result = await evaluate(policy.backend, policy.formatter, config.env_id,
                            {**config.env_kwargs, "split": config.eval.split}, ids, temperature=0.0,
                            num_slots=config.rollout.num_slots, rollout=config.rollout, ks=(1,))
    return float(result.metrics["accuracy"])


def evaluate_run(config: TrainConfig, ids: list[str], initial_accuracy: float) -> RunCurve:
    """Held-out accuracy of every checkpoint of a finished run (step 0 is the shared start)."""
    run_dir = Path(config.output_dir)
    times = checkpoint_times(run_dir)
    curve = RunCurve(config.algo.value, config.seed, [CurvePoint(0, 0.0, 0, initial_accuracy)])
    policy = build_policy(config.model, config.device, config.seed)
    try:
        for folder in sorted((run_dir / "checkpoints").glob("step-*")):
            if folder.name.endswith(".tmp"):
                continue
            step = int(folder.name.split("-")[1])
            weights = load_file(str(folder / "model.safetensors"))
            policy.train_model.load_state_dict(weights, strict=False)
            policy.backend.update_weights(weights, version=step)
            wall, episodes = times[step]
            curve.points.append(CurvePoint(step, wall, episodes, asyncio.run(_accuracy(policy, config, ids))))
    finally:
        policy.backend.close()
    curve.wall_s, curve.episodes = curve.points[-1].wall_s, curve.points[-1].episodes
    return curve


def initial_accuracy(config: TrainConfig, ids: list[str]) -> float:
    policy = build_policy(config.model, config.device, config.seed)
    try:
        return asyncio.run(_accuracy(policy, config, ids))
    finally:
        policy.backend.close()


def mean_curve(curves: list[RunCurve]) -> dict[str, list[float]]:
    """Mean and spread (std, min, max) over seeds at each checkpoint index."""
    length = min(len(c.points) for c in curves)
    acc = np.array([[p.accuracy for p in c.points[:length]] for c in curves])
    wall = np.array([[p.wall_s for p in c.points[:length]] for c in curves])
    episodes = np.array([[p.episodes for p in c.points[:length]] for c in curves])
    return {"step": [p.step for p in curves[0].points[:length]], "wall_s": wall.mean(0).tolist(),
            "episodes": episodes.mean(0).tolist(), "accuracy_mean": acc.mean(0).tolist(),
            "accuracy_std": acc.std(0).tolist(), "accuracy_min": acc.min(0).tolist(),
            "accuracy_max": acc.max(0).tolist()}


def time_to_target(curve: dict[str, list[float]], target: float) -> float | None:
    """Wall-clock of the first checkpoint whose mean accuracy reaches `target` (None if never)."""
    for wall, accuracy in zip(curve["wall_s"], curve["accuracy_mean"]):
        if accuracy >= target - 1e-9:
            return float(wall)
    return None


def summarise(curves: list[RunCurve], config: TrainConfig, num_tasks: int) -> dict[str, Any]:
    """The benchmark's one-line JSON result."""
    by_algo = {algo: [c for c in curves if c.algo == algo] for algo in ("spo", "grpo")}
    means = {algo: mean_curve(runs) for algo, runs in by_algo.items()}
    result: dict[str, Any] = {"bench": "learning", "model": config.model, "env_id": config.env_id,
                              "env_kwargs": config.env_kwargs, "seeds": sorted({c.seed for c in curves}),
                              "steps": config.steps, "batch_size": config.batch_size,
                              "episode_budget": config.steps * config.batch_size, "heldout_tasks": num_tasks}
    for algo, runs in by_algo.items():
        finals = [c.points[-1].accuracy for c in runs]
        result[f"{algo}_final_accuracy_mean"] = float(np.mean(finals))
        result[f"{algo}_final_accuracy_std"] = float(np.std(finals))
        result[f"{algo}_final_accuracies"] = finals
        result[f"{algo}_wall_s_mean"] = float(np.mean([c.wall_s for c in runs]))
        result[f"{algo}_episodes_mean"] = float(np.mean([c.episodes for c in runs]))
    result["initial_accuracy"] = float(np.mean([c.points[0].accuracy for c in curves]))
    target = result["grpo_final_accuracy_mean"]
    trained = {key: values[1:] for key, values in means["spo"].items()}  # the start is not SPO's doing
    spo_time = time_to_target(trained, target)
    ratio = None if spo_time is None else spo_time / max(result["grpo_wall_s_mean"], 1e-9)
    result.update(spo_time_to_grpo_final_s=spo_time, time_ratio=ratio, bar_ratio=BAR_RATIO,
                  bar_met=ratio is not None and ratio <= BAR_RATIO, note="", curves=means)
    if target <= result["initial_accuracy"] + 1e-9:
        # GRPO did not improve on the start: "reaching GRPO's final accuracy" is vacuous
        result.update(bar_met=None, note="GRPO's final accuracy is not above the start; the bar is undefined")
    return result


def plot_learning(result: dict[str, Any], path: Path) -> Path | None:
    """Held-out accuracy vs wall-clock and vs episodes, mean with min-max band per algorithm."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for algo, colour in (("spo", "tab:blue"), ("grpo", "tab:orange")):
        curve = result["curves"][algo]
        for axis, x_key in zip(axes, ("wall_s", "episodes")):
            axis.plot(curve[x_key], curve["accuracy_mean"], marker="o", color=colour, label=algo.upper())
            axis.fill_between(curve[x_key], curve["accuracy_min"], curve["accuracy_max"], color=colour, alpha=0.2)
    axes[0].axhline(result["grpo_final_accuracy_mean"], color="grey", linestyle="--", label="GRPO final (mean)")
    axes[0].set_xlabel("wall-clock (s, mean over seeds)")
    axes[1].set_xlabel("episodes consumed")
    for axis in axes:
        axis.set_ylabel(f"held-out accuracy ({result['heldout_tasks']} tasks, greedy)")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"SPO vs GRPO, {result['model']} on {result['env_id']}, seeds {result['seeds']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for metric in ("final_accuracy_mean", "final_accuracy_std", "wall_s_mean", "episodes_mean"):
        rows.append((metric, f"{result[f'spo_{metric}']:.4g}", f"{result[f'grpo_{metric}']:.4g}"))
    return rows


def run_learning_bench(config_path: str | None, overrides: list[str], seeds: list[int], out_dir: str | Path,
                       checkpoint_every: int, eval_tasks: int, log=print) -> dict[str, Any]:
    """Train SPO and GRPO for every seed, evaluate all checkpoints, write result.json and the plot."""
    out_dir = Path(out_dir)
    base = run_config(config_path, overrides, "spo", seeds[0], out_dir / "probe", checkpoint_every)
    ids = sorted(task_ids(base.env_id, base.env_kwargs, base.eval.split))[:eval_tasks]
    curves: list[RunCurve] = []
    for index, seed in enumerate(seeds):
        # the start is shared by both algorithms of a seed (the tiny preset's weights depend on the seed)
        start_accuracy = initial_accuracy(base.model_copy(update={"seed": seed}), ids)
        algos = ("spo", "grpo") if index % 2 == 0 else ("grpo", "spo")
        for algo in algos:
            config = run_config(config_path, overrides, algo, seed, out_dir / f"{algo}-seed{seed}", checkpoint_every)
            started = time.monotonic()
            from spo_agents.trainer.loop import Trainer

            asyncio.run(Trainer(config, show_progress=False).run())
            curves.append(evaluate_run(config, ids, start_accuracy))
            log(f"{algo} seed {seed}: final accuracy {curves[-1].points[-1].accuracy:.3f}, "
                f"train wall {curves[-1].wall_s:.1f}s (with eval {time.monotonic() - started:.1f}s)")
    result = summarise(curves, base, len(ids))
    result["runs"] = [asdict(c) for c in curves]
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    plot_learning(result, out_dir / "learning.png")
    return result
