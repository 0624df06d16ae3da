"""Tables, plots and run folders for the throughput benchmark, simulated or end-to-end.

Why: both modes of `spo-agents bench throughput` report the same per-method numbers, so the
table, the JSON dump and the plots live here and take plain dictionaries, not simulator
objects. matplotlib is imported inside the plotting functions (it is an optional dependency);
without it the run folder gets the JSON only and the caller is told which plots were skipped.

Left out: interactive output, HTML reports, and comparisons across run folders.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# (metrics key, column header, format) for the per-method table.
COLUMNS = (
    ("batch_fill_s", "fill s", "{:.1f}"),
    ("episodes_per_s", "eps/s", "{:.3f}"),
    ("useful_episodes_per_s", "useful/s", "{:.3f}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
    ("slot_utilisation", "util", "{:.3f}"),
    ("learner_idle_fraction", "L idle", "{:.2f}"),
    ("staleness_mean", "stale", "{:.2f}"),
    ("staleness_max", "max", "{:d}"),
    ("eps_ratio_to_ideal", "/ideal", "{:.3f}"),
)
COLUMN_NOTE = (
    "fill s: mean time between learner-ready batches; useful/s: episodes/s without "
    "degenerate groups; util: busy slot-time share; L idle: learner idle share; stale: "
    "learner steps between an episode's start and its use (mean, max); /ideal: eps/s ratio"
)

METHOD_LABELS = {
    "grpo_sync": "GRPO sync",
    "grpo_group": "GRPO group",
    "spo": "SPO",
    "ideal": "ideal",
}
# Column headers of the sweep table.
SWEEP_COLUMNS = {
    "spo_vs_grpo_sync": "SPO/sync",
    "spo_vs_grpo_group": "SPO/group",
    "spo_utilisation": "util SPO",
    "grpo_group_utilisation": "util group",
    "grpo_sync_utilisation": "util sync",
}


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / f"bench-throughput-{time.strftime('%Y%m%d-%H%M%S')}"


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(int(value) if fmt == "{:d}" else value)


def metrics_table(metrics: dict[str, dict], title: str) -> Table:
    """One row per method, the columns of `COLUMNS` that any method reports."""
    columns = [c for c in COLUMNS if any(c[0] in m for m in metrics.values())]
    table = Table(title=title)
    table.add_column("method")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for method, m in metrics.items():
        row = [_cell(m.get(key), fmt) for key, _, fmt in columns]
        table.add_row(METHOD_LABELS.get(method, method), *row)
    return table


def sweep_table(rows: list[dict]) -> Table:
    """Long-run ratios per sigma, then the paper-setting speedup of each reading."""
    table = Table(title="speedup vs tail heaviness (log-normal sigma of episode duration)")
    keys = [k for k in SWEEP_COLUMNS if rows and k in rows[0]]
    papers = [k for k in (rows[0] if rows else ()) if k.startswith("paper_")]
    table.add_column("sigma", justify="right")
    for key in keys:
        table.add_column(SWEEP_COLUMNS[key], justify="right")
    for key in papers:
        table.add_column("paper " + key.removeprefix("paper_").split("_vs_")[0], justify="right")
    for row in rows:
        table.add_row(f"{row['sigma']:.2f}", *(f"{row[k]:.2f}" for k in keys + papers))
    return table


def print_tables(tables, console: Console | None = None) -> None:
    # Piped output (logs, CI) gets a fixed width wide enough not to wrap the tables.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    for table in tables:
        console.print(table)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dict__"):
        return vars(value)
    return str(value)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_utilisation(series: dict[str, tuple], path: Path, title: str) -> bool:
    """series: method -> (times_s, utilisation). Returns False if matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    styles = {"ideal": dict(color="black", linestyle=":", linewidth=2.5, zorder=1)}
    for method, (t, u) in series.items():
        style = styles.get(method, dict(linewidth=1.4, zorder=2))
        ax.plot(t, u, label=METHOD_LABELS.get(method, method), **style)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("busy fraction of slots")
    ax.set_ylim(0, 1.1)
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=len(series), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_tail_sweep(rows: list[dict], path: Path, paper: dict[str, float], title: str) -> bool:
    """Speedups against sigma; `paper` maps a reading to its calibrated sigma."""
    plt = _pyplot()
    if plt is None:
        return False
    sigma = [r["sigma"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = {
        "spo_vs_grpo_sync": "long run: SPO / GRPO sync (episodes/s)",
        "spo_vs_grpo_group": "long run: SPO / GRPO group-gated (episodes/s)",
    }
    for key, label in labels.items():
        ax.plot(sigma, [r[key] for r in rows], marker="o", label=label)
    for reading, s in paper.items():
        ax.plot(sigma, [r[f"paper_{reading}"] for r in rows], linestyle="--", marker=".",
                label=f"paper setting, {reading} (calibrated sigma {s:.2f})")
    ax.axhline(486 / 112, color="grey", linewidth=0.8, linestyle=":")
    ax.text(sigma[-1], 486 / 112, "paper: 4.35x ", ha="right", va="top", color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("log-normal sigma of episode duration")
    ax.set_ylabel("speedup of SPO (x)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def json_line(payload: dict) -> str:
    """The benchmark's last line: compact JSON, floats rounded for reading."""
    def rounded(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rounded(x) for x in v]
        return v

    return json.dumps(rounded(payload), separators=(",", ":"))
