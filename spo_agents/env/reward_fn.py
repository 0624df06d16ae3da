"""Train on a dataset of prompts with a Python reward function, without writing an environment.

For users coming from TRL's `GRPOTrainer(reward_funcs=..., train_dataset=...)`: the reward is a
plain function

    def my_reward(prompt: str, completion: str, **row) -> float

called once per episode with the prompt text, the model's reply (as every grader gets it: the
end-of-turn token removed, see docs/custom-environments.md) and the dataset row's other fields
(the answer field under its own name included). `RewardFnEnv` is a single-turn `ToolEnv`
without tools: one reply, one reward. It is registered as `reward/RewardFn-v0`, so a config needs
no code of its own beyond the reward function:

    env_id: reward/RewardFn-v0
    env_kwargs: {dataset: data/prompts.jsonl, reward: "my_rewards:exact_match"}

`reward` is `module:function` (importable) or `path/to/file.py:function`, resolved in every
process that makes the environment (so env processes and Ray actors find it too), or the
function itself when the env is made in this process. Datasets: JSONL/JSON-lines or Parquet files
and `datasets` folders saved with `save_to_disk`, with text or TRL conversational prompts
(`load_tasks`). The held-out split is `heldout_dataset` when given, else a stable hash-based
share (`heldout_fraction`) of the dataset.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Any, Callable

from spo_agents.env.base import ToolEnv
from spo_agents.env.tasks import Task, TaskSet, load_hf_dataset, load_tasks, split_tasks

RewardFn = Callable[..., float]

__all__ = ["RewardFn", "RewardFnEnv", "load_reward_fn", "load_dataset_tasks"]


def load_reward_fn(spec: str | RewardFn) -> RewardFn:
    """The function named by `module:function` or `path/to/file.py:function` (or `spec` itself)."""
    if callable(spec):
        return spec
    module_name, sep, attribute = str(spec).rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward {spec!r} must be 'module:function' or 'path/to/file.py:function'")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise ValueError(f"reward {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"spo_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"reward {spec!r}: cannot import {module_name!r} ({exc})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"reward {spec!r}: {module_name} has no function {attribute!r}")
    return function


def load_dataset_tasks(path: str | Path, **fields: Any) -> list[Task]:
    """Tasks of a JSONL/Parquet file or a `datasets.save_to_disk` folder (`load_tasks` fields)."""
    path = Path(path)
    if path.is_dir():
        return load_hf_dataset(str(path), **fields)
    if not path.is_file():
        raise ValueError(f"dataset {str(path)!r}: no such file or folder")
    return load_tasks(path, **fields)


class RewardFnEnv(ToolEnv):
    """One reply per prompt, scored by `reward(prompt, completion, **row)`."""

    def __init__(self, reward: str | RewardFn, dataset: str | Path | None = None, *,
                 tasks: list[Task] | None = None, heldout_dataset: str | Path | None = None,
                 heldout_fraction: float = 0.1, prompt_field: str = "prompt", answer_field: str = "answer",
                 id_field: str | None = "id", system_prompt: str | None = None, split: str = "train", **kwargs: Any):
        if (dataset is None) == (tasks is None):
            raise ValueError("RewardFnEnv needs exactly one of dataset= (a file or folder) and tasks=")
        fields = {"prompt_field": prompt_field, "answer_field": answer_field, "id_field": id_field}
        all_tasks = tasks if tasks is not None else load_dataset_tasks(dataset, **fields)
        if heldout_dataset is not None:
            splits = {"train": TaskSet(all_tasks), "heldout": TaskSet(load_dataset_tasks(heldout_dataset, **fields))}
        elif heldout_fraction > 0:
            splits = split_tasks(all_tasks, heldout_fraction)
        else:
            splits = {"train": TaskSet(all_tasks)}
        super().__init__(splits, tools=(), split=split, system_prompt=system_prompt, max_turns=1, **kwargs)
        self.reward_fn = load_reward_fn(reward)
        self.answer_field = answer_field

    def grade(self, final_reply: str, task: Task) -> float:
        row = {k: v for k, v in task.metadata.items() if k != "system_prompt"}
        row[self.answer_field] = task.answer
        value = float(self.reward_fn(task.prompt, final_reply, **row))
        if not math.isfinite(value):
            raise ValueError(f"the reward function returned {value}")
        return value
