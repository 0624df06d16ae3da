"""The learner's update: teacher-forced log-probs and PPO-clip steps on a causal LM.

`PolicyUpdater` owns the training copy of the model and its AdamW optimiser. It works on
`TrainingSample`s (token ids, loss mask, behaviour log-probs) and one advantage per episode; it
never sees an environment or a generation backend (the trainer pushes the updated weights to
the backend). Micro-batches are formed by a token budget; the loss of each micro-batch is
divided by the token count of the whole batch (`token_normalizer`), so gradient accumulation
gives exactly the token-mean over the batch. Episodes can also be accumulated one at a time as
they arrive (`accumulate`), with the optimiser step applied later (`apply`): the streaming
trainer's "gradient on arrival" mode, where the normaliser is known only at step time; we
accumulate token *sums* and rescale the gradients once before stepping.

Every loss setting reaches the loss here: `kl_coef > 0` keeps a frozen reference policy (the
initial weights: a frozen copy, or the base model with its LoRA adapters disabled) and scores
each micro-batch under it; `entropy_coef > 0` computes the per-token entropy of the full
distribution from the same logits; `tis_cap` anchors the PPO ratio on the step-start log-probs
(the detached training forward: one optimiser step per batch, so they are the proximal policy)
and corrects the sampler mismatch with the truncated weight (see loss.py). The detached
log-probs of the training forward are kept per sample (`last_logprobs`), so SPO's drift
estimate needs no second pass over the batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pydantic
import torch

from spo_agents.learner.config import LossConfig
from spo_agents.learner.loss import importance_weights, policy_loss
from spo_agents.learner.shared_prefix import causal_lm_logits, common_prefix_length, shared_prefix_length
from spo_agents.rollout.episode import TrainingSample


class OptimConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    lr: float = pydantic.Field(1e-6, gt=0, description="AdamW learning rate (1e-6 for an 8B model in the paper)")
    weight_decay: float = pydantic.Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = pydantic.Field((0.9, 0.999), description="AdamW betas")
    grad_clip: float = pydantic.Field(1.0, gt=0, description="max global gradient norm")
    microbatch_tokens: int = pydantic.Field(1024, ge=16, description="token budget of one micro-batch (padded; "
                                            "with share_prefix, the prefix all rows share counts once, as it is "
                                            "computed); activation memory grows with it (4096 took 1.6x the peak RSS "
                                            "of 1024 in `bench learner`, at the same speed on CPU)")
    share_prefix: bool | None = pydantic.Field(None, description="compute the prompt prefix that every row of a "
                                               "micro-batch shares (chat header, system prompt, tool schemas) once, "
                                               "forward and backward, instead of once per row; the same gradient up "
                                               "to float rounding (learner/shared_prefix.py). null (default): on, "
                                               "except with the sharded learner (learner_parallel: fsdp)")
    temperature: float = pydantic.Field(1.0, gt=0, description="T of log_softmax(logits / T); equal to the "
                                        "sampling temperature so ratios compare like with like")
    schedule: Literal["constant", "linear", "cosine"] = pydantic.Field(
        "constant", description="learning-rate decay after warm-up: constant | linear | cosine (down to "
        "lr * min_lr_ratio at decay_steps)")
    warmup_steps: int = pydantic.Field(0, ge=0, description="optimiser steps of linear warm-up from 0 to lr")
    decay_steps: int | None = pydantic.Field(None, ge=1, description="step at which the decay reaches its floor "
                                             "(default: the run's `steps`)")
    min_lr_ratio: float = pydantic.Field(0.0, ge=0, le=1, description="floor of linear/cosine decay, as a "
                                         "fraction of lr")


def lr_factor(step: int, config: OptimConfig, total_steps: int | None) -> float:
    """Multiplier of `config.lr` for optimiser step `step` (0-based): linear warm-up, then
    constant, linear or cosine decay to `min_lr_ratio` at `decay_steps` (or `total_steps`).

    A closed form of the step rather than a torch LRScheduler object: the step is the updater's
    `version`, already checkpointed, so a resumed run continues the schedule with no extra state.
    """
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    horizon = config.decay_steps or total_steps
    if config.schedule == "constant" or not horizon or horizon <= config.warmup_steps:
        return 1.0
    progress = min((step - config.warmup_steps) / (horizon - config.warmup_steps), 1.0)
    shape = 1.0 - progress if config.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape


@dataclass
class _Microbatch:
    token_ids_B_T: torch.Tensor
    loss_mask_B_T: torch.Tensor
    behaviour_logprobs_B_T: torch.Tensor
    attention_mask_B_T: torch.Tensor
    indices: list[int]


def microbatches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group indices (sorted by length) so that rows x max length stays within the budget.

    Empty rows (an episode that ended before its first turn) are left out: they carry no
    tokens, and an all-padding row would only add a fully masked attention row."""
    order = sorted((i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = max([lengths[i] for i in current] + [lengths[index]])
        if current and longest * (len(current) + 1) > token_budget:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def _pad(rows: list[list], value, dtype) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=dtype)


def first_scored_position(loss_mask_B_T: torch.Tensor) -> int:
    """The first position whose logits any row needs: one before its first loss token.

    Positions before it (a prompt's) only feed attention; their logits, the vocabulary-wide part
    of the forward and backward, are skipped (as TRL's `logits_to_keep` does). Rows without a
    loss token do not count; with none at all, the last position."""
    has_loss_B = loss_mask_B_T.any(dim=-1)
    if not bool(has_loss_B.any()):
        return max(loss_mask_B_T.shape[1] - 2, 0)
    first_B = loss_mask_B_T[has_loss_B].ne(0).to(torch.int8).argmax(dim=-1)
    return max(int(first_B.min()) - 1, 0)


def _shifted_logits(model: torch.nn.Module, token_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor,
                    temperature: float, first: int = 0, share_prefix: bool = False) -> torch.Tensor:
    """Logits at positions first..T-2 (each predicting the next token), fp32, divided by temperature.
    With `share_prefix`, the tokens all rows start with (up to `first`) go through the model once."""
    on_gpu = token_ids_B_T.device.type == "cuda"
    keep = token_ids_B_T.shape[1] - first
    prefix = shared_prefix_length(token_ids_B_T, attention_mask_B_T, first) if share_prefix else 0
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):  # bf16 on GPU, fp32 on CPU
        logits_B_K_V = causal_lm_logits(model, token_ids_B_T, attention_mask_B_T, keep, prefix).float()
    logits_B_K_V = logits_B_K_V[:, -keep:]  # a model that ignores logits_to_keep returns every position
    return logits_B_K_V[:, :-1] / temperature


def _picked_logprobs(logits_B_K_V: torch.Tensor, token_ids_B_T: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) aligned to positions; positions without logits (position 0,
    and those before the first scored one) get 0."""
    first = token_ids_B_T.shape[1] - 1 - logits_B_K_V.shape[1]
    picked_B_K = logits_B_K_V.gather(-1, token_ids_B_T[:, first + 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked_B_K - torch.logsumexp(logits_B_K_V, dim=-1), (first + 1, 0))


def _entropy(logits_B_K_V: torch.Tensor, length: int) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned like `_picked_logprobs` over `length` positions."""
    logp_B_K_V = torch.log_softmax(logits_B_K_V, dim=-1)
    entropy_B_K = -(logp_B_K_V.exp() * logp_B_K_V).sum(-1)
    return torch.nn.functional.pad(entropy_B_K, (length - entropy_B_K.shape[1], 0))


def token_logprobs(model: torch.nn.Module, token_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor,
                   temperature: float = 1.0, first: int = 0, share_prefix: bool = False) -> torch.Tensor:
    """log p(token_t | tokens_<t) under `model`, aligned to positions (0 at position 0 and
    before `first + 1`)."""
    return _picked_logprobs(_shifted_logits(model, token_ids_B_T, attention_mask_B_T, temperature, first,
                                            share_prefix), token_ids_B_T)


# loss terms that policy_loss reports as sums when its normaliser is 1 (logged as token-means)
_SUMMED_LOSS_TERMS = frozenset({"loss/pg", "loss/kl_ref", "loss/entropy"})


class PolicyUpdater:
    """PPO-clip updates of a causal LM from episodes and per-episode advantages."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig | None = None, loss: LossConfig | None = None,
                 device: str | torch.device = "cpu", total_steps: int | None = None):
        self.model, self.optim_config, self.loss_config = model, optim or OptimConfig(), loss or LossConfig()
        self.total_steps = total_steps  # the decay horizon when optim.decay_steps is unset
        self.device = torch.device(device)
        params = [p for p in model.parameters() if p.requires_grad]
        c = self.optim_config
        self.optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, betas=c.betas)
        self.version = 0
        self._accumulated_tokens = 0
        self._accumulated_metrics: list[dict[str, float]] = []
        self.last_logprobs: list[np.ndarray] = []  # detached training-forward log-probs of the last accumulate()
        self.reference_model = _frozen_reference(model) if self.loss_config.kl_coef > 0 else None
        self.share_prefix = self.optim_config.share_prefix is not False  # null: on

    @property
    def scoring_may_overlap(self) -> bool:
        """Whether `logprobs` may run in another thread while `accumulate` runs here (both only read
        the weights): not when the KL reference is this model with its LoRA adapters switched off
        for a moment."""
        return self.reference_model is not self.model

    def microbatch_groups(self, token_ids_list: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]]
                          ) -> list[list[int]]:
        """Indices of each micro-batch under `microbatch_tokens`. With share_prefix, the prefix that
        all sequences share is left out of each row's length: the forward computes it once per
        micro-batch, so the budget holds the rows' own tokens (more rows per call, each call
        paying for the prefix once)."""
        shared = common_prefix_length(token_ids_list, loss_masks) if self.share_prefix else 0
        lengths = [len(ids) - shared if len(ids) else 0 for ids in token_ids_list]
        return microbatches(lengths, self.optim_config.microbatch_tokens)

    def _build(self, samples: Sequence[TrainingSample], indices: list[int]) -> _Microbatch:
        rows = [samples[i] for i in indices]
        return _Microbatch(
            token_ids_B_T=_pad([list(s.token_ids) for s in rows], 0, torch.long).to(self.device),
            loss_mask_B_T=_pad([list(s.loss_mask) for s in rows], 0, torch.float32).to(self.device),
            behaviour_logprobs_B_T=_pad([list(s.behaviour_logprobs) for s in rows], 0.0, torch.float32).to(self.device),
            attention_mask_B_T=_pad([[1] * len(s) for s in rows], 0, torch.long).to(self.device),
            indices=indices,
        )

    @torch.no_grad()
    def logprobs(self, token_ids_list: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]] | None = None
                 ) -> list[np.ndarray]:
        """Per-token log-probs of each sequence under the current weights (the drift cache's
        `logprob_fn`); with `loss_masks`, positions before a micro-batch's first loss token are
        not scored (0)."""
        masks = loss_masks if loss_masks is not None else [[1] * len(ids) for ids in token_ids_list]
        samples = [TrainingSample(list(ids), list(mask), [0.0] * len(ids)) for ids, mask in zip(token_ids_list, masks)]
        out: list[np.ndarray] = [np.zeros(0)] * len(samples)
        for indices in self.microbatch_groups(token_ids_list, masks):
            batch = self._build(samples, indices)
            logprobs_B_T = token_logprobs(self.model, batch.token_ids_B_T, batch.attention_mask_B_T,
                                          self.optim_config.temperature, first_scored_position(batch.loss_mask_B_T),
                                          self.share_prefix)
            for row, index in enumerate(indices):
                out[index] = logprobs_B_T[row, : len(samples[index])].double().cpu().numpy()
        return out

    def accumulate(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
                   weights: Sequence[float] | None = None) -> dict[str, float]:
        """Forward/backward these episodes; gradients hold token *sums* until `apply`.

        Afterwards `last_logprobs[i]` holds sample i's per-token log-probs from this forward
        (float64, detached; 0 at position 0 and at prompt positions before the micro-batch's
        first loss token): the weights at step start, at no extra cost."""
        self.model.train()
        weights = [1.0] * len(samples) if weights is None else list(weights)
        self.last_logprobs = [np.zeros(0)] * len(samples)
        for indices in self.microbatch_groups([s.token_ids for s in samples], [s.loss_mask for s in samples]):
            batch = self._build(samples, indices)
            advantages_B = torch.tensor([advantages[i] for i in indices], dtype=torch.float32, device=self.device)
            weight_B_T = torch.tensor([weights[i] for i in indices], device=self.device)[:, None]
            loss, metrics, logprobs_B_T = self._microbatch_loss(batch, advantages_B, batch.loss_mask_B_T * weight_B_T)
            loss.backward()  # a token sum; rescaled by the batch's token count in apply()
            num_tokens = float(batch.loss_mask_B_T.sum())
            self._accumulated_tokens += num_tokens
            for key in _SUMMED_LOSS_TERMS.intersection(metrics):  # sums here (normaliser 1): make them means
                metrics[key] /= max(num_tokens, 1.0)
            metrics["tokens"], metrics["loss_sum"] = num_tokens, metrics.pop("loss/total")
            self._accumulated_metrics.append(metrics)
            detached_B_T = logprobs_B_T.detach().double().cpu().numpy()
            for row, index in enumerate(indices):
                self.last_logprobs[index] = detached_B_T[row, : len(samples[index])]
        return self._accumulated_metrics[-1] if self._accumulated_metrics else {}

    def _microbatch_loss(self, batch: _Microbatch, advantages_B: torch.Tensor, mask_B_T: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """The loss of one micro-batch as a token sum, with every LossConfig term that is on."""
        lc = self.loss_config
        first = first_scored_position(batch.loss_mask_B_T)
        logits_B_K_V = _shifted_logits(self.model, batch.token_ids_B_T, batch.attention_mask_B_T,
                                       self.optim_config.temperature, first, self.share_prefix)
        logprobs_B_T = _picked_logprobs(logits_B_K_V, batch.token_ids_B_T)
        entropy_B_T = _entropy(logits_B_K_V, batch.token_ids_B_T.shape[1]) if lc.entropy_coef > 0 else None
        del logits_B_K_V
        anchor_B_T, tis_weights_B_T = batch.behaviour_logprobs_B_T, None
        if lc.tis_cap is not None:  # ratio on the step-start (proximal) log-probs, sampler mismatch weighted
            anchor_B_T = logprobs_B_T.detach()
            tis_weights_B_T = importance_weights(anchor_B_T, batch.behaviour_logprobs_B_T)
        ref_logprobs_B_T = self._reference_logprobs(batch, first) if self.reference_model is not None else None
        loss, metrics = policy_loss(logprobs_B_T, anchor_B_T, advantages_B, mask_B_T,
                                    clip_low=lc.clip_low, clip_high=lc.clip_high, dual_clip=lc.dual_clip,
                                    tis_weights_B_T=tis_weights_B_T, tis_cap=lc.tis_cap,
                                    ref_logprobs_B_T=ref_logprobs_B_T, kl_coef=lc.kl_coef,
                                    entropy_B_T=entropy_B_T, entropy_coef=lc.entropy_coef, token_normalizer=1.0)
        return loss, metrics, logprobs_B_T

    @torch.no_grad()
    def _reference_logprobs(self, batch: _Microbatch, first: int) -> torch.Tensor:
        reference, context = self.reference_model, contextlib.nullcontext()
        if reference is self.model:  # LoRA: the base model is the reference, adapters switched off
            context = self.model.disable_adapter()
        with context:
            return token_logprobs(reference, batch.token_ids_B_T, batch.attention_mask_B_T,
                                  self.optim_config.temperature, first, self.share_prefix)

    def apply(self) -> dict[str, float]:
        """Rescale accumulated gradients to a token-mean, clip, step; bump the version."""
        tokens = max(self._accumulated_tokens, 1.0)
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.div_(tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_config.grad_clip)
        lr = self.optim_config.lr * lr_factor(self.version, self.optim_config, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = _token_weighted([{k: v for k, v in m.items() if k != "loss_sum"} for m in self._accumulated_metrics])
        metrics["loss/total"] = sum(m["loss_sum"] for m in self._accumulated_metrics) / tokens
        metrics.update(grad_norm=float(grad_norm), train_tokens=self._accumulated_tokens, lr=lr)
        self._accumulated_tokens, self._accumulated_metrics = 0, []
        self.version += 1
        return metrics

    def step(self, samples: Sequence[TrainingSample], advantages: Sequence[float],
             weights: Sequence[float] | None = None) -> dict[str, float]:
        """One optimiser step on a whole batch (the 'collect B, then step' path)."""
        self.accumulate(samples, advantages, weights)
        return self.apply()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])


def _frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """The KL penalty's reference policy: the weights the updater starts from, frozen. A LoRA
    (peft) model is its own reference with the adapters disabled, so nothing is copied."""
    if hasattr(model, "disable_adapter"):
        return model
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _token_weighted(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Average micro-batch metrics weighted by their token counts."""
    total = sum(m.get("tokens", 0.0) for m in metrics)
    if not metrics or total == 0:
        return {}
    keys = {k for m in metrics for k in m if k != "tokens"}
    return {k: sum(m.get(k, 0.0) * m["tokens"] for m in metrics) / total for k in sorted(keys)}
