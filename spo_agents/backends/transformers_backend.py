"""Continuous-batching generation with plain transformers, on CPU or GPU.

Why this exists: a rollout has many slots waiting for the policy at once, each with its own
prompt length and its own moment of arrival. Decoding them one by one wastes the accelerator (and
most of a CPU's memory bandwidth); waiting for a full batch makes fast slots wait for slow ones.
This backend keeps one running batch: every decode step advances all active requests by one
token, requests that arrived meanwhile join between two steps, and finished requests leave at
once, so no step computes a row that has stopped (`model.generate` computes every row until the
longest is done).

Why not transformers' own continuous batching (`generate_batch`, `init_continuous_batching`)?
In transformers 5.24 it does run on CPU and return log-probs, and it can pause for in-place
weight updates, but (1) its log-probs are those of the *processed* distribution (after top-k/top-p
truncation), not `log_softmax(logits / T)` that the trainer recomputes; (2) it has no stop
strings, so `</tool_call>` could only be caught by streaming and cancelling after the fact;
(3) there is no per-request seed; (4) the policy version each request started under is not
observable. A scheduler over our own cache gives all four directly.

The parts (all model calls happen on one background thread; `generate` is awaited from any
number of asyncio tasks):
- `kv_slab.KVSlab`: a pre-allocated key/value cache whose rows come and go; a decode step writes
  one column in place instead of re-concatenating the cache, rows leave by moving others into
  their places.
- `prefill.prefill`: newly admitted prompts are prefilled together between two decode steps,
  identical prompts once, and a prompt prefix shared with earlier prompts (the chat template's
  header) once per weights version.
- `decode_rows.RowTable`: per-row sampling settings, counters and outputs as tensors, so a step
  samples, records and finds finished rows in a fixed number of tensor ops; only rows flagged
  as possibly finished get Python work.
Position ids are per row, so padding never shifts RoPE.

Weight updates (`update_weights`) are applied by that thread between two decode steps; in-flight
requests continue on the new weights with the KV cache computed by the old ones (as in
PipelineRL). Each result carries `policy_version` (weights when it started) and
`final_policy_version` (weights of its last token); every log-prob is exact for the weights
that sampled its token.

Other torch work can run on that same thread between two decode steps (`run_between_steps`):
the trainer puts its learner there when the two take turns, so the process keeps a single
OpenMP team (trainer/threads.py says why that matters on a CPU).

Left out: paged attention, CUDA graphs, speculative decoding, and models whose caches are not
plain key/value tensors (linear-attention / state-space layers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from spo_agents.backends.base import BackendClosedError, FinishReason, GenerationResult, SamplingParams
from spo_agents.backends.decode_rows import RowTable, StopTable
from spo_agents.backends.kv_slab import KVSlab
from spo_agents.backends.prefill import Prefilled, PrefixCache, prefill

__all__ = ["TransformersBackend"]


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: concurrent.futures.Future
    stop_ids: tuple[int, ...]
    generator: torch.Generator | None
    start_version: int = -1
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    row: int = -1  # its row in the running batch while it decodes
    arrival_step: int = 0  # decode steps done when it was queued
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


class TransformersBackend:
    """Continuous-batching backend over a transformers causal LM (see the module docstring).

    `max_batch_size` caps concurrent requests (the rest wait in FIFO order);
    `max_prefill_tokens` caps one prefill group (padded tokens). `seed` seeds the shared sampler
    used by requests that carry no seed of their own. `num_threads` sets the decode thread's
    torch intra-op threads. `min_shared_prefix` is the shortest prompt prefix worth computing
    once and reusing (0: never share). While a batch is decoding, requests that arrive are
    prefilled together once `admit_batch` of them wait or the oldest has waited
    `admit_wait_steps` decode steps (a prefill call costs about a decode step whatever its
    size; 1 and 0 admit at every step). Use as a context manager or call `close()`.
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
        min_shared_prefix: int = 16,
        admit_batch: int = 8,
        admit_wait_steps: int = 4,
    ) -> None:
        if admit_batch < 1 or admit_wait_steps < 0:
            raise ValueError(f"admit_batch must be >= 1 and admit_wait_steps >= 0, got {admit_batch}, "
                             f"{admit_wait_steps}")
        self.admit_batch, self.admit_wait_steps = admit_batch, admit_wait_steps
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.min_shared_prefix = min_shared_prefix
        self.device = next(model.parameters()).device
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self._default_stop_ids = self._model_eos_ids()
        # transformers 5.x renamed the forward argument `past_key_values` to `cache`.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._shared_generator = torch.Generator(device=self.device).manual_seed(seed)
        self._version = policy_version
        self._waiting: deque[_Request] = deque()
        self._cancelled: deque[_Request] = deque()
        self._pending_update: tuple[Any, int, concurrent.futures.Future] | None = None
        self._jobs: deque[tuple[Any, concurrent.futures.Future]] = deque()  # run_between_steps
        self._slab: KVSlab | None = None
        self._active: list[_Request] = []  # request of slab row i
        self._rows = RowTable(max_batch_size, self.device)
        vocab = max(len(tokenizer), int(getattr(model.config, "vocab_size", 0) or 0))
        self._stop_table = StopTable(tokenizer, vocab, self.device)
        self._prefix = PrefixCache()
        self._closing = False
        self._cv = threading.Condition()
        self._num_threads = num_threads  # applied by the decode thread (see set_num_threads)
        self.stats = {"decode_steps": 0, "generated_tokens": 0, "prefill_tokens": 0, "prompt_tokens": 0,
                      "batch_rows": 0, "threads": 0}
        self._thread = threading.Thread(target=self._loop, name="spo-transformers-decode", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def active_rows(self) -> int:
        """Requests in the running batch (decoding now)."""
        return len(self._active)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> concurrent.futures.Future:
        """Queue a request from any thread; the future resolves to a GenerationResult."""
        params = params or SamplingParams()
        if not prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        stop_ids = self._default_stop_ids if params.stop_token_ids is None else params.stop_token_ids
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        request = _Request(list(map(int, prompt_ids)), params, concurrent.futures.Future(), tuple(stop_ids), generator)
        request.future.add_done_callback(lambda f: self._cancelled.append(request) if f.cancelled() else None)
        with self._cv:
            if self._closing:
                raise BackendClosedError("the backend is closed")
            request.arrival_step = self.stats["decode_steps"]
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

    def run_between_steps(self, fn: Any, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Run `fn(*args, **kwargs)` on the decode thread between two decode steps (decoding
        pauses while it runs) with that thread's torch threads; the future holds its result.

        Why: each thread that runs torch ops on a CPU gets its own OpenMP team, and libgomp
        stops its idle workers from spinning once a process holds more OpenMP threads than
        cores; work that alternates with decoding anyway (a synchronous learner step) is
        faster here than in a thread of its own. Called from the decode thread, it runs at once.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = (lambda: fn(*args, **kwargs), future)
        if threading.current_thread() is self._thread:
            self._run_job(job)
            return future
        with self._cv:
            if self._closing:
                raise BackendClosedError("the backend is closed")
            self._jobs.append(job)
            self._cv.notify()
        return future

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
                    while not (self._closing or self._waiting or self._pending_update or self._active or self._jobs):
                        self._cv.wait()
                    if self._closing:
                        break
                    update, self._pending_update = self._pending_update, None
                    jobs = [self._jobs.popleft() for _ in range(len(self._jobs))]
                    room = self.max_batch_size - len(self._active)
                    admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))] \
                        if self._admission_due(room) else []
                self._apply_thread_count()
                for job in jobs:
                    self._run_job(job)
                if update is not None:
                    self._apply_update(*update)
                self._drop_cancelled()
                self._admit(admitted)
                if self._active:
                    try:
                        self._decode_step()
                    except Exception as exc:  # the batch's cache is suspect: fail its requests, keep the loop
                        self._fail(list(self._active), exc)
        self._abort_all()

    def _admission_due(self, room: int) -> bool:
        """Prefill the waiting requests now, or let the running batch take more decode steps
        first so that later arrivals share the prefill call (see the class docstring)."""
        if not self._waiting or room <= 0:
            return False
        return (not self._active or len(self._waiting) >= min(self.admit_batch, room)
                or self.stats["decode_steps"] - self._waiting[0].arrival_step >= self.admit_wait_steps)

    def _admit(self, requests: list[_Request]) -> None:
        """Prefill newly admitted requests in token-budgeted groups and add them to the batch.

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
                prefilled = prefill(self.model, self._cache_arg, [r.prompt_ids for r in group], self._prefix,
                                    self.min_shared_prefix)
            except Exception as exc:
                self._fail(group, exc)
                continue
            try:
                start = self._add_rows(group, prefilled)
            except Exception as exc:  # a half-written slab is unusable
                self._fail(group + self._active, exc)
                continue
            self.stats["prefill_tokens"] += prefilled.computed_tokens
            self.stats["prompt_tokens"] += sum(len(r.prompt_ids) for r in group)
            self._sample_and_finish(prefilled.logits, start)

    def _accepts(self, request: _Request) -> bool:
        """A prompt that fills the context window finishes at once with LENGTH and no tokens."""
        request.start_version = self._version
        if len(request.prompt_ids) < self.max_context:
            return True
        request.finish_reason, request.token_ids, request.logprobs = FinishReason.LENGTH, [], []
        self._resolve(request)
        return False

    def _add_rows(self, group: list[_Request], prefilled: Prefilled) -> int:
        keys = [k for k, _ in prefilled.layers]
        if self._slab is None:
            width = prefilled.mask.shape[1]
            self._slab = KVSlab(keys, self.max_batch_size, rows=len(group), columns=width + 64)
        start = self._slab.add_rows(keys, [v for _, v in prefilled.layers], prefilled.mask)
        for offset, request in enumerate(group):
            params = request.params
            limit = min(params.max_new_tokens, self.max_context - len(request.prompt_ids))
            self._stop_table.add(params.stop_strings)
            self._rows.set_row(start + offset, params, request.stop_ids, limit, len(request.prompt_ids),
                               request.generator)
            request.row = start + offset
            self._active.append(request)
        return start

    def _decode_step(self) -> None:
        slab, rows = self._slab, self._rows
        n = slab.rows
        cache = slab.view()
        out = self.model(
            input_ids=rows.last_token[:n].unsqueeze(1),
            attention_mask=slab.step_mask(),
            position_ids=rows.next_position[:n].unsqueeze(1),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        slab.advance()
        rows.next_position[:n] += 1
        self.stats["decode_steps"] += 1
        self.stats["batch_rows"] += n
        self._sample_and_finish(out.logits[:, -1, :], 0)

    # ------------------------------------------------------------------ sampling and stopping
    def _sample_and_finish(self, logits_B_V: torch.Tensor, start: int) -> None:
        """Sample one token for rows start..start+B-1, record it, and finish the rows that stopped."""
        tokens_B, logprobs_B = self._rows.sample(logits_B_V, start, self._shared_generator)
        self._rows.record(tokens_B, logprobs_B, start)
        self.stats["generated_tokens"] += tokens_B.shape[0]
        finished = []
        for row in self._rows.flagged(tokens_B, start, self._stop_table):
            request = self._active[row]
            token_ids, logprobs = self._rows.output(row)
            if self._check_stop(request, token_ids):
                request.token_ids, request.logprobs = token_ids, logprobs
                self._resolve(request)
                finished.append(row)
        self._remove_rows(finished)

    def _remove_rows(self, finished: list[int]) -> None:
        if not finished:
            return
        moves = self._slab.remove_rows(finished)
        self._rows.move(moves)
        for source, destination in moves:
            self._active[destination] = self._active[source]
            self._active[destination].row = destination
        del self._active[self._slab.rows:]

    def _drop_cancelled(self) -> None:
        """Rows of requests whose callers cancelled them leave the batch (nothing to resolve)."""
        rows = []
        while self._cancelled:
            request = self._cancelled.popleft()
            if 0 <= request.row < len(self._active) and self._active[request.row] is request:
                rows.append(request.row)
        self._remove_rows(sorted(set(rows)))

    def _check_stop(self, request: _Request, token_ids: list[int]) -> bool:
        """Set the finish reason if the last token ends the request; True when it does."""
        params, token = request.params, token_ids[-1]
        if token in request.stop_ids:
            request.stop_reason = token
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            request.finish_reason = self._stop_kind(text, params)
            return True
        if params.stop_strings:
            window = max(len(s) for s in params.stop_strings)
            tail = self.tokenizer.decode(token_ids[-window:], skip_special_tokens=False)
            for stop in params.stop_strings:
                if stop in tail:
                    request.stop_reason = stop
                    request.finish_reason = self._stop_kind(stop, params)
                    return True
        if len(token_ids) >= params.max_new_tokens or len(request.prompt_ids) + len(token_ids) >= self.max_context:
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
            token_ids=request.token_ids or [],
            logprobs=request.logprobs or [],
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
        if any(id(r) in failing for r in self._active):
            for request in self._active:
                request.row = -1
            self._active, self._slab = [], None
        for request in requests:
            if not request.future.done():
                try:
                    request.future.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass

    @staticmethod
    def _run_job(job: tuple[Any, concurrent.futures.Future]) -> None:
        call, future = job
        if not future.set_running_or_notify_cancel():
            return
        try:
            with torch.enable_grad():  # the decode loop itself runs under no_grad
                result = call()
        except BaseException as exc:  # the caller gets it; the decode loop goes on
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _abort_all(self) -> None:
        with self._cv:
            leftover = list(self._waiting)
            self._waiting.clear()
            update, self._pending_update = self._pending_update, None
            jobs = [self._jobs.popleft() for _ in range(len(self._jobs))]
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(BackendClosedError("the backend closed before the job ran"))
        for request in self._active:  # partial outputs of the running batch
            request.token_ids, request.logprobs = self._rows.output(request.row)
        leftover += self._active
        self._active, self._slab = [], None
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
            self._prefix.clear()  # its keys and values belong to the old weights
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
