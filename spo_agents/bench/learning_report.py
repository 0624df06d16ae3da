"""What `spo-agents bench learning` reports: the summary (one JSON line), its table and plots.

Kept apart from the runner (bench/learning.py) so the arithmetic is testable on hand-made curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spo_agents.trainer.stats import mean_interval

BAR_RATIO = 0.7  # BENCHMARKS.md: SPO reaches GRPO's final accuracy in <= 0.7x GRPO's wall-clock
MIN_GRPO_GAIN = 0.20  # issue 13: the comparison only means something if GRPO gains >= 20 points


def mean_curve(curves: Sequence[Any]) -> dict[str, list[float]]:
    """Mean and spread (std, min, max) over seeds at each checkpoint index."""
    length = min(len(c.points) for c in curves)
    acc = np.array([[p.accuracy for p in c.points[:length]] for c in curves])
    wall = np.array([[p.wall_s for p in c.points[:length]] for c in curves])
    episodes = np.array([[p.episodes for p in c.points[:length]] for c in curves])
    bands = [mean_interval(list(column)) for column in acc.T]  # 95% t-interval over seeds (None below 2)
    return {"step": [p.step for p in curves[0].points[:length]], "wall_s": wall.mean(0).tolist(),
            "episodes": episodes.mean(0).tolist(), "accuracy_mean": acc.mean(0).tolist(),
            "accuracy_std": acc.std(0).tolist(), "accuracy_min": acc.min(0).tolist(),
            "accuracy_max": acc.max(0).tolist(),
            "accuracy_ci95_low": [b[0] if b else m for b, m in zip(bands, acc.mean(0))],
            "accuracy_ci95_high": [b[1] if b else m for b, m in zip(bands, acc.mean(0))]}


def time_to_target(curve: dict[str, list[float]], target: float) -> float | None:
    """Wall-clock of the first trained checkpoint (the start excluded) whose accuracy reaches `target`."""
    for wall, accuracy in list(zip(curve["wall_s"], curve["accuracy_mean"]))[1:]:
        if accuracy >= target - 1e-9:
            return float(wall)
    return None


def _arm_summary(runs: Sequence[Any], initial: float) -> dict[str, Any]:
    finals = [c.points[-1].accuracy for c in runs]
    mechanism = {key: _mean_of_known([c.mechanism.get(key) for c in runs])
                 for key in ("useful_episode_frac", "mean_abs_raw_advantage", "degenerate_group_frac",
                             "slot_utilisation")}
    return {"algo": runs[0].algo, "final_accuracy_mean": float(np.mean(finals)),
            "final_accuracy_std": float(np.std(finals)), "final_accuracies": finals,
            "gain_mean": float(np.mean(finals)) - initial, "wall_s_mean": float(np.mean([c.wall_s for c in runs])),
            "estimate_s_mean": float(np.mean([c.estimate_s for c in runs])),
            "episodes_mean": float(np.mean([c.episodes for c in runs])), **mechanism,
            "curve": mean_curve(runs)}


def _mean_of_known(values: Sequence[float | None]) -> float | None:
    """Mean of the known values (None: the figure does not apply, e.g. degenerate groups of SPO)."""
    known = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(known)) if known else None


def _per_seed_ratios(spo: Sequence[Any], reference: Sequence[Any]) -> list[float | None]:
    """Per seed: SPO's time to that seed's reference final accuracy over the reference's wall-clock."""
    by_seed = {c.seed: c for c in reference}
    ratios: list[float | None] = []
    for run in spo:
        ref = by_seed.get(run.seed)
        if ref is None:
            continue
        curve = {"wall_s": [p.wall_s for p in run.points], "accuracy_mean": [p.accuracy for p in run.points]}
        reached = time_to_target(curve, ref.points[-1].accuracy)
        ratios.append(None if reached is None else reached / max(ref.wall_s, 1e-9))
    return ratios


def summarise(curves: Sequence[Any], config: Any, num_tasks: int, n0: int) -> dict[str, Any]:
    """The benchmark's result: per-arm figures, the GRPO grid's best arm, SPO's time ratio and the bar."""
    names = list(dict.fromkeys(c.arm for c in curves))
    initial = float(np.mean([c.points[0].accuracy for c in curves]))
    arms = {name: _arm_summary([c for c in curves if c.arm == name], initial) for name in names}
    grpo = [n for n in names if arms[n]["algo"] == "grpo"]
    spo = [n for n in names if arms[n]["algo"] == "spo"]
    reference = max(grpo, key=lambda n: arms[n]["final_accuracy_mean"])
    main = "spo" if "spo" in spo else spo[0]
    target = arms[reference]["final_accuracy_mean"]
    reached = time_to_target(arms[main]["curve"], target)
    ratio = None if reached is None else reached / max(arms[reference]["wall_s_mean"], 1e-9)
    per_seed = _per_seed_ratios([c for c in curves if c.arm == main], [c for c in curves if c.arm == reference])
    finite = [r for r in per_seed if r is not None]
    grpo_gain, spo_gain = target - initial, arms[main]["final_accuracy_mean"] - initial
    result: dict[str, Any] = {
        "bench": "learning", "model": config.model, "env_id": config.env_id, "env_kwargs": config.env_kwargs,
        "seeds": sorted({c.seed for c in curves}), "arms": names, "steps": config.steps,
        "batch_size": config.batch_size, "train_tasks": config.train_tasks,
        "episode_budget": config.steps * config.batch_size, "n0": n0, "heldout_tasks": num_tasks,
        "initial_accuracy": initial, "grpo_reference_arm": reference, "spo_arm": main,
        "grpo_final_accuracy": target, "spo_final_accuracy": arms[main]["final_accuracy_mean"],
        "grpo_gain": grpo_gain, "spo_gain": spo_gain, "spo_time_to_grpo_final_s": reached,
        "spo_time_to_grpo_final_ratio": ratio, "spo_time_ratio_per_seed": per_seed,
        "spo_time_ratio_ci95": mean_interval(finite) if len(finite) == len(per_seed) else None,
        "bar_ratio": BAR_RATIO, "min_grpo_gain": MIN_GRPO_GAIN,
        "bar_met": ratio is not None and ratio <= BAR_RATIO and grpo_gain >= MIN_GRPO_GAIN, "note": "",
        "per_arm": arms}
    if grpo_gain < MIN_GRPO_GAIN:
        result["note"] = (f"GRPO gained {grpo_gain:+.3f} (< {MIN_GRPO_GAIN:+.2f}): the setting cannot show "
                          "a difference, so the bar is not met whatever the ratio")
    return result


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per arm: final accuracy (mean +- std), gain, wall-clock, episodes, mechanism figures."""
    rows = []
    for name, arm in result["per_arm"].items():
        rows.append((name, f"{arm['final_accuracy_mean']:.3f} +- {arm['final_accuracy_std']:.3f}",
                     f"{arm['gain_mean']:+.3f}", f"{arm['wall_s_mean']:.0f}", f"{arm['episodes_mean']:.0f}",
                     _pct(arm["useful_episode_frac"]), _pct(arm["degenerate_group_frac"]),
                     _pct(arm["slot_utilisation"])))
    return rows


TABLE_COLUMNS = ("arm", "final acc", "gain", "wall s", "episodes", "useful eps", "degenerate groups", "slot util")


def _pct(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.0f}%"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning(result: dict[str, Any], path: Path) -> Path:
    """Held-out accuracy vs wall-clock and vs episodes, mean with its 95% band over seeds, one line per arm."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, arm in result["per_arm"].items():
        curve = arm["curve"]
        style = "-" if arm["algo"] == "spo" else "--"
        for axis, x_key in zip(axes, ("wall_s", "episodes")):
            line, = axis.plot(curve[x_key], curve["accuracy_mean"], style, marker="o", label=name)
            axis.fill_between(curve[x_key], np.clip(curve["accuracy_ci95_low"], 0, 1),
                              np.clip(curve["accuracy_ci95_high"], 0, 1), color=line.get_color(), alpha=0.15)
    axes[0].axhline(result["grpo_final_accuracy"], color="grey", linestyle=":",
                    label=f"{result['grpo_reference_arm']} final")
    axes[0].set_xlabel("wall-clock (s, mean over seeds; offline init included)")
    axes[1].set_xlabel("episodes (offline init included)")
    for axis in axes:
        axis.set_ylabel(f"held-out accuracy ({result['heldout_tasks']} tasks, greedy)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"{result['env_id']}, pool {result['train_tasks']} tasks, seeds {result['seeds']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def calibration_bins(baselines: Sequence[float], rewards: Sequence[float], bins: int = 10) -> list[tuple]:
    """(mean v_before, mean reward, count) per equal-width bin of v_before; empty bins left out."""
    v, r = np.asarray(baselines, dtype=float), np.asarray(rewards, dtype=float)
    index = np.minimum((v * bins).astype(int), bins - 1)
    return [(float(v[index == b].mean()), float(r[index == b].mean()), int((index == b).sum()))
            for b in range(bins) if (index == b).any()]


def plot_calibration(calibration: dict[str, Any], path: Path) -> Path | None:
    """The tracker's v_before against the reward it predicted, binned, per SPO run."""
    runs = {name: pair for name, pair in calibration.items() if pair and len(pair[0])}
    if not runs:
        return None
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5.5, 5))
    for name, (baselines, rewards) in runs.items():
        bins = calibration_bins(baselines, rewards)
        axis.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", alpha=0.7, label=name)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    axis.set_xlabel("tracker value v_before (binned)")
    axis.set_ylabel("mean reward of the episode")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
