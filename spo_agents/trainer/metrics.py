"""Metrics sinks: JSONL (the record), TensorBoard (when installed), and a live progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, show_progress: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.started = time.monotonic()
        self._handle = self.path.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self.tb = None
        self.bar = tqdm(total=total_steps, desc="train", unit="step", disable=not show_progress, dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        record = {"kind": kind, "step": step, "wall_s": round(time.monotonic() - self.started, 3), **metrics}
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
        if kind == "train":
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{metrics.get('reward/mean', 0):.2f}",
                                 acc=f"{metrics.get('eval/accuracy', self._last_acc):.2f}",
                                 eps_s=f"{metrics.get('rollout/episodes_per_s', 0):.1f}")
        elif "eval/accuracy" in metrics:
            self._last_acc = metrics["eval/accuracy"]

    _last_acc = 0.0

    def close(self) -> None:
        self.bar.close()
        self._handle.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
