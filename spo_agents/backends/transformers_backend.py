"""Continuous-batching generation with plain transformers, on CPU or GPU.

Why this exists: a rollout has many slots waiting for the policy at once, each with its own
prompt length and its own moment of arrival. Decoding them one by one wastes the accelerator (and
most of a CPU's memory bandwidth); waiting for a full batch makes fast slots wait for slow ones.
This backend keeps one running batch: every decode step advances all active requests by one
token, and requests that arrived meanwhile join between two steps (prefilled as a group, then
merged into the running batch). Finished requests leave at once.

Why not transformers' own continuous batching (`generate_batch`, `init_continuous_batching`)?
In transformers 5.24 it does run on CPU and return log-probs, and it can pause for in-place
weight updates, but (1) its log-probs are those of the *processed* distribution (after top-k/top-p
truncation), not `log_softmax(logits / T)` that the trainer recomputes; (2) it has no stop
strings, so `</tool_call>` could only be caught by streaming and cancelling after the fact;
(3) there is no per-request seed; (4) the policy version each request started under is not
observable. A scheduler of a few hundred lines over `DynamicCache` gives all four directly.

How the batch is kept: one left-padded `DynamicCache` of shape [B, heads, L, head_dim] per layer
with a [B, L] attention mask. New requests are prefilled together (left-padded), then their cache
is left-padded or the running one is, to a common length, and the two are concatenated on the
batch axis. Rows of finished requests are dropped and columns that are padding for every row are
trimmed. Position ids are per row, so padding never shifts RoPE. All model calls happen on one
background thread; `generate` is awaited from any number of asyncio tasks.

Weight updates (`update_weights`) are applied by that thread between two decode steps; in-flight
requests continue on the new weights with the KV cache computed by the old ones (as in
PipelineRL). Each result carries `policy_version` (weights when it started) and
`final_policy_version` (weights of its last token); every log-prob is exact for the weights
that sampled its token.

Left out: paged attention, prefix sharing, CUDA graphs, speculative decoding, and models whose
caches are not plain key/value tensors (linear-attention / state-space layers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from spo_agents.backends.base import (
    BackendClosedError,
    FinishReason,
    GenerationResult,
    SamplingParams,
)

__all__ = ["TransformersBackend"]


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: concurrent.futures.Future
    stop_ids: frozenset[int]
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    start_version: int = -1
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None


@dataclass
class _Batch:
    """The running batch: requests, their shared left-padded KV cache and per-row state."""

    requests: list[_Request]
    cache: DynamicCache
    attention_mask_B_L: torch.Tensor  # 1 where the cache holds a real token
    next_position_B: torch.Tensor  # position id of the token fed at the next step
    last_token_B: torch.Tensor  # last sampled token, not yet in the cache

    @property
    def size(self) -> int:
        return len(self.requests)


def _layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise NotImplementedError("the batched scheduler supports plain key/value cache layers only")
        out.append((layer.keys, layer.values))
    return out


def _left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """Concatenate two batches on the batch axis, left-padding to a common cache length."""
    length = max(a.attention_mask_B_L.shape[1], b.attention_mask_B_L.shape[1])
    for layer_a, (keys_b, values_b) in zip(a.cache.layers, _layer_tensors(b.cache)):
        layer_a.keys = torch.cat([_left_pad(layer_a.keys, length, 2), _left_pad(keys_b, length, 2)], dim=0)
        layer_a.values = torch.cat([_left_pad(layer_a.values, length, 2), _left_pad(values_b, length, 2)], dim=0)
    mask = torch.cat([_left_pad(a.attention_mask_B_L, length, 1), _left_pad(b.attention_mask_B_L, length, 1)])
    return _Batch(
        requests=a.requests + b.requests,
        cache=a.cache,
        attention_mask_B_L=mask,
        next_position_B=torch.cat([a.next_position_B, b.next_position_B]),
        last_token_B=torch.cat([a.last_token_B, b.last_token_B]),
    )


def _select(batch: _Batch, keep: list[int]) -> _Batch | None:
    """Keep rows `keep` and trim the leading columns that are padding for every kept row."""
    if not keep:
        return None
    if len(keep) == batch.size:
        return batch
    index = torch.tensor(keep, device=batch.attention_mask_B_L.device)
    mask = batch.attention_mask_B_L.index_select(0, index)
    start = int(mask.any(dim=0).to(torch.int64).argmax())
    for layer in batch.cache.layers:
        layer.keys = layer.keys.index_select(0, index)[:, :, start:]
        layer.values = layer.values.index_select(0, index)[:, :, start:]
    return _Batch(
        requests=[batch.requests[i] for i in keep],
        cache=batch.cache,
        attention_mask_B_L=mask[:, start:],
        next_position_B=batch.next_position_B.index_select(0, index),
        last_token_B=batch.last_token_B.index_select(0, index),
    )


def _filter_logits(scaled_B_V: torch.Tensor, requests: Sequence[_Request]) -> torch.Tensor:
    """Apply each row's top-k and top-p to tempered logits (masked entries become -inf)."""
    device = scaled_B_V.device
    top_k_B = torch.tensor([r.params.top_k for r in requests], device=device)
    top_p_B = torch.tensor([r.params.top_p for r in requests], device=device, dtype=scaled_B_V.dtype)
    if bool((top_k_B > 0).any()):
        k_max = int(top_k_B.max())
        top_values_B_K = torch.topk(scaled_B_V, min(k_max, scaled_B_V.shape[-1]), dim=-1).values
        kth_index_B = (top_k_B.clamp(min=1, max=top_values_B_K.shape[-1]) - 1).unsqueeze(-1)
        kth_B = top_values_B_K.gather(-1, kth_index_B)
        kth_B = torch.where(top_k_B.unsqueeze(-1) > 0, kth_B, torch.full_like(kth_B, -float("inf")))
        scaled_B_V = scaled_B_V.masked_fill(scaled_B_V < kth_B, -float("inf"))
    if bool((top_p_B < 1.0).any()):
        sorted_B_V, order_B_V = torch.sort(scaled_B_V, dim=-1, descending=True)
        probs_B_V = sorted_B_V.softmax(dim=-1)
        mass_before_B_V = probs_B_V.cumsum(dim=-1) - probs_B_V
        remove_sorted_B_V = mass_before_B_V > top_p_B.unsqueeze(-1)
        remove_B_V = torch.zeros_like(remove_sorted_B_V).scatter(-1, order_B_V, remove_sorted_B_V)
        scaled_B_V = scaled_B_V.masked_fill(remove_B_V, -float("inf"))
    return scaled_B_V


class TransformersBackend:
    """Continuous-batching backend over a transformers causal LM (see the module docstring).

    `max_batch_size` caps concurrent requests (the rest wait in FIFO order);
    `max_prefill_tokens` caps one prefill group (padded tokens). `seed` seeds the shared sampler
    used by requests that carry no seed of their own. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 64,
        max_prefill_tokens: int = 8192,
        seed: int = 0,
        policy_version: int = 0,
        num_threads: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.device = next(model.parameters()).device
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self._default_stop_ids = self._model_eos_ids()
        # transformers 5.x renamed the forward argument `past_key_values` to `cache`.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._shared_generator = torch.Generator(device=self.device).manual_seed(seed)
        self._version = policy_version
        self._waiting: deque[_Request] = deque()
        self._pending_update: tuple[Any, int, concurrent.futures.Future] | None = None
        self._batch: _Batch | None = None
        self._closing = False
        self._cv = threading.Condition()
        self._num_threads = num_threads  # applied by the decode thread (see set_num_threads)
        self.stats = {"decode_steps": 0, "generated_tokens": 0, "prefill_tokens": 0, "batch_rows": 0, "threads": 0}
        self._thread = threading.Thread(target=self._loop, name="spo-transformers-decode", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    @property
    def policy_version(self) -> int:
        return self._version

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> concurrent.futures.Future:
        """Queue a request from any thread; the future resolves to a GenerationResult."""
        params = params or SamplingParams()
        if not prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        stop_ids = self._default_stop_ids if params.stop_token_ids is None else params.stop_token_ids
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        request = _Request(list(map(int, prompt_ids)), params, concurrent.futures.Future(), frozenset(stop_ids), generator)
        with self._cv:
            if self._closing:
                raise BackendClosedError("the backend is closed")
            self._waiting.append(request)
            self._cv.notify()
        return request.future

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> GenerationResult:
        """Generate one completion; cancelling the awaiting task drops the request from the batch."""
        return await asyncio.wrap_future(self.submit(prompt_ids, params))

    def generate_many(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None
    ) -> list[GenerationResult]:
        """Blocking convenience: submit all prompts at once and wait for all results, in order."""
        futures = [self.submit(p, params) for p in prompts]
        return [f.result() for f in futures]

    def update_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module, version: int) -> None:
        """Copy new weights in place between two decode steps; blocks until they are applied.

        `weights` is a state dict (a subset of the model's keys is fine) or a module. In-flight
        requests are kept and continue under the new weights.
        """
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closing:
                raise BackendClosedError("the backend is closed")
            if self._pending_update is not None:
                raise RuntimeError("another weight update is already pending")
            self._pending_update = (weights, int(version), done)
            self._cv.notify()
        done.result()

    def set_num_threads(self, count: int | None) -> None:
        """torch intra-op threads of the decode thread (None: leave them as they are), applied
        before its next step; `stats["threads"]` reports the count in force there."""
        if count is not None and count < 1:
            raise ValueError(f"num_threads must be >= 1, got {count}")
        with self._cv:
            self._num_threads = count
            self._cv.notify()

    def close(self) -> None:
        """Stop the decode thread; unfinished requests resolve with FinishReason.ABORT."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    def __enter__(self) -> "TransformersBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the decode loop
    def _apply_thread_count(self) -> None:
        """torch.set_num_threads is per calling thread (after the thread's first torch call)."""
        if self._num_threads is not None and self._num_threads != self.stats["threads"]:
            torch.get_num_threads()
            torch.set_num_threads(self._num_threads)
        self.stats["threads"] = torch.get_num_threads()

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self._cv:
                    while not (self._closing or self._waiting or self._pending_update or self._batch):
                        self._cv.wait()
                    if self._closing:
                        break
                    update, self._pending_update = self._pending_update, None
                    room = self.max_batch_size - (self._batch.size if self._batch else 0)
                    admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self._apply_thread_count()
                if update is not None:
                    self._apply_update(*update)
                self._admit(admitted)
                if self._batch is not None:
                    try:
                        self._decode_step()
                    except Exception as exc:  # the batch's cache is suspect: fail its requests, keep the loop
                        self._fail(self._batch.requests, exc)
        self._abort_all()

    def _admit(self, requests: list[_Request]) -> None:
        """Prefill newly admitted requests in token-budgeted groups and merge them into the batch.

        A group whose prefill raises fails its own requests only; the running batch is untouched.
        """
        requests = [r for r in requests if not r.future.cancelled() and self._accepts(r)]
        groups: list[list[_Request]] = [[]]
        for request in sorted(requests, key=lambda r: len(r.prompt_ids)):
            if groups[-1] and (len(groups[-1]) + 1) * len(request.prompt_ids) > self.max_prefill_tokens:
                groups.append([])
            groups[-1].append(request)
        for group in filter(None, groups):
            try:
                batch = self._prefill(group)
            except Exception as exc:
                self._fail(group, exc)
                continue
            if batch is None:
                continue
            try:
                self._batch = batch if self._batch is None else _merge(self._batch, batch)
            except Exception as exc:  # a half-merged cache is unusable
                self._fail(group + (self._batch.requests if self._batch else []), exc)

    def _accepts(self, request: _Request) -> bool:
        """A prompt that fills the context window finishes at once with LENGTH and no tokens."""
        request.start_version = self._version
        if len(request.prompt_ids) < self.max_context:
            return True
        request.finish_reason = FinishReason.LENGTH
        self._resolve(request)
        return False

    def _prefill(self, requests: list[_Request]) -> _Batch | None:
        """Run the prompts of `requests` as one left-padded batch and sample their first tokens."""
        length = max(len(r.prompt_ids) for r in requests)
        pad_id = 0
        input_ids_B_L = torch.tensor(
            [[pad_id] * (length - len(r.prompt_ids)) + r.prompt_ids for r in requests], device=self.device
        )
        mask_B_L = torch.tensor(
            [[0] * (length - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests], device=self.device
        )
        position_ids_B_L = (mask_B_L.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids_B_L,
            attention_mask=mask_B_L,
            position_ids=position_ids_B_L,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        self.stats["prefill_tokens"] += int(mask_B_L.sum())
        batch = _Batch(
            requests=requests,
            cache=cache,
            attention_mask_B_L=mask_B_L,
            next_position_B=mask_B_L.sum(dim=1),
            last_token_B=torch.zeros(len(requests), dtype=torch.long, device=self.device),
        )
        return self._sample_and_advance(batch, out.logits[:, -1, :])

    def _decode_step(self) -> None:
        batch = self._batch
        mask_B_L = torch.cat([batch.attention_mask_B_L, batch.attention_mask_B_L.new_ones(batch.size, 1)], dim=1)
        out = self.model(
            input_ids=batch.last_token_B.unsqueeze(1),
            attention_mask=mask_B_L,
            position_ids=batch.next_position_B.unsqueeze(1),
            use_cache=True,
            **{self._cache_arg: batch.cache},
        )
        batch.attention_mask_B_L = mask_B_L
        batch.next_position_B = batch.next_position_B + 1
        self.stats["decode_steps"] += 1
        self.stats["batch_rows"] += batch.size
        self._batch = self._sample_and_advance(batch, out.logits[:, -1, :])

    # ------------------------------------------------------------------ sampling and stopping
    def _sample_and_advance(self, batch: _Batch, logits_B_V: torch.Tensor) -> _Batch | None:
        """Sample one token per row, record its log-prob, finish rows that stopped, drop them."""
        tokens_B, logprobs_B = self._sample(logits_B_V.float(), batch.requests)
        batch.last_token_B = tokens_B.to(self.device)
        keep: list[int] = []
        for row, (request, token, logprob) in enumerate(zip(batch.requests, tokens_B.tolist(), logprobs_B.tolist())):
            if request.future.cancelled():
                continue
            request.token_ids.append(token)
            request.logprobs.append(logprob)
            self.stats["generated_tokens"] += 1
            if self._check_stop(request, token):
                self._resolve(request)
            else:
                keep.append(row)
        return _select(batch, keep)

    def _sample(self, logits_B_V: torch.Tensor, requests: Sequence[_Request]) -> tuple[torch.Tensor, torch.Tensor]:
        temperature_B = torch.tensor([r.params.logprob_temperature for r in requests], device=logits_B_V.device)
        scaled_B_V = logits_B_V / temperature_B.unsqueeze(-1)
        logprobs_B_V = torch.log_softmax(scaled_B_V, dim=-1)
        tokens_B = logits_B_V.argmax(dim=-1)
        sampling_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if sampling_rows:
            rows_S = torch.tensor(sampling_rows, device=logits_B_V.device)
            sub = [requests[i] for i in sampling_rows]
            probs_S_V = F.softmax(_filter_logits(scaled_B_V.index_select(0, rows_S), sub), dim=-1)
            shared = [j for j, r in enumerate(sub) if r.generator is None]
            if shared:  # unseeded rows: one draw from the backend's generator
                shared_S = torch.tensor(shared, device=logits_B_V.device)
                drawn_S = torch.multinomial(probs_S_V.index_select(0, shared_S), 1, generator=self._shared_generator)
                tokens_B[rows_S.index_select(0, shared_S)] = drawn_S.squeeze(-1)
            for j, request in enumerate(sub):  # seeded rows: each from its own generator
                if request.generator is not None:
                    tokens_B[sampling_rows[j]] = torch.multinomial(probs_S_V[j], 1, generator=request.generator)[0]
        logprobs_B = logprobs_B_V.gather(-1, tokens_B.unsqueeze(-1)).squeeze(-1)
        return tokens_B, logprobs_B

    def _check_stop(self, request: _Request, token: int) -> bool:
        """Set the finish reason if `token` ends the request; True when it does."""
        params = request.params
        if token in request.stop_ids:
            request.stop_reason = token
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            request.finish_reason = self._stop_kind(text, params)
            return True
        if params.stop_strings:
            window = max(len(s) for s in params.stop_strings)
            tail = self.tokenizer.decode(request.token_ids[-window:], skip_special_tokens=False)
            for stop in params.stop_strings:
                if stop in tail:
                    request.stop_reason = stop
                    request.finish_reason = self._stop_kind(stop, params)
                    return True
        if len(request.token_ids) >= params.max_new_tokens:
            request.finish_reason = FinishReason.LENGTH
            return True
        if len(request.prompt_ids) + len(request.token_ids) >= self.max_context:
            request.finish_reason = FinishReason.LENGTH
            return True
        return False

    @staticmethod
    def _stop_kind(text: str, params: SamplingParams) -> FinishReason:
        if params.tool_call_stop and text.endswith(params.tool_call_stop):
            return FinishReason.TOOL_CALL
        return FinishReason.STOP

    # ------------------------------------------------------------------ resolution and updates
    def _resolve(self, request: _Request) -> None:
        result = GenerationResult(
            token_ids=request.token_ids,
            logprobs=request.logprobs,
            finish_reason=request.finish_reason or FinishReason.ABORT,
            policy_version=request.start_version if request.start_version >= 0 else self._version,
            final_policy_version=self._version,
            stop_reason=request.stop_reason,
            prompt_len=len(request.prompt_ids),
        )
        try:
            if not request.future.done():
                request.future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled between the check and the set
            pass

    def _fail(self, requests: list[_Request], exc: BaseException) -> None:
        """Fail `requests` with `exc`; if they include the running batch, drop the batch."""
        failing = {id(r) for r in requests}
        if self._batch is not None and any(id(r) in failing for r in self._batch.requests):
            self._batch = None
        for request in requests:
            if not request.future.done():
                try:
                    request.future.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass

    def _abort_all(self) -> None:
        with self._cv:
            leftover = list(self._waiting) + (self._batch.requests if self._batch else [])
            self._waiting.clear()
            update, self._pending_update = self._pending_update, None
        self._batch = None
        for request in leftover:
            request.finish_reason = FinishReason.ABORT
            self._resolve(request)
        if update is not None:
            update[2].set_exception(BackendClosedError("the backend closed before the weight update"))

    def _apply_update(self, weights: Any, version: int, done: concurrent.futures.Future) -> None:
        try:
            state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
            own = self.model.state_dict()
            unknown = sorted(set(state) - set(own))
            if unknown:
                raise KeyError(f"weights not in the model: {unknown[:5]}")
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(own[name].shape)}")
            for name, tensor in state.items():
                own[name].copy_(tensor.to(device=own[name].device, dtype=own[name].dtype))
            self._version = version
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    def _model_eos_ids(self) -> tuple[int, ...]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
