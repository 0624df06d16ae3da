"""`spo-agents eval`: a checkpoint or a base model on held-out tasks of any environment."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from spo_agents.trainer.checkpoint import load_weights
from spo_agents.trainer.evaluate import evaluate
from spo_agents.trainer.lora import LoraSettings
from spo_agents.trainer.parts import PolicyParts, build_policy, resolve_env_id, state_dict_for_backend, task_ids


def policy_for_checkpoint(path: Path, base_model: str | None = None) -> PolicyParts:
    """The policy of a run's checkpoint folder: its base model (from the run's config.yaml
    unless `base_model` is given), LoRA-wrapped as the run was, with the checkpoint's weights
    loaded (tied embeddings stay tied) and pushed, adapters merged, to the backend."""
    run_config = yaml.safe_load((path.parent.parent / "config.yaml").read_text()) \
        if (path.parent.parent / "config.yaml").is_file() else {}
    base = base_model or run_config.get("model")
    if not base:
        raise SystemExit(f"{path} is a checkpoint without its run's config.yaml; pass --base-model")
    lora = run_config.get("lora")
    policy = build_policy(base, lora=LoraSettings(**lora) if lora else None)
    load_weights(path, policy.train_model)
    policy.backend.update_weights(state_dict_for_backend(policy.train_model), version=1)
    return policy


def _policy_for(spec: str, base_model: str | None) -> PolicyParts:
    """A model spec, or a checkpoint folder holding model.safetensors (base model from its run)."""
    path = Path(spec)
    # a run checkpoint has model.safetensors and no config.json (a model folder, e.g. sft's, has both)
    if (path / "model.safetensors").exists() and not (path / "config.json").exists():
        return policy_for_checkpoint(path, base_model)
    return build_policy(spec)


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.k <= 32:
        raise SystemExit("k must be between 1 and 32")
    env_kwargs = {}
    for item in getattr(args, "env_arg", None) or []:
        key, _, raw = item.partition("=")
        env_kwargs[key.strip()] = yaml.safe_load(raw)
    try:  # the environment and its split are checked before the model loads
        env_id = resolve_env_id(args.env)
        ids = sorted(task_ids(env_id, env_kwargs, args.split))[: args.tasks]
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"spo-agents eval: {exc}") from None
    policy = _policy_for(args.model, args.base_model)
    try:
        result = asyncio.run(evaluate(policy.backend, policy.formatter, env_id, {**env_kwargs, "split": args.split}, ids,
                                      samples_per_task=args.k, temperature=args.temperature, top_p=args.top_p,
                                      num_slots=args.slots, ks=[k for k in (1, 2, 4, 8, 16, 32) if k <= args.k]))
    finally:
        policy.backend.close()
    table = Table(title=f"eval {args.env} ({len(ids)} tasks x {args.k} samples, T={args.temperature})")
    table.add_column("metric")
    table.add_column("value")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console(stderr=True).print(table)
    payload = {"env": args.env, "env_kwargs": env_kwargs, "model": args.model, "tasks": len(ids), "k": args.k,
               "first_task": ids[0] if ids else None, **result.metrics}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    return payload
