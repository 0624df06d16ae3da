"""`spo-agents bench learning`: does SPO learn faster than GRPO in wall-clock, not just run faster?

The setting is where SPO's paper says its gains come from (docs/benchmarks.md, "Learning"): a
fixed training pool revisited over several epochs (`train_tasks`), so the per-task value
tracker carries information; a pool of mixed difficulty, so GRPO's groups are often degenerate;
multi-turn episodes of uneven length; the offline value initialisation (`estimate-values`).

Method (fixed before any result was looked at; docs/benchmarks.md lists the fairness rules):
- An *arm* is a method with its settings: SPO (offline init + prioritised sampling), SPO
  without the init, SPO with uniform sampling (the priority ablation), GRPO at group sizes 4 and
  8 (its grid). Every arm of a seed runs the same base config, with only `algo`, `seed`, the
  arm's own settings and the output folder changed: same model, warm start, environment, pool,
  held-out set, slots, learning rate, clip and episode budget (`steps * batch_size`). Arms of
  one seed run back to back in an order rotated per seed, so drifts of the machine's load hit
  all of them.
- An arm with the offline init runs `estimate-values` (N0 episodes per pool task) first; its
  time and episodes are charged to the arm: its clock and episode count start before it.
- In-run evaluation is off (it would pause GRPO's synchronous batches but not SPO's slots);
  every checkpoint is evaluated afterwards, greedily, on the same held-out tasks; a
  checkpoint's wall-clock and episode count come from the run's training record of its step.
- GRPO's reference is the best GRPO arm of the grid (highest mean final accuracy). SPO's
  time to it: the first checkpoint of SPO's mean-over-seeds curve that reaches the reference's
  mean final accuracy, over the reference's mean wall-clock (`spo_time_to_grpo_final_ratio`);
  per seed the same against that seed's reference run gives the spread (mean and 95% t-interval
  over the seeds that reached it).
- Mechanism figures per run: degenerate-group fraction (GRPO), useful-episode fraction (raw
  advantage r - b not zero, b the baseline the learner compared the reward with), mean |r - b|,
  slot utilisation, and for SPO the tracker's calibration (v_before against the reward).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from spo_agents.bench.learning_report import plot_calibration, plot_learning, summarise
from spo_agents.trainer.callbacks import TrainerCallback
from spo_agents.trainer.checkpoint import load_weights
from spo_agents.trainer.config import TrainConfig, load_config
from spo_agents.trainer.evaluate import evaluate
from spo_agents.trainer.metrics import read_metrics
from spo_agents.trainer.parts import build_policy, eval_task_ids, state_dict_for_backend, train_task_ids
from spo_agents.trainer.sft import ensure_warm_start


@dataclass(frozen=True)
class Arm:
    """One method of the comparison: an algorithm and its own settings."""

    name: str
    algo: str
    overrides: tuple[str, ...] = ()
    value_init: bool = False  # run estimate-values first; its time and episodes count for this arm


ARMS = {arm.name: arm for arm in (
    Arm("spo", "spo", value_init=True),
    Arm("spo-noinit", "spo"),
    Arm("spo-uniform", "spo", ("sampler.prioritized=false",), value_init=True),
    Arm("grpo-g4", "grpo", ("group_size=4",)),
    Arm("grpo-g8", "grpo", ("group_size=8",)),
    Arm("grpo-g4-gated", "grpo", ("group_size=4", "grpo_mode=group")),
)}
DEFAULT_ARMS = ("spo", "spo-noinit", "spo-uniform", "grpo-g4", "grpo-g8")


@dataclass
class CurvePoint:
    step: int
    wall_s: float
    episodes: int
    accuracy: float


@dataclass
class RunCurve:
    arm: str
    algo: str
    seed: int
    points: list[CurvePoint] = field(default_factory=list)
    wall_s: float = 0.0
    episodes: int = 0
    estimate_s: float = 0.0  # offline value initialisation, included in wall_s
    mechanism: dict[str, float | None] = field(default_factory=dict)


class AdvantageRecorder(TrainerCallback):
    """Per trained episode: the reward and the baseline it was compared with (SPO: the tracker's
    v_before; GRPO: its group's mean), read from each batch the learner receives."""

    def __init__(self) -> None:
        self.rewards: list[float] = []
        self.baselines: list[float] = []

    def on_batch(self, trainer: Any, batch: Any) -> None:
        self.rewards += [float(e.reward) for e in batch.episodes]
        self.baselines += list(batch.baselines)

    def mechanism(self, records: list[dict[str, Any]]) -> dict[str, float | None]:
        raw = np.array(self.rewards) - np.array(self.baselines)
        train = [r for r in records if r.get("kind") == "train"]

        def mean_of(key: str) -> float | None:  # None: the figure does not apply to this method
            values = [r[key] for r in train if key in r]
            return float(np.mean(values)) if values else None

        return {"useful_episode_frac": float(np.mean(np.abs(raw) > 1e-6)) if raw.size else None,
                "mean_abs_raw_advantage": float(np.mean(np.abs(raw))) if raw.size else None,
                "degenerate_group_frac": mean_of("grpo/degenerate_group_frac"),
                "slot_utilisation": mean_of("rollout/slot_utilisation")}


def run_config(config_path: str | None, overrides: Sequence[str], arm: Arm, seed: int, out_dir: Path,
               checkpoint_every: int | None = None) -> TrainConfig:
    """The base config with only the arm, seed, output folder, checkpointing and in-run eval changed."""
    every = [] if checkpoint_every is None else [f"checkpoint_every={checkpoint_every}"]
    return load_config(config_path, [*overrides, f"algo={arm.algo}", *arm.overrides, f"seed={seed}",
                                     f"output_dir={out_dir}", *every, "eval.enabled=false", "transcripts=0"])


def checkpoint_times(run_dir: Path) -> dict[int, tuple[float, int]]:
    """step -> (wall_s, episodes) from the run's training records."""
    return {r["step"]: (float(r["wall_s"]), int(r["episodes/total"]))
            for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"}


async def _accuracy(policy: Any, config: TrainConfig, ids: list[str]) -> float:
    result = await evaluate(policy.backend, policy.formatter, config.env_id,
                            {**config.env_kwargs, "split": config.eval.split}, ids, temperature=0.0,
                            num_slots=config.rollout.num_slots, rollout=config.rollout, ks=(1,))
    return float(result.metrics["accuracy"])


def initial_accuracy(config: TrainConfig, ids: list[str]) -> float:
    policy = build_policy(config.model, config.device, config.seed)
    try:
        return asyncio.run(_accuracy(policy, config, ids))
    finally:
        policy.backend.close()


def evaluate_checkpoints(config: TrainConfig, ids: list[str], curve: RunCurve) -> None:
    """Append the held-out accuracy of every checkpoint of a finished run to `curve` (strict
    loading: a checkpoint that does not fit the model is an error, never a partial load)."""
    run_dir = Path(config.output_dir)
    times = checkpoint_times(run_dir)
    policy = build_policy(config.model, config.device, config.seed)
    try:
        for folder in sorted(p for p in (run_dir / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")):
            step = int(folder.name.split("-")[1])
            load_weights(folder, policy.train_model)
            policy.backend.update_weights(state_dict_for_backend(policy.train_model), version=step)
            wall, episodes = times[step]
            curve.points.append(CurvePoint(step, curve.estimate_s + wall, curve.episodes + episodes,
                                           asyncio.run(_accuracy(policy, config, ids))))
    finally:
        policy.backend.close()


def run_arm(config: TrainConfig, arm: Arm, ids: list[str], start_accuracy: float,
            n0: int) -> tuple[RunCurve, AdvantageRecorder]:
    """Train one arm (after its offline value estimation, if any) and evaluate its checkpoints;
    returns the curve and the per-episode (baseline, reward) record."""
    from spo_agents.trainer.estimate import estimate_values
    from spo_agents.trainer.loop import Trainer

    run_dir = Path(config.output_dir)
    curve = RunCurve(arm.name, arm.algo, config.seed, [CurvePoint(0, 0.0, 0, start_accuracy)])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if arm.value_init:
        table = run_dir.parent / f"{run_dir.name}-values.jsonl"
        started = time.monotonic()
        asyncio.run(estimate_values(config, table, n0=n0))
        curve.estimate_s = time.monotonic() - started
        curve.episodes = len(train_task_ids(config)) * n0
        config = config.model_copy(update={"value_table": str(table)})
    recorder = AdvantageRecorder()
    asyncio.run(Trainer(config, show_progress=False, callbacks=[recorder]).run())
    curve.mechanism = recorder.mechanism(read_metrics(run_dir / "metrics.jsonl"))
    evaluate_checkpoints(config, ids, curve)
    curve.wall_s, curve.episodes = curve.points[-1].wall_s, curve.points[-1].episodes
    return curve, recorder


def arms_problem(arms: Sequence[str]) -> str | None:
    """Why these arms cannot be compared (None: they can)."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        return f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}"
    if not any(ARMS[a].algo == "spo" for a in arms) or not any(ARMS[a].algo == "grpo" for a in arms):
        return "the comparison needs at least one SPO arm and one GRPO arm"
    return None


def output_problem(out_dir: Path) -> str | None:
    """An output folder that already holds runs would mix their checkpoints into this comparison."""
    taken = sorted(p.name for p in out_dir.glob("*-seed*")) if out_dir.is_dir() else []
    if taken:
        return f"{out_dir} already holds runs ({', '.join(taken[:3])}); remove it or choose another --output-dir"
    return None


def run_learning_bench(config_path: str | None, overrides: Sequence[str], seeds: Sequence[int],
                       out_dir: str | Path, checkpoint_every: int | None = None, eval_tasks: int | None = None,
                       arms: Sequence[str] = DEFAULT_ARMS, n0: int = 4,
                       log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Every arm for every seed; writes result.json, learning.png and calibration.png."""
    out_dir = Path(out_dir)
    problem = arms_problem(arms) or output_problem(out_dir)
    if problem:
        raise ValueError(problem)
    base = run_config(config_path, overrides, ARMS[arms[0]], seeds[0], out_dir / "probe", checkpoint_every)
    if base.warm_start is not None:  # made once, shared by every arm and seed (each run then reuses it)
        ensure_warm_start(base.model, base.warm_start, log=log)
    if eval_tasks is not None:
        base = base.model_copy(update={"eval": base.eval.model_copy(update={"num_tasks": eval_tasks})})
    ids = eval_task_ids(base)
    curves: list[RunCurve] = []
    calibration: dict[str, list[list[float]]] = {}  # SPO runs: [v_before per episode, reward per episode]
    for index, seed in enumerate(seeds):
        start_accuracy = initial_accuracy(base.model_copy(update={"seed": seed}), ids)
        log(f"seed {seed}: start accuracy {start_accuracy:.3f} on {len(ids)} held-out tasks")
        order = list(arms[index % len(arms):]) + list(arms[: index % len(arms)])  # rotated per seed
        for name in order:
            arm = ARMS[name]
            config = run_config(config_path, overrides, arm, seed, out_dir / f"{name}-seed{seed}", checkpoint_every)
            curve, recorder = run_arm(config, arm, ids, start_accuracy, n0)
            curves.append(curve)
            if arm.algo == "spo":
                calibration[f"{name}-seed{seed}"] = [recorder.baselines, recorder.rewards]
            log(f"{name} seed {seed}: final accuracy {curves[-1].points[-1].accuracy:.3f}, wall "
                f"{curves[-1].wall_s:.1f}s (offline init {curves[-1].estimate_s:.1f}s)")
    result = summarise(curves, base, len(ids), n0)
    (out_dir / "result.json").write_text(json.dumps({**result, "runs": [asdict(c) for c in curves]}, indent=2))
    (out_dir / "calibration.json").write_text(json.dumps(calibration))
    plot_learning(result, out_dir / "learning.png")
    plot_calibration(calibration, out_dir / "calibration.png")
    return result
