"""Supervised warm start (`spo-agents sft`): imitate a scripted tool-using policy before RL.

Why: a random or generic small model almost never produces a well-formed tool call followed by a
boxed answer, so every episode scores 0 and policy-gradient RL has no signal to work with. A
short supervised phase on demonstrations from the environment's scripted policy
(`oracle_action()`) teaches the format; RL then improves what the warm start gets wrong.

How the demonstrations are built matters: they must be token-for-token what the rollout engine
would produce had the policy sampled the oracle's text, otherwise SFT teaches a different
sequence layout from the one RL trains on. So each demonstration is rendered with the same
`ChatFormatter` calls the engine makes: `initial_prompt_ids`, then per turn the encoded action
(plus the end-of-turn token when the action is a final reply, since that is how the engine's
completions stop) and `observation_ids(info["messages"], completion_ids)`. The loss is the
cross-entropy of the assistant (completion) tokens only; prompts and observations are masked.

Demonstrations come from the *train* split only; held-out tasks are never played here.
`direct_answers` replaces a share of them by the oracle's final reply given at once, without a
tool call: a demonstrator that does easy-looking problems in its head, a habit RL must unlearn.

The tiny model is trained with the compact chat template (no system turn or tool schemas,
which a model trained from scratch cannot read; see docs/architecture.md).

The output folder is a regular transformers model folder (config.json, model.safetensors,
tokenizer files whose chat template is the one the formatter used) plus `sft.json`, a marker
naming the base model spec and the run's settings. `load_model(folder)` therefore loads it
unchanged, so a training config starts from it with `model: <folder>`.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from transformers import DynamicCache

from spo_agents.backends.models import LoadedModel, build_tiny_model, build_tiny_tokenizer, load_model
from spo_agents.chat import ChatFormatter
from spo_agents.learner.shared_prefix import cache_argument
from spo_agents.learner.update import microbatches
from spo_agents.trainer.config import DirectAnswers, SFTConfig

SFT_MARKER = "sft.json"


@dataclass
class Demonstration:
    task_id: str
    token_ids: list[int]
    loss_mask: list[int]
    reward: float


def build_digit_tokenizer(vocab_size: int = 1024, seed: int = 0, extra_corpus: list[str] | None = None) -> Any:
    """The tiny preset's tokenizer (same corpus, special and added tokens, chat template), except
    that every digit is its own token.

    Why: with the preset's BPE, "520" in the problem text is the single token `Ġ520` while the
    same number inside a tool call is `5`,`20`; copying a number from the problem into the call
    then means learning a separate token-to-token mapping for every number. With digits split,
    copying is the same operation for every number, which a small model learns in minutes.

    `extra_corpus` (e.g. `env_text_corpus`) is added to the BPE training text, so the words of
    the environment's prompts and replies become few whole tokens instead of many fragments.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from spo_agents.backends.models import TINY_ADDED_TOKENS, TINY_SPECIAL_TOKENS, tiny_corpus
    from spo_agents.chat.formatter import load_template

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(TINY_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(itertools.chain(tiny_corpus(seed), extra_corpus or []), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TINY_ADDED_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=load_template("chatml_tools"))


def env_text_corpus(env_id: str, env_kwargs: dict[str, Any], num_episodes: int, seed: int = 0) -> list[str]:
    """The text of `num_episodes` oracle episodes on train tasks: prompts, actions, observations.

    Only the train split is played, so the tokenizer learns nothing about held-out tasks."""
    import spo_agents  # noqa: F401  (environment registration)

    env = gymnasium.make(env_id, **{**env_kwargs, "split": "train"})
    try:
        ids = sorted(env.unwrapped.splits["train"].ids)
        random.Random(seed).shuffle(ids)
        texts: list[str] = []
        for task_id in ids[:num_episodes]:
            observation, _ = env.reset(options={"task_id": task_id})
            texts.append(observation)
            while True:
                action = env.unwrapped.oracle_action()
                observation, _, terminated, truncated, _ = env.step(action)
                texts += [action, observation]
                if terminated or truncated:
                    break
    finally:
        env.close()
    return texts


def build_base(config: SFTConfig) -> LoadedModel:
    """The model to warm-start: `tiny` at the configured size, otherwise `load_model(spec)`."""
    if config.model == "tiny":
        corpus = env_text_corpus(config.env_id, config.env_kwargs, config.tiny_tokenizer_env_episodes, config.seed) \
            if config.tiny_tokenizer_env_episodes else None
        tokenizer = build_digit_tokenizer(seed=config.seed, extra_corpus=corpus) if config.tiny_digit_tokens \
            else build_tiny_tokenizer(seed=config.seed)
        model = build_tiny_model(tokenizer, seed=config.seed, hidden_size=config.tiny_hidden_size,
                                 num_layers=config.tiny_layers, initializer_range=0.02)
        return LoadedModel("tiny", model.to(config.device), tokenizer)
    return load_model(config.model, device=config.device, seed=config.seed)


def chat_template_for(config: SFTConfig, loaded: LoadedModel) -> str | None:
    """The configured template; a from-scratch tiny model gets the compact one (it cannot read a
    schema, so the ~500 schema and instruction tokens would only dilute its attention)."""
    if config.chat_template is not None:
        return config.chat_template
    return "chatml_compact" if config.model == "tiny" else loaded.tool_template


NextAction = Callable[[Any], str]  # the demonstrator's next turn, given the (wrapped) env


def oracle_demonstration(env: Any, formatter: ChatFormatter, task_id: str, direct: bool = False) -> Demonstration:
    """Play the env's scripted policy on one task; tokens exactly as the rollout engine lays them out.

    `direct=True` demonstrates only the oracle's final reply, as the first turn: the answer
    given at once, without a tool call (the demonstrator knows it; a small student cannot).
    """
    if not direct:
        return _demonstrate(env, formatter, task_id, lambda e: e.unwrapped.oracle_action())
    final = _oracle_actions(env, task_id)[-1]
    return _demonstrate(env, formatter, task_id, lambda e: final, max_turns=1)


def _oracle_actions(env: Any, task_id: str) -> list[str]:
    env.reset(options={"task_id": task_id})
    actions: list[str] = []
    while True:
        actions.append(env.unwrapped.oracle_action())
        _, _, terminated, truncated, _ = env.step(actions[-1])
        if terminated or truncated:
            return actions


def skipping_tool_calls(pattern: str | None, fraction: float, rng: random.Random) -> NextAction:
    """The oracle, except that a `fraction` of its tool calls (those matching `pattern`, a regex
    searched in the call's text; None: all) are replaced by the reply the oracle gives once the
    call has returned: the demonstrator does that step in its head.

    The reply is found by playing the call on a copy of the environment; a call whose follow-up
    is another tool call is kept (only a call followed by a reply can be skipped)."""
    matcher = re.compile(pattern) if pattern else None

    def next_action(env: Any) -> str:
        action = env.unwrapped.oracle_action()
        if not _is_tool_call(action) or (matcher and not matcher.search(action)) or rng.random() >= fraction:
            return action
        ahead = _copy_env(env.unwrapped)
        _, _, terminated, truncated, _ = ahead.step(action)
        reply = None if terminated or truncated else ahead.oracle_action()
        return action if reply is None or _is_tool_call(reply) else reply

    return next_action


def _copy_env(env: Any) -> Any:
    """A deep copy of an environment that shares its (read-only, possibly large) task splits."""
    splits = getattr(env, "splits", None)
    return copy.deepcopy(env, memo={id(splits): splits} if splits is not None else None)


def _is_tool_call(action: str) -> bool:
    return "<tool_call>" in action


def _demonstrate(env: Any, formatter: ChatFormatter, task_id: str, next_action: NextAction,
                 max_turns: int | None = None) -> Demonstration:
    """One episode's tokens and loss mask, the demonstrator choosing each turn."""
    observation, info = env.reset(options={"task_id": task_id})
    messages = [{"role": "user", "content": observation}]
    if info.get("system_prompt"):
        messages.insert(0, {"role": "system", "content": info["system_prompt"]})
    prompt = formatter.initial_prompt_ids(messages, info.get("tools", []))
    token_ids, loss_mask, reward = list(prompt), [0] * len(prompt), 0.0
    for turn in itertools.count(1):
        action = next_action(env)
        completion = formatter.encode(action)
        if not _ends_with_tool_call(formatter, completion) and formatter.end_of_turn_id is not None:
            completion.append(formatter.end_of_turn_id)  # a final reply stops at end-of-turn
        token_ids += completion
        loss_mask += [1] * len(completion)
        _, step_reward, terminated, truncated, info = env.step(action)
        reward += float(step_reward)
        if terminated or truncated:
            return Demonstration(task_id, token_ids, loss_mask, reward)
        if max_turns is not None and turn == max_turns:
            raise ValueError(f"task {task_id}: the episode goes on after the demonstrated actions (a direct "
                             "answer needs an environment whose final reply ends the episode)")
        observation_ids = formatter.observation_ids(info.get("messages") or [], completion)
        token_ids += observation_ids
        loss_mask += [0] * len(observation_ids)
    raise AssertionError("unreachable")


def _ends_with_tool_call(formatter: ChatFormatter, completion: list[int]) -> bool:
    return formatter.decode(completion).rstrip().endswith("</tool_call>")


def demonstrations(formatter: ChatFormatter, env_id: str, env_kwargs: dict[str, Any], num_demos: int,
                   seed: int = 0, direct: DirectAnswers | None = None) -> list[Demonstration]:
    """Oracle demonstrations on `num_demos` distinct tasks drawn from the train split (never
    held-out); with `direct`, a seeded share of the matching tasks (scope task) or of their
    tool calls (scope call) is answered without the tool."""
    import spo_agents  # noqa: F401  (environment registration)

    env = gymnasium.make(env_id, **{**env_kwargs, "split": "train"})
    try:
        if not hasattr(env.unwrapped, "oracle_action"):
            raise ValueError(f"{env_id} has no oracle_action(); sft needs a scripted policy")
        train = env.unwrapped.splits["train"]
        ids = sorted(train.ids)
        rng = random.Random(seed)
        rng.shuffle(ids)
        demos = [_demonstrate_task(env, formatter, task_id, direct, train.get(task_id), rng)
                 for task_id in ids[:num_demos]]
    finally:
        env.close()
    failed = [d.task_id for d in demos if d.reward < 1.0]
    if failed:
        raise RuntimeError(f"the oracle failed {len(failed)} demonstrations (e.g. {failed[:3]})")
    return demos


def _demonstrate_task(env: Any, formatter: ChatFormatter, task_id: str, direct: DirectAnswers | None, task: Any,
                      rng: random.Random) -> Demonstration:
    if direct is None or direct.fraction == 0 or not _matches(direct.where, task):
        return oracle_demonstration(env, formatter, task_id)
    if direct.scope == "call":
        return _demonstrate(env, formatter, task_id, skipping_tool_calls(direct.pattern, direct.fraction, rng))
    return oracle_demonstration(env, formatter, task_id, direct=rng.random() < direct.fraction)


def _matches(where: dict[str, Any], task: Any) -> bool:
    return all(task.metadata.get(key) == value for key, value in where.items())


def shared_prefix_length(demos: list[Demonstration]) -> int:
    """Length of the token prefix common to all demos (system prompt and tool schemas), kept
    strictly before the first assistant token so every loss position stays in the suffix."""
    first = demos[0].token_ids
    length = min(len(d.token_ids) for d in demos)
    for demo in demos[1:]:
        length = next((i for i in range(length) if demo.token_ids[i] != first[i]), length)
    first_loss = min(d.loss_mask.index(1) for d in demos)
    return max(min(length, first_loss - 1), 0)


def _suffix_logprobs(model: torch.nn.Module, rows: list[Demonstration], prefix: int, device: str) -> torch.Tensor:
    """log p(token_t | tokens_<t) for the positions after the shared prefix, shape (B, T_suffix).

    The shared prefix is encoded once, without gradient, and its key/value cache repeated over
    the batch: the forward pass is exact; only the gradient through the prefix's own
    representations is dropped (they are the same instructions in every demonstration).
    """
    width = max(len(d.token_ids) for d in rows) - prefix
    suffix = torch.tensor([d.token_ids[prefix:] + [0] * (width - len(d.token_ids) + prefix) for d in rows],
                          device=device)
    attention = torch.tensor([[1] * (len(d.token_ids)) + [0] * (width + prefix - len(d.token_ids)) for d in rows],
                             device=device)
    positions = torch.arange(prefix, prefix + width, device=device).expand(len(rows), -1)
    cache_arg = cache_argument(model)
    cache = DynamicCache()
    if prefix:
        with torch.no_grad():
            head = torch.tensor([rows[0].token_ids[:prefix]], device=device)
            model(input_ids=head, use_cache=True, **{cache_arg: cache})
        cache.batch_repeat_interleave(len(rows))
    logits = model(input_ids=suffix, attention_mask=attention, position_ids=positions, use_cache=True,
                   **{cache_arg: cache}).logits.float()
    picked = logits[:, :-1].gather(-1, suffix[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits[:, :-1], dim=-1)  # position j predicts suffix token j+1


def demonstration_loss(model: torch.nn.Module, demos: list[Demonstration], microbatch_tokens: int,
                       device: str = "cpu", backward: bool = False) -> float:
    """Token-mean cross-entropy of the assistant tokens (backward() on it when asked)."""
    total_tokens = float(sum(sum(d.loss_mask) for d in demos))
    # the prefix shared by the whole batch, not by each micro-batch: the gradient then does not depend
    # on how the batch is cut (a micro-batch of similar rows would share, and freeze, part of their prompts)
    prefix = shared_prefix_length(demos)
    loss_sum = 0.0
    for indices in microbatches([len(d.token_ids) for d in demos], microbatch_tokens):
        rows = [demos[i] for i in indices]
        logprobs = _suffix_logprobs(model, rows, prefix, device)
        width = logprobs.shape[1] + 1
        mask = torch.tensor([d.loss_mask[prefix + 1:] + [0] * (width - len(d.loss_mask) + prefix) for d in rows],
                            dtype=torch.float32, device=device)
        loss = -(logprobs * mask).sum() / total_tokens
        if backward:
            loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def train_on_demonstrations(model: torch.nn.Module, demos: list[Demonstration], config: SFTConfig,
                            on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW with cosine decay over shuffled mini-batches; returns the per-step training loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s / config.steps, 1.0))))
    rng = np.random.default_rng(config.seed)
    order, cursor, losses = rng.permutation(len(demos)), 0, []
    model.train()
    for step in range(config.steps):
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(len(demos)), 0
        batch = [demos[i] for i in order[cursor: cursor + config.batch_size]]
        cursor += config.batch_size
        loss = demonstration_loss(model, batch, config.microbatch_tokens, config.device, backward=True)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        if on_step:
            on_step(step + 1, loss)
    model.eval()
    return losses


def save_warm_start(folder: Path, loaded: LoadedModel, formatter: ChatFormatter, marker: dict[str, Any]) -> None:
    """A transformers model folder that `load_model(folder)` reads, plus the `sft.json` marker."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(str(folder), safe_serialization=True)
    loaded.tokenizer.chat_template = formatter.template  # the template the demonstrations used
    loaded.tokenizer.save_pretrained(str(folder))
    (folder / SFT_MARKER).write_text(json.dumps(marker, indent=2))


def run_sft(config: SFTConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the base model, generate demonstrations, train, save; returns a summary."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    loaded = build_base(config)
    formatter = ChatFormatter(loaded.tokenizer, chat_template_for(config, loaded))
    demos = demonstrations(formatter, config.env_id, config.env_kwargs, config.num_demos, config.seed,
                           config.direct_answers)
    probe = demos[: min(len(demos), 64)]
    with torch.no_grad():
        loss_before = demonstration_loss(loaded.model, probe, config.microbatch_tokens, config.device)
    every = max(config.steps // 10, 1)
    losses = train_on_demonstrations(
        loaded.model, demos, config,
        on_step=lambda s, v: log(f"sft step {s}/{config.steps} loss {v:.4f}") if s % every == 0 else None)
    with torch.no_grad():
        loss_after = demonstration_loss(loaded.model, probe, config.microbatch_tokens, config.device)
    summary = {"base_model": config.model, "env_id": config.env_id, "env_kwargs": config.env_kwargs,
               "demonstrations": len(demos), "assistant_tokens": int(sum(sum(d.loss_mask) for d in demos)),
               "steps": config.steps, "loss_before": loss_before, "loss_after": loss_after,
               "final_train_loss": losses[-1], "wall_s": time.monotonic() - started, "output_dir": config.output_dir,
               "config": config.model_dump(mode="json")}
    save_warm_start(Path(config.output_dir), loaded, formatter, summary)
    return summary


def ensure_warm_start(model: str, settings: SFTConfig, log: Callable[[str], None] = print) -> None:
    """Run the warm start `settings` into the folder `model`, unless it already holds one made
    with the same settings (its `sft.json`); a folder that is not a warm start is never touched.

    This is how `spo-agents train` with the CPU preset runs the documented pipeline (sft, then
    RL) in one command; `spo-agents sft` runs the same first stage on its own.
    """
    folder = Path(model)
    wanted = settings.model_copy(update={"output_dir": str(folder)})
    marker = folder / SFT_MARKER
    if marker.is_file():
        done = json.loads(marker.read_text()).get("config", {})
        if _same_settings(done, wanted.model_dump(mode="json")):
            log(f"warm start: reusing {folder} (sft.json matches the config's warm_start)")
            return
        log(f"warm start: {folder} was made with other settings; running spo-agents sft again")
    elif folder.exists() and any(folder.iterdir()):
        raise ValueError(f"model folder {folder} exists but holds no {SFT_MARKER}; it is not a warm start "
                         "written by spo-agents sft, so it is left alone: remove warm_start or change model")
    else:
        log(f"warm start: no model at {folder}; running spo-agents sft first ({wanted.steps} steps)")
    summary = run_sft(wanted, log)
    log(f"warm start: done in {summary['wall_s']:.0f} s, demonstration loss "
        f"{summary['loss_before']:.3f} -> {summary['loss_after']:.3f}")


def _same_settings(done: dict[str, Any], wanted: dict[str, Any]) -> bool:
    ignore = {"output_dir"}
    return {k: v for k, v in done.items() if k not in ignore} == {k: v for k, v in wanted.items() if k not in ignore}
