"""Prefill of newly admitted prompts, computing shared tokens once.

Why: in RL rollouts most prompt tokens are shared. Every prompt of a run starts with the same
chat-template header (system prompt, tool schemas), and GRPO submits each prompt G times. A
plain batched prefill computes all of them for every row; on a CPU the prefill of 64 short
chat prompts cost a fifth of the decoding thread's time. Here:

- identical prompts in a group are computed once and their cache rows copied;
- a common prefix (of the group's distinct prompts, or of a new prompt and the previous one)
  of at least `min_prefix` tokens is computed once, kept (`PrefixCache`) and reused by later
  groups that start with it, until the weights change;
- the rest of each prompt (its suffix) is prefilled as one left-padded batch on top of the
  prefix. A row's cache is then [prefix][padding][suffix]; padding is masked and position ids
  are explicit, so the keys and values are those of the whole prompt (up to float rounding,
  as any change of batch shape gives).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import DynamicCache

__all__ = ["Prefilled", "PrefixCache", "prefill", "cache_tensors"]


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of each layer of a DynamicCache; plain key/value layers only."""
    out = []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise NotImplementedError("the batched scheduler supports plain key/value cache layers only")
        out.append((layer.keys, layer.values))
    return out


@dataclass
class PrefixCache:
    """The key/values of one shared prompt prefix under the current weights (`clear` on update)."""

    tokens: tuple[int, ...] = ()
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    last_prompt: tuple[int, ...] = ()
    hits: int = 0

    def clear(self) -> None:
        self.tokens, self.layers, self.last_prompt = (), [], ()


@dataclass
class Prefilled:
    """Cache rows of the admitted prompts (right-aligned), their masks and last-position logits."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer [rows, kv_heads, width, head_dim]
    mask: torch.Tensor  # [rows, width]
    logits: torch.Tensor  # [rows, vocab]
    computed_tokens: int  # prompt tokens that went through the model (shared ones once)


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    first, length = prompts[0], min(len(p) for p in prompts)
    for i in range(length):
        token = first[i]
        if any(p[i] != token for p in prompts):
            return i
    return length


def _forward(model: Any, cache_arg: str, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: Any) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{cache_arg: cache})
    return out.logits[:, -1, :]


def _prefix(model: Any, cache_arg: str, distinct: list[tuple[int, ...]], cache: PrefixCache, min_prefix: int,
            device: torch.device) -> int:
    """Length of the shared prefix to use (0: none); computes and keeps it when new."""
    longest = min(len(p) for p in distinct) - 1  # every row keeps at least one token of its own
    if cache.tokens and len(cache.tokens) <= longest and all(p[: len(cache.tokens)] == cache.tokens for p in distinct):
        found = len(cache.tokens)
        cache.hits += 1
    else:
        found = 0
    others = distinct if len(distinct) > 1 else distinct + ([cache.last_prompt] if cache.last_prompt else [])
    shared = min(_common_prefix(others), longest) if len(others) > 1 else 0
    if shared >= min_prefix and shared > found:
        tokens = distinct[0][:shared]
        fresh = DynamicCache()
        ids = torch.tensor([tokens], device=device)
        _forward(model, cache_arg, ids, torch.ones_like(ids), torch.arange(shared, device=device)[None], fresh)
        cache.tokens, cache.layers, found = tokens, [(k, v) for k, v in cache_tensors(fresh)], shared
    return found


def prefill(model: Any, cache_arg: str, prompts: Sequence[Sequence[int]], cache: PrefixCache,
            min_prefix: int = 16) -> Prefilled:
    """Prefill `prompts` (one row each, in order), sharing identical prompts and a common prefix."""
    device = next(model.parameters()).device
    index: dict[tuple[int, ...], int] = {}
    row_to_distinct = [index.setdefault(tuple(p), len(index)) for p in prompts]
    distinct = list(index)
    shared = _prefix(model, cache_arg, distinct, cache, min_prefix, device) if min_prefix > 0 else 0
    cache.last_prompt = distinct[-1]
    suffixes = [p[shared:] for p in distinct]
    width = max(len(s) for s in suffixes)
    input_ids = torch.tensor([[0] * (width - len(s)) + list(s) for s in suffixes], device=device)
    suffix_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    positions = shared + (suffix_mask.cumsum(dim=1) - 1).clamp(min=0)
    mask = torch.cat([suffix_mask.new_ones(len(suffixes), shared), suffix_mask], dim=1)
    kv_cache = DynamicCache()
    for layer, (keys, values) in enumerate(cache.layers[:] if shared else []):
        rows = len(suffixes)
        kv_cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
    logits = _forward(model, cache_arg, input_ids, mask, positions, kv_cache)
    layers = cache_tensors(kv_cache)
    computed = int(suffix_mask.sum())
    if len(distinct) < len(prompts):  # copy the rows of repeated prompts
        rows = torch.tensor(row_to_distinct, device=device)
        layers = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in layers]
        mask, logits = mask.index_select(0, rows), logits.index_select(0, rows)
    return Prefilled(layers, mask, logits, computed)
