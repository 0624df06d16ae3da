"""Checks the commands run before they do any work: flag values, model specs, environments, folders.

Why up front: a run that fails after it created (or rewrote) its run folder, or after minutes of
warm start, costs the user more than the mistake did. Each check raises `UserError` with one line
that names the bad value and what would be accepted; nothing here writes to disk.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Callable

from spo_agents.cli.errors import UserError

__all__ = [
    "positive_int", "non_negative_int", "positive_float", "non_negative_float", "unit_interval", "port_number",
    "check_model_spec", "check_env", "check_output_dir", "check_file", "check_parent_folder", "check_device",
    "check_run_config",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # namespace/name, as on the Hugging Face Hub


# ---------------------------------------------------------------------------- argparse types
def _typed(convert: Callable[[str], Any], ok: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    parse.__name__ = wanted  # argparse names the type in its messages
    return parse


positive_int = _typed(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = _typed(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _typed(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
non_negative_float = _typed(float, lambda v: v >= 0 and v != float("inf"), "a finite number >= 0")
unit_interval = _typed(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
port_number = _typed(int, lambda v: 0 <= v <= 65535, "a port number in 0..65535")


# ---------------------------------------------------------------------------- models
def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_model_spec(spec: str, *, what: str = "model") -> None:
    """`spec` names something `load_model` can load: a preset, a .gguf file, a model folder or run
    checkpoint, or a Hub id (offline: one in the local cache)."""
    from spo_agents.trainer.config import MODEL_PRESETS

    if spec in MODEL_PRESETS:
        if spec == "smollm2-135m":
            from spo_agents.backends.models import smollm2_gguf_path

            try:
                smollm2_gguf_path()
            except FileNotFoundError as exc:
                raise UserError(str(exc)) from exc
        return
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"{what}: no such GGUF model file: {spec}")
        return
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {spec!r} is a file; expected a preset {list(MODEL_PRESETS)}, a .gguf file, "
                            "a model folder or a run checkpoint")
        if not ((path / "config.json").is_file() or (path / "model.safetensors").is_file()):
            raise UserError(f"{what} folder {spec!r} holds neither config.json nor model.safetensors: not a model "
                            "folder or checkpoint")
        return
    if _HUB_ID.match(spec):
        if _in_hub_cache(spec) or not _hub_offline():
            return  # cached, or downloadable: transformers reports what goes wrong from here
        raise UserError(f"{what}: no such model folder or checkpoint: {spec!r} (and no Hugging Face model of that "
                        "name in the local cache; downloads are off: HF_HUB_OFFLINE=1)")
    raise UserError(f"{what}: no such model folder or checkpoint: {spec!r}")


def check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown torch device {device!r} (use cpu or cuda)") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but torch sees no CUDA GPU")


# ---------------------------------------------------------------------------- environments
def check_env(env_id: str, env_kwargs: dict[str, Any], splits: tuple[str, ...] = ()) -> str:
    """The environment can be made with `env_kwargs` (its default split) and has each of `splits`.

    Returns the id to make it with (`resolve_env_id`: 'path/to/file.py:EnvId' becomes importable)."""
    import gymnasium

    from spo_agents.trainer.parts import SetupError, resolve_env_id

    try:
        env_id = resolve_env_id(env_id)  # names the accepted forms when the id is unknown
    except SetupError as exc:
        raise UserError(str(exc)) from exc
    try:
        env = gymnasium.make(env_id, **env_kwargs)
    except Exception as exc:  # the env's constructor rejected the keyword arguments the user gave
        raise UserError(f"environment {env_id} cannot be made with {env_kwargs}: {type(exc).__name__}: {exc}") from exc
    try:
        available = getattr(env.unwrapped, "splits", None)
        for split in splits:
            if available is None or split not in available:
                known = sorted(available) if available is not None else "none"
                raise UserError(f"environment {env_id} has no task split {split!r} (splits: {known})")
    finally:
        env.close()
    return env_id


# ---------------------------------------------------------------------------- files and folders
def check_file(path: str | Path, what: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"no such {what}: {path}")


def check_parent_folder(path: str | Path, what: str) -> None:
    """`path` can be written: its folder exists and it is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {what} {path}: no folder {path.parent}")


def check_output_dir(path: str | Path, *, resume: bool) -> None:
    """A new run needs an empty (or absent) folder; `--resume` needs a run folder with a checkpoint."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder {path} is a file")
    if resume:
        if not path.is_dir():
            raise UserError(f"--resume: no run folder at {path}")
        if not (path / "checkpoints" / "latest").is_file():
            raise UserError(f"--resume: {path} holds no checkpoint to resume from; start a new run instead "
                            "(an empty or new --output-dir)")
        return
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"output folder {path} is not empty; pass --resume to continue the run in it, or choose "
                        "another --output-dir")


def check_run_config(config: Any, *, resume: bool) -> None:
    """Everything a training config names, checked before the run folder is touched."""
    check_device(config.device)
    if config.warm_start is not None and not resume:
        check_model_spec(config.warm_start.model, what="warm_start.model")
        folder = Path(config.model)
        if folder.is_dir() and any(folder.iterdir()) and not (folder / "sft.json").is_file():
            raise UserError(f"model folder {folder} exists but was not written by spo-agents sft (no sft.json), so "
                            "warm_start will not overwrite it: set warm_start to null or model to another folder")
        check_env(config.warm_start.env_id, config.warm_start.env_kwargs, ("train",))
    else:
        check_model_spec(config.model)
    env_id = check_env(config.env_id, config.env_kwargs, ("train",))
    if config.eval.enabled:
        from spo_agents.trainer.parts import SetupError, eval_task_ids

        try:  # the trainer's own check, with its advice on eval.split
            eval_task_ids(config.model_copy(update={"env_id": env_id}))
        except SetupError as exc:
            raise UserError(str(exc)) from exc
    if config.value_table:
        check_file(config.value_table, "value table (value_table)")
