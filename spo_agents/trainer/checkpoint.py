"""Atomic checkpoints: model (safetensors), optimiser, tracker, sampler, RNG, step, config.

Weights go through safetensors' `save_model` / `load_model`, which store a tensor shared by
several names once (tied input and output embeddings: SmolLM2, Qwen2.5/Qwen3 small models,
Llama-3.2) and tie it again on load; `save_file` on a raw `state_dict()` refuses them.

Every file is written to a temporary name and renamed into place; the folder `step-N` is
assembled as `step-N.tmp` and renamed last, and `latest` (a text file naming the newest
complete checkpoint) is replaced atomically. A run killed at any point therefore resumes from
the newest complete checkpoint; finished episodes are in the episode log, appended (and
fsynced) before they are used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    torch_state: dict[str, Any]) -> Path:
    """Write checkpoint `step`; `trainer_state` is JSON-serialisable, `torch_state` is torch.save'd."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({**torch_state, "rng": rng_state()}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps(trainer_state))
    for handle in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(handle, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.exists() else None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load a checkpoint's `model.safetensors` into `model` (the same architecture, LoRA-wrapped
    or not, as the run that wrote it); shared tensors stay shared; any missing or unexpected
    name is an error rather than a silently half-loaded model."""
    device = next(model.parameters()).device
    load_model(model, str(Path(path) / "model.safetensors"), strict=True, device=str(device))


def load_checkpoint(path: Path, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into `model`; return (trainer_state, torch_state) with RNG restored."""
    load_weights(path, model)
    torch_state = torch.load(path / "trainer.pt", weights_only=False)
    set_rng_state(torch_state.pop("rng"))
    return json.loads((path / "state.json").read_text()), torch_state
