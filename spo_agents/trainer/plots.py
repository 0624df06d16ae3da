"""PNG plots of a run folder's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from spo_agents.trainer.metrics import read_metrics

PANELS = [
    ("reward/mean", "train reward"),
    ("eval/accuracy", "held-out accuracy"),
    ("rho/mean", "rho (SPO forgetting factor)"),
    ("staleness/mean", "staleness (versions behind)"),
    ("rollout/slot_utilisation", "slot utilisation"),
]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write plots/<metric>.png against step and wall-clock; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is in the `train` extra
        return []
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for key, title in PANELS:
        points = [(r["step"], r["wall_s"], r[key]) for r in records if key in r and r.get("kind") != "summary"]
        if not points:
            continue
        fig, (by_step, by_wall) = plt.subplots(1, 2, figsize=(10, 3.5))
        steps, walls, values = zip(*points)
        by_step.plot(steps, values, marker="o", markersize=3)
        by_step.set_xlabel("learner step")
        by_wall.plot(walls, values, marker="o", markersize=3)
        by_wall.set_xlabel("wall-clock (s)")
        for axis in (by_step, by_wall):
            axis.set_ylabel(title)
            axis.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        path = out_dir / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
