"""`spo-agents sft`: the supervised warm start on oracle tool-use demonstrations.

The first step of the documented CPU pipeline (sft -> train -> eval); see docs/training.md.
Writes a model folder that `spo-agents train --set model=<folder>` starts from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spo_agents.cli.checks import check_env, check_file, check_model_spec, positive_int
from spo_agents.cli.errors import UserError, user_error_message
from spo_agents.cli.train_cmd import parse_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    sft = subparsers.add_parser("sft", help="supervised warm start on oracle demonstrations (train split only)")
    sft.add_argument("--config", default=None, help="YAML file with SFTConfig fields (see docs/training.md)")
    sft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a field, e.g. --set steps=50 (repeatable)")
    sft.add_argument("--model", default=None, help="base model spec (default: tiny)")
    sft.add_argument("--env", default=None, help="environment id (needs oracle_action())")
    sft.add_argument("--steps", type=positive_int, default=None, help="optimiser steps")
    sft.add_argument("--output-dir", default=None, help="folder for the warm-started model")
    sft.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    sft.set_defaults(func=run_sft_command)


def load_sft_config(path: str | None, overrides: list[str]):
    """An SFTConfig from an optional YAML file plus `key=value` overrides (values parsed as YAML)."""
    import yaml

    from spo_agents.trainer.config import _set_dotted
    from spo_agents.trainer.sft import SFTConfig

    pairs = parse_overrides(overrides)  # malformed overrides are named before the file is read
    data = {}
    if path:
        check_file(path, "config file")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config {path}: {user_error_message(exc)}") from exc
        if not isinstance(data, dict):
            raise UserError(f"config {path} must hold a mapping of fields, not a {type(data).__name__}")
    # start from the defaults, so `--set env_kwargs.num_tasks=N` adds to the default env_kwargs
    # instead of replacing them (a file's fields still replace the defaults whole)
    data = {**SFTConfig().model_dump(mode="json"), **data}
    for key, value in pairs:
        try:
            _set_dotted(data, key, value)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    return SFTConfig.model_validate(data)


def run_sft_command(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    for flag, key in ((args.model, "model"), (args.env, "env_id"), (args.steps, "steps"),
                      (args.output_dir, "output_dir")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_sft_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    check_model_spec(config.model)
    check_env(config.env_id, config.env_kwargs, ("train",))
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise UserError(f"output folder {config.output_dir} is a file")
    from spo_agents.trainer.sft import run_sft

    summary = run_sft(config)
    summary.pop("config")
    print(json.dumps(summary))
    return 0
