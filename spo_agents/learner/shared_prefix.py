"""Teacher-forced forwards that compute a micro-batch's shared prompt prefix once.

Why: the rows the learner scores mostly start with the same tokens. Every episode of a run
begins with the same chat-template header (system prompt, tool schemas), and a GRPO group
repeats one prompt G times. A plain padded forward computes that prefix for every row, in the
forward and again in the backward: in `bench learner` (a 28-token header, rows of ~98 tokens)
that is about 29% of the learner's arithmetic. Here the prefix goes through the model once, as
a single row whose keys and values (`use_cache=True`) are repeated for every row
(`DynamicCache.batch_repeat_interleave`); the rows then run only their own suffix on top of
it, with the full attention mask. Autograd sums the rows' gradients into the one prefix row,
so the gradient is the plain forward's up to float rounding (the same sums in another order).

The prefix must be real tokens in every row (rows are right-padded, so positions below the
shortest row are) and must end at or before the first position whose logits are needed, so
that every kept logit comes from the suffix call. Models whose cache is not plain key/value
layers (sliding-window or recurrent layers), or that return no cache (gradient checkpointing
in training mode), fall back to the plain forward.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

import torch
from transformers import DynamicCache

__all__ = ["MIN_SHARED_PREFIX", "cache_argument", "causal_lm_logits", "common_prefix_length", "shared_prefix_length"]

# Below this the extra call (Python and dispatch overhead of a second forward) costs more than
# the few rows x tokens it saves on the tiny models of the tests and the CPU default.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(token_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor, limit: int) -> int:
    """Length of the token prefix that all rows share as real tokens, capped at `limit`; 0 when
    there are fewer than two rows or it is shorter than `MIN_SHARED_PREFIX`."""
    rows, width = token_ids_B_T.shape
    limit = min(limit, width - 1)
    if rows < 2 or limit < MIN_SHARED_PREFIX:
        return 0
    same_T = (token_ids_B_T[:, :limit] == token_ids_B_T[:1, :limit]).all(dim=0)
    same_T &= attention_mask_B_T[:, :limit].bool().all(dim=0)
    differs = (~same_T).nonzero()
    length = int(differs[0]) if len(differs) else limit
    return length if length >= MIN_SHARED_PREFIX else 0


def common_prefix_length(token_ids_list: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]]) -> int:
    """Tokens that all non-empty sequences start with, before any of them has a loss token; 0
    when shorter than `MIN_SHARED_PREFIX`. Every micro-batch of these sequences shares at least
    this prefix, so the learner's token budget counts it once per micro-batch."""
    rows = [(ids, mask) for ids, mask in zip(token_ids_list, loss_masks, strict=True) if len(ids)]
    if len(rows) < 2:
        return 0
    length = 0
    for column in zip(*(ids for ids, _ in rows)):
        if any(token != column[0] for token in column):
            break
        length += 1
    for _, mask in rows:  # end before the first position whose logits are needed
        first_loss = next((t for t, m in enumerate(mask) if m), len(mask))
        length = min(length, first_loss - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


@functools.lru_cache(maxsize=None)
def _cache_argument_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """The forward's cache argument (transformers 5 renamed `past_key_values` to `cache`), read
    off the wrapped model's class for a peft wrapper, whose forward takes **kwargs."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_argument_of(type(base))


def _plain_layers(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(getattr(layer, "keys", None) is not None and not getattr(layer, "is_sliding", False)
                                for layer in layers)


def causal_lm_logits(model: torch.nn.Module, token_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor,
                     keep: int, prefix: int) -> torch.Tensor:
    """`model(...).logits` of the last `keep` positions, with the first `prefix` tokens (shared
    by every row, `prefix <= T - keep`) computed once; `prefix = 0` is the plain forward."""
    rows, width = token_ids_B_T.shape
    if prefix and prefix <= width - keep:
        argument = {cache_argument(model): DynamicCache()}
        model(input_ids=token_ids_B_T[:1, :prefix], use_cache=True, logits_to_keep=1, **argument)
        cache = next(iter(argument.values()))
        if _plain_layers(cache):
            cache.batch_repeat_interleave(rows)
            return model(input_ids=token_ids_B_T[:, prefix:], attention_mask=attention_mask_B_T, use_cache=True,
                         logits_to_keep=keep, **argument).logits
    return model(input_ids=token_ids_B_T, attention_mask=attention_mask_B_T, logits_to_keep=keep).logits
