"""The trainer's public API: what `spo-agents train` and `spo-agents eval` run, callable from a
user's script (`from spo_agents.trainer import train, evaluate`).

    summary = train("my_config.yaml", overrides=["steps=50"])
    result = evaluate("runs/my/checkpoints/step-000050", "spo/Calculator-v0", tasks=100)

Both check the environment (and its split) before any model loads and raise
`SetupError` (a ValueError) with a one-line reason when the configuration cannot work.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from spo_agents.trainer.checkpoint import load_weights
from spo_agents.trainer.config import TrainConfig, _set_dotted, load_config
from spo_agents.trainer.evaluate import evaluate as play_and_score
from spo_agents.trainer.lora import LoraSettings
from spo_agents.trainer.parts import (PolicyParts, SetupError, build_policy, resolve_env_id, state_dict_for_backend,
                                      task_ids)

__all__ = ["SetupError", "evaluate", "policy_for_checkpoint", "policy_for_model", "train"]


def _as_config(config: TrainConfig | str | Path | Mapping[str, Any] | None, overrides: Sequence[str]) -> TrainConfig:
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, overrides)
    data = config.model_dump(mode="json") if isinstance(config, TrainConfig) else copy.deepcopy(dict(config))
    for item in overrides:
        key, _, raw = item.partition("=")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return TrainConfig.model_validate(data)


def train(config: TrainConfig | str | Path | Mapping[str, Any] | None = None, *, overrides: Sequence[str] = (),
          resume: bool = False, show_progress: bool = False, plots: bool = True) -> dict[str, Any]:
    """Run one training run and return its summary (what `spo-agents train` prints).

    `config` is a TrainConfig, a dict of its fields, a YAML file, a preset name or None (the
    defaults); `overrides` are `key.sub=value` strings as with `--set`. The run folder is
    `output_dir`; `resume=True` continues from its latest checkpoint.
    """
    from spo_agents.trainer.loop import Trainer  # the loop pulls in the whole runtime

    config = _as_config(config, overrides)
    summary = asyncio.run(Trainer(config, resume=resume, show_progress=show_progress).run())
    if plots:
        from spo_agents.trainer.plots import plot_run

        plot_run(config.output_dir)
    return summary


def policy_for_checkpoint(path: str | Path, base_model: str | None = None) -> PolicyParts:
    """The policy of a run's checkpoint folder: its base model (from the run's config.yaml
    unless `base_model` is given), LoRA-wrapped as the run was, with the checkpoint's weights
    loaded (tied embeddings stay tied) and pushed, adapters merged, to the backend."""
    path = Path(path)
    run_config_path = path.parent.parent / "config.yaml"
    run_config = yaml.safe_load(run_config_path.read_text()) if run_config_path.is_file() else {}
    base = base_model or run_config.get("model")
    if not base:
        raise SetupError(f"{path} is a checkpoint without its run's config.yaml; give its base model")
    lora = run_config.get("lora")
    policy = build_policy(base, lora=LoraSettings(**lora) if lora else None)
    load_weights(path, policy.train_model)
    policy.backend.update_weights(state_dict_for_backend(policy.train_model), version=1)
    return policy


def policy_for_model(spec: str, base_model: str | None = None) -> PolicyParts:
    """A model spec (preset, folder, .gguf, Hub id) or a run's checkpoint folder."""
    path = Path(spec)
    # a run checkpoint has model.safetensors and no config.json (a model folder, e.g. sft's, has both)
    if (path / "model.safetensors").exists() and not (path / "config.json").exists():
        return policy_for_checkpoint(path, base_model)
    return build_policy(spec)


def evaluate(model: str, env_id: str, *, env_kwargs: Mapping[str, Any] | None = None, split: str = "heldout",
             tasks: int = 64, k: int = 1, temperature: float = 0.0, top_p: float = 1.0, slots: int = 16,
             base_model: str | None = None) -> dict[str, Any]:
    """pass@k, maj@k, avg@k (k = 1, 2, 4, ... up to `k`), accuracy and reward of `model` (a model
    spec or a checkpoint folder) on the first `tasks` task ids (sorted) of `split`."""
    if not 1 <= k <= 32:
        raise SetupError("k must be between 1 and 32")
    env_kwargs = dict(env_kwargs or {})
    env_id = resolve_env_id(env_id)
    try:
        ids = sorted(task_ids(env_id, env_kwargs, split))[:tasks]
    except (ValueError, KeyError) as exc:
        raise SetupError(f"{env_id} has no usable split {split!r}: {exc}") from None
    policy = policy_for_model(model, base_model)
    try:
        result = asyncio.run(play_and_score(policy.backend, policy.formatter, env_id, {**env_kwargs, "split": split},
                                            ids, samples_per_task=k, temperature=temperature, top_p=top_p,
                                            num_slots=slots, ks=[n for n in (1, 2, 4, 8, 16, 32) if n <= k]))
    finally:
        policy.backend.close()
    return {"env": env_id, "env_kwargs": env_kwargs, "model": model, "tasks": len(ids), "k": k,
            "first_task": ids[0] if ids else None, **result.metrics}
