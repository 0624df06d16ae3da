"""`spo-agents train`, `spo-agents eval` and `spo-agents estimate-values`.

Each command checks everything it was given (config, environment, model spec, folders) before it
touches the disk or loads a model; a mistake is one line and exit code 2 (spo_agents.cli.errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from spo_agents.cli.checks import (
    check_env,
    check_model_spec,
    check_output_dir,
    check_parent_folder,
    check_run_config,
    non_negative_float,
    positive_int,
    unit_interval,
)
from spo_agents.cli.errors import UserError, user_error_message


def _config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    parser.add_argument("--config", default=default_config,
                        help="YAML config file or preset name (cpu-default, grpo-baseline, toolmath-gpu; see configs/)"
                        + (f"; default: {default_config}" if default_config else ""))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set rollout.num_slots=16 (repeatable)")
    parser.add_argument("--algo", choices=["spo", "grpo"], default=None, help="switch the algorithm")
    parser.add_argument("--output-dir", default=None, help="run folder")


def parse_overrides(items: list[str]) -> list[tuple[str, object]]:
    """`key.sub=value` pairs, values parsed as YAML; a malformed one is a UserError."""
    import yaml

    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise UserError(f"override {item!r} must look like key.sub=value")
        try:
            pairs.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    return pairs


def _load(args: argparse.Namespace):
    import pydantic
    import yaml

    from spo_agents.trainer.config import load_config

    overrides = list(args.set)
    if args.algo:
        overrides.append(f"algo={args.algo}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    parse_overrides(overrides)  # a malformed override is named before the config file is read
    try:
        return load_config(args.config, overrides)
    except pydantic.ValidationError:
        raise  # reported field by field (spo_agents.cli.errors)
    except (FileNotFoundError, ValueError) as exc:  # no such file or preset; a config that is no mapping
        raise UserError(str(exc)) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"config {args.config}: {user_error_message(exc)}") from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train a policy with SPO (default) or GRPO")
    _config_args(train, default_config="cpu-default")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("--help-config", action="store_true", help="print every config field (dotted name, type, "
                       "default, description) and exit")
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser("eval", help="pass@k, maj@k, avg@k on held-out tasks")
    ev.add_argument("--env", default=None, help="environment id (default: a checkpoint's run's env_id and "
                    "env_kwargs, which --env-arg then overrides; otherwise spo/Calculator-v0)")
    ev.add_argument("--model", default="tiny", help="model spec or a run's checkpoint folder (model.safetensors)")
    ev.add_argument("--base-model", default=None, help="model spec of a checkpoint's base (default: from its run)")
    ev.add_argument("--tasks", type=positive_int, default=64, help="held-out tasks evaluated (the first N)")
    ev.add_argument("-k", type=positive_int, default=8, help="samples per task (k up to 32)")
    ev.add_argument("--temperature", type=non_negative_float, default=0.6)
    ev.add_argument("--top-p", type=unit_interval, default=0.95)
    ev.add_argument("--slots", type=positive_int, default=16)
    ev.add_argument("--split", default="heldout")
    ev.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="environment keyword argument, e.g. --env-arg difficulty=1 (repeatable)")
    ev.add_argument("--json-out", default=None, help="also write the JSON result here")
    ev.set_defaults(func=run_eval)

    est = subparsers.add_parser("estimate-values", help="offline SPO value estimates (n0 episodes per task)")
    _config_args(est)
    est.add_argument("--n0", type=positive_int, default=8, help="episodes per task")
    est.add_argument("--out", required=True, help="JSONL table (appended; resumable)")
    est.add_argument("--max-tasks", type=positive_int, default=None, help="only the first N training tasks")
    est.set_defaults(func=run_estimate_values)


def config_fields(model: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) of every field of a pydantic config, nested
    configs expanded, so that `--help-config` documents every key `--set` accepts."""
    import pydantic

    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = [t for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
                  if isinstance(t, type) and issubclass(t, pydantic.BaseModel)]
        if nested:
            optional = " | null" if type(None) in getattr(field.annotation, "__args__", ()) else ""
            doc = (nested[0].__doc__ or "").strip().splitlines()
            rows.append((key, nested[0].__name__ + optional, "", field.description or (doc[0] if doc else "")))
            rows += config_fields(nested[0], key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        type_name = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        rows.append((key, type_name, json.dumps(default, default=str), field.description or ""))
    return rows


def print_config_help() -> None:
    from spo_agents.trainer.config import TrainConfig

    for key, type_name, default, description in config_fields(TrainConfig):
        print(f"{key}  ({type_name}{', default ' + default if default else ''})\n    {description}")


def run_train(args: argparse.Namespace) -> int:
    if args.help_config:
        print_config_help()
        return 0
    config = _load(args)
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    if config.learner_parallel.value != "none":
        from spo_agents.distributed.learner_group import follower_rank, run_follower

        if follower_rank() > 0:  # torchrun's other ranks: the sharded learner's followers
            run_follower(config)
            return 0
    # rank 0 (or the only process) checks: followers start after it may have made the run folder
    check_output_dir(config.output_dir, resume=args.resume)
    check_run_config(config, resume=args.resume)
    from spo_agents.trainer import SetupError, train

    try:
        summary = train(config, resume=args.resume, show_progress=not args.no_progress)
    except SetupError as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(summary))
    return 0


def _run_env(model: str) -> tuple[str, dict]:
    """The env_id and env_kwargs a checkpoint's run trained on (its config.yaml), so that `eval`
    of a checkpoint scores the tasks the run's summary did; spo/Calculator-v0 for anything else."""
    run_config = Path(model).parent.parent / "config.yaml"
    if (Path(model) / "model.safetensors").is_file() and run_config.is_file():
        import yaml

        saved = yaml.safe_load(run_config.read_text()) or {}
        return saved.get("env_id", "spo/Calculator-v0"), dict(saved.get("env_kwargs") or {})
    return "spo/Calculator-v0", {}


def _check_eval_model(model: str, base_model: str | None) -> None:
    """A model spec, or a run checkpoint (model.safetensors, no config.json) with a known base."""
    path = Path(model)
    if (path / "model.safetensors").is_file() and not (path / "config.json").is_file():
        run_config = path.parent.parent / "config.yaml"
        if base_model is None and not run_config.is_file():
            raise UserError(f"checkpoint {model} is not inside a run folder (no {run_config}); name its base model "
                            "with --base-model")
        if base_model is not None:
            check_model_spec(base_model, what="--base-model")
        return
    check_model_spec(model, what="--model")


def run_eval(args: argparse.Namespace) -> int:
    if args.k > 32:
        raise UserError(f"-k {args.k}: at most 32 samples per task")
    env_kwargs = dict(parse_overrides(args.env_arg))
    if any("." in key for key in env_kwargs):
        raise UserError(f"--env-arg takes KEY=VALUE with a plain key, got {sorted(env_kwargs)}")
    if args.env is None:
        args.env, run_kwargs = _run_env(args.model)
        env_kwargs = {**run_kwargs, **env_kwargs}
    check_env(args.env, env_kwargs, (args.split,))
    _check_eval_model(args.model, args.base_model)
    if args.json_out:
        check_parent_folder(args.json_out, "--json-out")
    from spo_agents.cli.eval_cmd import evaluate_and_report

    print(json.dumps(evaluate_and_report(args, env_kwargs)))
    return 0


def run_estimate_values(args: argparse.Namespace) -> int:
    config = _load(args)
    check_parent_folder(args.out, "--out")
    check_model_spec(config.model)
    check_env(config.env_id, config.env_kwargs, ("train",))
    from spo_agents.trainer.estimate import estimate_values

    written = asyncio.run(estimate_values(config, args.out, args.n0, args.max_tasks))
    print(json.dumps({"tasks_estimated": written, "out": args.out}))
    return 0
