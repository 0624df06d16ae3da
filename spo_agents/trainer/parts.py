"""Building the parts of a run from its config: model copies, backend, tasks, learner state.

Kept apart from the loop so that each piece is small and testable, and so that `eval` and
`estimate-values` reuse the same construction.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from spo_agents.backends.models import LoadedModel, load_model
from spo_agents.backends.omp import in_own_thread
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.chat import ChatFormatter
from spo_agents.env.registry import registered_ids
from spo_agents.trainer.lora import LoraSettings, merged_state_dict, wrap_with_lora


@dataclass
class PolicyParts:
    loaded: LoadedModel
    train_model: torch.nn.Module
    backend: Any  # the Backend protocol: TransformersBackend, RayGenerationBackend or OpenAICompatibleBackend
    formatter: ChatFormatter


def remote_backend(generation: str, model_spec: str, device: str, seed: int, workers: int,
                   url: str | list[str] | None, client_options: dict[str, Any] | None = None):
    """A generation backend outside this process (Ray replicas or OpenAI-compatible servers).

    `client_options` go to each OpenAICompatibleBackend (server kind, dialect, weights_dir)."""
    urls = [] if url is None else [url] if isinstance(url, str) else list(url)
    if generation == "ray":
        from spo_agents.distributed.generation import GenerationSpec, RayGenerationBackend

        if urls:  # one actor per server, each an HTTP client of it
            return RayGenerationBackend([GenerationSpec(kind="openai", base_url=u, model=None,
                                                        options=dict(client_options or {})) for u in urls])
        return RayGenerationBackend(GenerationSpec(kind="transformers", model=model_spec, device=device, seed=seed),
                                    num_workers=workers)
    if generation == "openai":
        from spo_agents.backends.openai_client import OpenAICompatibleBackend

        if len(urls) != 1:
            raise ValueError("generation: openai needs one generation_url")
        return OpenAICompatibleBackend(urls[0], **(client_options or {}))
    raise ValueError(f"unknown generation backend {generation!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_policy(model_spec: str, device: str = "cpu", seed: int = 0, max_batch_size: int = 64,
                 lora: LoraSettings | None = None, generation: str = "local", generation_workers: int = 1,
                 generation_url: str | list[str] | None = None,
                 generation_options: dict[str, Any] | None = None) -> PolicyParts:
    """The training copy of the model and an inference copy behind a batched backend.

    Two copies, because the backend decodes in its own thread while the optimiser changes the
    training weights; new weights reach the backend by `update_weights` between decode steps.
    """
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

    def load() -> tuple[Any, Any]:
        loaded = load_model(model_spec, device=device, seed=seed)
        if dtype is not torch.float32:
            loaded.model.to(dtype=torch.float32)  # master weights in fp32; the backend copy runs in bf16
        return loaded, copy.deepcopy(loaded.model).to(dtype=dtype) if generation == "local" else None

    # loading in a thread that ends leaves no OpenMP team behind in the caller's thread
    # (trainer/threads.py): on a CPU, the decoding thread's team is then the only one
    loaded, inference_model = in_own_thread(load)
    if generation == "local":
        backend = TransformersBackend(inference_model, loaded.tokenizer, max_batch_size=max_batch_size, seed=seed)
    else:
        backend = remote_backend(generation, model_spec, device, seed, generation_workers, generation_url,
                                 generation_options)
    formatter = ChatFormatter(loaded.tokenizer, loaded.tool_template)
    train_model = wrap_with_lora(loaded.model, lora) if lora is not None else loaded.model
    return PolicyParts(loaded, train_model, backend, formatter)


class SetupError(ValueError):
    """A run's configuration cannot work (unknown environment, missing split); reported in one
    line before anything expensive loads."""


ENV_ID_FORMS = ("an id registered by spo-agents (spo/...) or by an installed plugin (entry-point group "
                "spo_agents.envs), 'module:EnvId' (the module is imported first, so its gymnasium.register "
                "call registers EnvId; e.g. mypkg.envs:mypkg/MyEnv-v0) or 'path/to/file.py:EnvId'")


def resolve_env_id(env_id: str) -> str:
    """Check that `env_id` names an environment, before anything expensive (a model) loads.

    Returns the id to hand to `gymnasium.make` in every process: unchanged, except that
    'path/to/file.py:EnvId' becomes 'file:EnvId' with the file's folder put on `sys.path`
    (env processes the rollout engine spawns inherit `sys.path`). Raises ValueError naming the
    accepted forms (SetupError) when the id is not registered or its module cannot be imported.
    """
    import spo_agents  # noqa: F401  (registers built-in and plugin environments)

    module, sep, name = env_id.partition(":")
    if sep and module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise SetupError(f"env_id {env_id!r}: no file {path}")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        module, env_id = path.stem, f"{path.stem}:{name}"
    if sep:
        try:
            importlib.import_module(module)  # its gymnasium.register calls run
        except ImportError as exc:
            raise SetupError(f"env_id {env_id!r}: cannot import module {module!r} ({exc}). An env_id is "
                             f"{ENV_ID_FORMS}") from None
    try:
        gymnasium.spec(name if sep else env_id)
    except gymnasium.error.Error:
        close = difflib.get_close_matches(name if sep else env_id, sorted(gymnasium.registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SetupError(f"environment {env_id!r} is not registered{hint}. An env_id is {ENV_ID_FORMS}. "
                         f"Registered spo-agents ids: {', '.join(registered_ids())}") from None
    return env_id


def task_ids(env_id: str, env_kwargs: dict[str, Any], split: str) -> list[str]:
    """Task ids of one split of a registered environment (environments built on ToolEnv)."""
    import spo_agents  # noqa: F401  (registration)

    env = gymnasium.make(env_id, **{**env_kwargs, "split": split})
    try:
        splits = getattr(env.unwrapped, "splits", None)
        if splits is None or split not in splits:
            raise ValueError(f"{env_id} exposes no task split {split!r}; training needs task ids")
        return list(splits[split].ids)
    finally:
        env.close()


def train_task_ids(config: Any) -> list[str]:
    """The training pool of a TrainConfig: the train split, or its first `train_tasks` ids
    (a fixed pool revisited over the run, as SPO's paper trains for epochs over a fixed set)."""
    ids = task_ids(config.env_id, config.env_kwargs, "train")
    if config.train_tasks is None:
        return ids
    if config.train_tasks > len(ids):
        raise SetupError(f"train_tasks is {config.train_tasks} but {config.env_id} has only {len(ids)} train tasks "
                         "with these env_kwargs")
    return ids[: config.train_tasks]


def eval_task_ids(config: Any) -> list[str]:
    """The evaluation tasks of a TrainConfig (`eval.split`, first `eval.num_tasks` by id).

    An environment without that split is a configuration error, reported before the model
    loads; evaluating on training tasks instead would report memorisation as held-out accuracy,
    so it is never done silently."""
    split = config.eval.split
    try:
        ids = task_ids(config.env_id, config.env_kwargs, split)
    except (ValueError, KeyError) as exc:
        raise SetupError(f"evaluation needs the split {split!r} of {config.env_id}, which it cannot give ({exc}); "
                         "give the environment a held-out split, set eval.split to one it has (the training "
                         "split measures no generalisation), or set eval.enabled=false") from None
    if not ids:
        raise SetupError(f"the {split!r} split of {config.env_id} is empty; set eval.split or eval.enabled=false")
    return sorted(ids)[: config.eval.num_tasks]


def state_dict_for_backend(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights under the inference copy's names (LoRA adapters merged in)."""
    return merged_state_dict(model)
