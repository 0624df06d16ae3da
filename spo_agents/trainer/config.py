"""Training configuration: typed pydantic models, loaded from YAML with command-line overrides.

Field descriptions are the documentation (`spo-agents train --help-config` prints them).
Overrides use dotted paths: `--set rollout.num_slots=16 --set optim.lr=1e-5`.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from spo_agents.learner.config import AdvantageConfig, LossConfig, SamplerConfig, TrackerConfig
from spo_agents.learner.update import OptimConfig
from spo_agents.rollout.config import RolloutConfig
from spo_agents.trainer.lora import LoraSettings
from spo_agents.trainer.threads import ThreadsConfig

API_KEY_ENV = "SPO_AGENTS_API_KEY"  # the generation servers' API key when generation_api_key is not set
MODEL_PRESETS = ("tiny", "smollm2-135m")  # as spo_agents.backends.models.PRESETS (kept torch-free here)


class Algo(str, Enum):
    SPO = "spo"
    GRPO = "grpo"


class SPOUpdate(str, Enum):
    COLLECT = "collect"  # collect B finished episodes, then one batched step
    ACCUMULATE = "accumulate"  # gradient of each episode on arrival; optimiser step after B


class GRPOMode(str, Enum):
    GROUP = "group"  # group-gated streaming: step as soon as B/G whole groups are done
    BATCH = "batch"  # synchronous: generate the batch, wait, step, repeat


class StalenessPolicy(str, Enum):
    DROP = "drop"
    DOWNWEIGHT = "downweight"


class Generation(str, Enum):
    LOCAL = "local"  # a batched transformers backend in this process
    RAY = "ray"  # transformers replicas as Ray actors (spo_agents.distributed)
    OPENAI = "openai"  # an OpenAI-compatible server (`spo-agents serve`, vLLM, SGLang) over httpx


class GenerationServer(str, Enum):
    """What serves `generation_url`: decides the weight push and the completions dialect."""

    SPO = "spo"  # `spo-agents serve`: POST /v1/load_weights
    VLLM = "vllm"  # vLLM in dev mode with our worker extension (backends/server_weights.py)
    SGLANG = "sglang"  # SGLang: /pause_generation, /update_weights_from_disk, /continue_generation


class LearnerParallel(str, Enum):
    NONE = "none"  # one learner process
    FSDP = "fsdp"  # FSDP2-sharded over the ranks of torchrun (spo_agents.distributed.learner_group)


def check_device(device: str) -> str:
    """The devices the learner supports (bf16 autocast on CUDA, fp32 on the CPU)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError("unknown torch device: device must be cpu, cuda or cuda:N")
    return device


class EvalConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    every_steps: int = pydantic.Field(0, ge=0, description="evaluate on held-out tasks every N steps (0 = only "
                                      "before and after training)")
    num_tasks: int = pydantic.Field(64, ge=1, description="held-out tasks per evaluation (fixed, seeded)")
    temperature: float = pydantic.Field(0.0, ge=0, description="sampling temperature at evaluation (0 = greedy)")
    split: str = pydantic.Field("heldout", description="the env split evaluated")
    enabled: bool = pydantic.Field(True, description="run evaluations at all")


class DirectAnswers(pydantic.BaseModel):
    """Demonstrations that answer at once, without a tool call, on a share of the tasks.

    Models a demonstrator (a person, a chat model) that does "easy-looking" problems in its
    head: the student imitates the habit but cannot do the arithmetic, so those replies score 0
    and RL has to learn from the reward that calling the tool pays off on them.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    fraction: float = pydantic.Field(0.0, ge=0, le=1, description="share of the matching tasks (scope task) or "
                                     "tool calls (scope call) answered directly")
    where: dict[str, Any] = pydantic.Field(default_factory=dict, description="only tasks whose metadata has "
                                           "these values, e.g. {template: product} (empty: every task)")
    scope: Literal["task", "call"] = pydantic.Field(
        "task", description="task: the whole task is answered at once; call: each tool call is skipped "
        "independently and the step's reply given in its place (multi-turn environments)")
    pattern: str | None = pydantic.Field(None, description="scope call: only tool calls whose text matches "
                                         "this regex, e.g. ' [+-] ' (default: every call)")

    @pydantic.model_validator(mode="after")
    def _check_pattern(self) -> "DirectAnswers":
        if self.pattern is None:
            return self
        if self.scope != "call":
            raise ValueError("direct_answers.pattern selects tool calls: it needs scope: call")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"direct_answers.pattern is not a valid regex: {exc}") from None
        return self


class SFTConfig(pydantic.BaseModel):
    """`spo-agents sft`: the supervised warm start on oracle demonstrations (trainer/sft.py)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    model: str = pydantic.Field("tiny", description="base model spec (tiny | smollm2-135m | folder | .gguf)")
    tiny_hidden_size: int = pydantic.Field(128, ge=16, description="hidden size when model is tiny")
    tiny_layers: int = pydantic.Field(2, ge=1, description="layers when model is tiny")
    tiny_digit_tokens: bool = pydantic.Field(True, description="tiny: split every digit into its own token "
                                             "(see build_digit_tokenizer)")
    tiny_tokenizer_env_episodes: int = pydantic.Field(
        0, ge=0, description="when model is tiny: add the text of this many oracle episodes (train split) to the "
        "tokenizer's corpus, so the env's words are whole tokens (0: the generic corpus only)")
    chat_template: str | None = pydantic.Field(
        None, description="bundled chat template for the demonstrations and the saved model; default: "
        "chatml_compact for tiny (no system turn or tool schemas), the model's own otherwise")
    env_id: str = pydantic.Field("spo/Calculator-v0", description="environment with oracle_action()")
    env_kwargs: dict[str, Any] = pydantic.Field(default_factory=lambda: {"difficulty": 1, "num_tasks": 10000},
                                                description="keyword arguments of the env")
    num_demos: int = pydantic.Field(8000, ge=1, description="oracle episodes (distinct train tasks)")
    direct_answers: DirectAnswers | None = pydantic.Field(
        None, description="a demonstrator that sometimes answers without the tool (see DirectAnswers)")
    steps: int = pydantic.Field(1200, ge=1, description="optimiser steps")
    batch_size: int = pydantic.Field(16, ge=1, description="demonstrations per step")
    lr: float = pydantic.Field(3e-3, gt=0, description="AdamW learning rate (cosine decay to 10%)")
    weight_decay: float = pydantic.Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = pydantic.Field(1.0, gt=0, description="max global gradient norm")
    microbatch_tokens: int = pydantic.Field(1024, ge=16, description="token budget of one micro-batch (padded; "
                                            "rows are grouped by length, so a small budget pads less)")
    device: str = pydantic.Field("cpu", description="cpu | cuda")
    seed: int = pydantic.Field(0, description="seed of the demonstrations, model and shuffling")
    output_dir: str = pydantic.Field("runs/sft", description="folder for the warm-started model")

    @pydantic.field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)

    @pydantic.model_validator(mode="after")
    def _check_tokenizer_corpus(self) -> "SFTConfig":
        if self.tiny_tokenizer_env_episodes and not self.tiny_digit_tokens:
            raise ValueError("tiny_tokenizer_env_episodes trains the tiny model's digit tokenizer: it needs "
                             "tiny_digit_tokens: true")
        return self


class TrainConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    algo: Algo = pydantic.Field(Algo.SPO, description="spo | grpo")
    model: str = pydantic.Field("tiny", description="model spec: tiny | smollm2-135m | path | hub id | .gguf file")
    device: str = pydantic.Field("cpu", description="cpu | cuda")
    generation: Generation = pydantic.Field(Generation.LOCAL, description="where episodes are generated: local | "
                                            "ray | openai")
    generation_workers: int = pydantic.Field(1, ge=1, description="ray: generation replicas")
    generation_url: str | list[str] | None = pydantic.Field(
        None, description="openai: base URL of the server; ray: a list of server URLs makes one Ray actor per server "
        "(an HTTP client of it) instead of transformers replicas")
    generation_server: GenerationServer = pydantic.Field(
        GenerationServer.SPO, description="what serves generation_url: spo (`spo-agents serve`, /v1/load_weights) | "
        "vllm (VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls spo_agents.backends.vllm_worker.SPOWorkerExtension) "
        "| sglang; decides how weights are pushed and the request dialect (docs/backends.md)")
    generation_weights_dir: str | None = pydantic.Field(
        None, description="openai/ray servers: folder for the weight files pushed to the servers, which must read it "
        "at the same path (a shared filesystem for remote servers); default: a temporary folder on this machine")
    learner_parallel: LearnerParallel = pydantic.Field(
        LearnerParallel.NONE, description="none | fsdp: shard the policy, gradients and optimiser over the processes "
        "of `torchrun --nproc_per_node=N -m spo_agents train` (FSDP2; rank 0 runs the trainer)")
    generation_api_key: pydantic.SecretStr | None = pydantic.Field(
        None, exclude=True, description="openai/ray servers: the servers' API key (`spo-agents serve` needs it to "
        "load weights); default: the SPO_AGENTS_API_KEY environment variable; never written to config.yaml or printed")
    env_id: str = pydantic.Field("spo/Calculator-v0", description="environment: a registered id (built in or an "
                                 "installed plugin's), 'module:EnvId' or 'path/to/file.py:EnvId' (see "
                                 "docs/custom-environments.md)")
    env_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict, description="keyword arguments of the env")
    steps: int = pydantic.Field(20, ge=1, description="learner steps")
    train_tasks: int | None = pydantic.Field(
        None, ge=1, description="train on the first N tasks of the train split, revisited over the run "
        "(a fixed pool, as SPO's paper trains for epochs; estimate-values uses the same pool); null: all")
    batch_size: int = pydantic.Field(16, ge=1, description="episodes per learner step (B)")
    group_size: int = pydantic.Field(4, ge=1, description="GRPO group size (G); B must be a multiple")
    grpo_mode: GRPOMode = pydantic.Field(GRPOMode.BATCH, description="GRPO: batch (synchronous) | group (gated)")
    spo_update: SPOUpdate = pydantic.Field(SPOUpdate.COLLECT, description="SPO: collect (B then step) | "
                                           "accumulate (gradient on arrival, running advantage statistics)")
    max_staleness: int = pydantic.Field(4, ge=0, description="episodes more policy versions behind are dropped "
                                        "or down-weighted")
    staleness_policy: StalenessPolicy = pydantic.Field(StalenessPolicy.DROP, description="drop | downweight")
    staleness_decay: float = pydantic.Field(0.5, gt=0, le=1, description="downweight: weight = decay ** (versions "
                                            "over the bound)")
    value_table: str | None = pydantic.Field(None, description="offline value estimates (JSONL from "
                                             "`spo-agents estimate-values`) to initialise the tracker")
    lora: LoraSettings | None = pydantic.Field(None, description="train LoRA adapters (peft) instead of all weights")
    warm_start: SFTConfig | None = pydantic.Field(
        None, description="supervised warm start run into the `model` folder before training unless that folder "
        "already holds one made with these settings (the `spo-agents sft` settings; output_dir is `model`)")
    rollout: RolloutConfig = pydantic.Field(default_factory=RolloutConfig, description="rollout slots, sampling, "
                                            "token budgets, timeouts")
    tracker: TrackerConfig = pydantic.Field(default_factory=TrackerConfig, description="SPO's per-task value tracker")
    sampler: SamplerConfig = pydantic.Field(default_factory=SamplerConfig, description="SPO's prioritised task "
                                            "sampler")
    advantage: AdvantageConfig = pydantic.Field(default_factory=AdvantageConfig, description="advantage "
                                                "normalisation")
    loss: LossConfig = pydantic.Field(default_factory=LossConfig, description="PPO-clip policy loss")
    optim: OptimConfig = pydantic.Field(default_factory=OptimConfig, description="AdamW optimiser and "
                                        "learning-rate schedule")
    eval: EvalConfig = pydantic.Field(default_factory=EvalConfig, description="held-out evaluation before, "
                                      "during and after training")
    threads: ThreadsConfig = pydantic.Field(default_factory=ThreadsConfig, description="torch intra-op threads "
                                            "of the learner and the local decoder (trainer/threads.py)")
    output_dir: str = pydantic.Field("runs/latest", description="run folder")
    checkpoint_every: int = pydantic.Field(10, ge=1, description="checkpoint every N steps (and at the end)")
    transcripts: int = pydantic.Field(4, ge=0, description="sample episodes written as readable transcripts per "
                                      "evaluation")
    seed: int = pydantic.Field(0, description="global seed")

    @pydantic.model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.algo is Algo.GRPO and self.batch_size % self.group_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of group_size ({self.group_size})")
        self._check_generation()
        if self.learner_parallel is LearnerParallel.FSDP and (self.lora is not None or self.loss.kl_coef > 0):
            raise ValueError("learner_parallel: fsdp supports neither lora nor loss.kl_coef > 0 (the KL reference "
                             "would be a full model copy on every rank)")
        if self.warm_start is not None and (self.model in MODEL_PRESETS or self.model.endswith(".gguf")):
            raise ValueError(f"warm_start writes its model into the folder `model`, but model is {self.model!r}; "
                             "set model to a folder (e.g. runs/sft) or warm_start to null")
        return self

    @pydantic.model_validator(mode="after")
    def _reject_settings_the_run_would_ignore(self) -> "TrainConfig":
        """Settings that no training code would read: an error, not silence (issue 16 item 12)."""
        rollout_defaults = RolloutConfig.model_fields
        for name, owner in (("mode", "algo and grpo_mode"), ("group_size", "group_size")):
            if getattr(self.rollout, name) != rollout_defaults[name].default:
                raise ValueError(f"rollout.{name} is set by the trainer from {owner}; remove it from the config")
        if self.warm_start is not None and self.warm_start.output_dir not in (
                SFTConfig.model_fields["output_dir"].default, self.model):
            raise ValueError(f"warm_start.output_dir ({self.warm_start.output_dir!r}) is ignored: the warm start is "
                             f"written into `model` ({self.model!r}); remove warm_start.output_dir")
        if self.generation_workers != 1 and self.generation is not Generation.RAY:
            raise ValueError("generation_workers counts Ray generation replicas; it needs generation: ray")
        if self.learner_parallel is LearnerParallel.FSDP and self.optim.share_prefix:
            raise ValueError("optim.share_prefix is off with learner_parallel: fsdp (FSDP2 frees the gathered "
                             "weights after each forward call, and ranks must make the same calls); remove it")
        return self

    @pydantic.field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)

    def generation_urls(self) -> list[str]:
        url = self.generation_url
        return [] if url is None else [url] if isinstance(url, str) else list(url)

    def _check_generation(self) -> None:
        urls, server_set = self.generation_urls(), self.generation_server is not GenerationServer.SPO
        if self.generation is Generation.LOCAL and (urls or server_set or self.generation_weights_dir):
            raise ValueError("generation_url, generation_server and generation_weights_dir are for generation: openai "
                             "or ray; generation is local")
        if self.generation is Generation.OPENAI and len(urls) != 1:
            raise ValueError(f"generation: openai needs exactly one generation_url (got {len(urls)}); for several "
                             "servers use generation: ray with a list of URLs")
        if self.generation is Generation.RAY and urls and self.generation_workers not in (1, len(urls)):
            raise ValueError(f"generation: ray with {len(urls)} generation_url(s) makes one replica per server; "
                             f"generation_workers ({self.generation_workers}) must be 1 or {len(urls)}")
        if self.generation is Generation.RAY and not urls and (server_set or self.generation_weights_dir):
            raise ValueError("generation_server and generation_weights_dir need generation_url (the servers)")

    def generation_client_options(self) -> dict[str, Any]:
        """Keyword arguments of OpenAICompatibleBackend for the servers at generation_url."""
        server = self.generation_server.value
        options: dict[str, Any] = {"server": server, "dialect": "sglang" if server == "sglang" else "vllm"}
        if self.generation_weights_dir:
            options["weights_dir"] = self.generation_weights_dir
        key = self.generation_api_key.get_secret_value() if self.generation_api_key else os.environ.get(API_KEY_ENV)
        if key:
            options["api_key"] = key
        return options


def _set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for depth, key in enumerate(keys[:-1], start=1):
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ValueError(f"override {path}: {'.'.join(keys[:depth])} holds a value ({data!r}), not a section")
    data[keys[-1]] = value


def preset_names() -> list[str]:
    """The configs shipped in spo_agents/configs/ (`cpu-default`, `grpo-baseline`, ...)."""
    folder = resources.files("spo_agents").joinpath("configs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_text(path_or_preset: str | Path) -> str:
    """The YAML of a config file, or of a shipped preset named without folder or suffix."""
    name = str(path_or_preset)
    if name in preset_names():
        return resources.files("spo_agents").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {name!r} and no preset of that name; presets: {preset_names()}")
    return path.read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A YAML file or preset name (or the defaults) plus `key.sub=value` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(config_text(path)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config {str(path)!r} must hold a mapping of fields, not a {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return TrainConfig.model_validate(data)


def dump_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
