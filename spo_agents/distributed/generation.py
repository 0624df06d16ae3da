"""Generation engines as Ray actors behind the one Backend protocol.

Why: one process can host one model replica; a cluster serves the rollout from several (GPU
nodes, or clients of vLLM/SGLang servers placed next to them). `RayGenerationBackend` is a
`Backend` for the rollout engine like any other: `await generate(prompt_ids, params)` goes to
the replica with the fewest requests in flight (round-robin among equals), and each replica is
a `GenerationWorker` actor hosting a backend made from a `GenerationSpec`:
- `kind="transformers"`: `load_model(spec.model)` + the continuous-batching TransformersBackend;
- `kind="openai"`: the httpx client of an OpenAI-compatible server (`vllm serve`, SGLang,
  `spo-agents serve`) at `base_url`: one actor per server;
- `kind="vllm"`: the in-process vLLM engine (GPU; give the actor `num_gpus=1`).
Each actor is an async actor: its concurrent requests reach the hosted backend together and
are batched there, exactly as in-process.

Only plain data crosses the boundary: prompt ids and a dict of SamplingParams go in, a dict of
the GenerationResult comes back (finish reason as its string value).

`update_weights(state_dict, version)` converts the weights to numpy once, `ray.put`s them once
and hands the same object reference to every replica (Ray ships one copy per node); it returns
when all replicas report the new version. A replica that dies is restarted by Ray
(`max_restarts`) with the weights of its spec, so the backend keeps the last weights' reference
and pushes it to a restarted replica before its next request. Results always carry the version
of the weights that produced them, so a learner's staleness bound stays truthful meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

try:
    import ray
except ImportError as exc:  # an optional dependency
    raise ImportError("RayGenerationBackend needs Ray: pip install 'spo-agents[ray]'") from exc
from ray.exceptions import RayActorError

from spo_agents.backends.base import FinishReason, GenerationResult, SamplingParams
from spo_agents.distributed.transport import arrays_to_weights, init_ray, to_plain, weights_to_arrays

KINDS = ("transformers", "openai", "vllm")


@dataclass
class GenerationSpec:
    """What one generation actor hosts (plain data: it is sent to the actor).

    transformers: `model` is a `load_model` spec (`tiny`, `smollm2-135m`, a folder, a .gguf);
    `device`, `dtype`, `seed`, `max_batch_size`, `max_prefill_tokens` as for TransformersBackend.
    openai: `base_url` of the server, `model` its served name (None: ask /v1/models); `options`
    go to OpenAICompatibleBackend (dialect, timeout, max_retries, weights_dir, ...).
    vllm: `model` a Hub id or folder; `options` go to vLLM's engine args.
    """

    kind: str = "transformers"
    model: str | None = "tiny"
    base_url: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    max_batch_size: int = 64
    max_prefill_tokens: int = 8192
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown generation kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("an openai generation spec needs base_url")
        if self.kind in ("transformers", "vllm") and not self.model:
            raise ValueError(f"a {self.kind} generation spec needs a model")


def build_backend(spec: GenerationSpec) -> Any:
    """The backend a generation actor hosts (imports only what its kind needs)."""
    if spec.kind == "transformers":
        import torch

        from spo_agents.backends.models import load_model
        from spo_agents.backends.omp import in_own_thread
        from spo_agents.backends.transformers_backend import TransformersBackend

        # loaded in a thread that ends: the decoding thread's OpenMP team is the actor's only one
        loaded = in_own_thread(load_model, spec.model, dtype=getattr(torch, spec.dtype), device=spec.device,
                               seed=spec.seed)
        return TransformersBackend(loaded.model, loaded.tokenizer, max_batch_size=spec.max_batch_size,
                                   max_prefill_tokens=spec.max_prefill_tokens, seed=spec.seed)
    if spec.kind == "openai":
        from spo_agents.backends.openai_client import OpenAICompatibleBackend

        return OpenAICompatibleBackend(spec.base_url, model=spec.model, **spec.options)
    from spo_agents.backends.vllm_backend import VLLMBackend

    return VLLMBackend(spec.model, **spec.options)


def params_to_plain(params: SamplingParams) -> dict[str, Any]:
    return to_plain(dataclasses.asdict(params))


def result_to_plain(result: GenerationResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["finish_reason"] = FinishReason(result.finish_reason).value
    data["token_ids"] = [int(t) for t in result.token_ids]
    data["logprobs"] = [float(v) for v in result.logprobs]
    return to_plain(data)


class GenerationWorker:
    """A Ray actor hosting one backend (wrapped with `ray.remote` by RayGenerationBackend)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = GenerationSpec(**spec)
        self.backend = build_backend(self.spec)
        self.requests = 0

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "kind": self.spec.kind, "requests": self.requests,
                "policy_version": int(self.backend.policy_version)}

    async def generate(self, prompt_ids: list[int], params: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        result = await self.backend.generate(prompt_ids, SamplingParams(**params))
        return result_to_plain(result)

    async def update_weights(self, arrays: Mapping[str, Any], version: int) -> int:
        weights = arrays_to_weights(arrays)
        if hasattr(self.backend, "aupdate_weights"):  # the HTTP client: no blocking of this loop
            await self.backend.aupdate_weights(weights, version)
        else:  # in-process backends copy between decode steps and block until done
            await asyncio.get_running_loop().run_in_executor(None, self.backend.update_weights, weights, version)
        return int(self.backend.policy_version)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref)  # an async actor cancels the request's task; the backend drops it
    except Exception:  # already finished, or the actor is gone
        pass


class GenerationWorkerDied(RuntimeError):
    """A generation actor died with this request in flight (Ray restarts it)."""


class RayGenerationBackend:
    """The Backend protocol over `num_workers` generation actors (see the module docstring).

    `spec` is one GenerationSpec (replicated `num_workers` times) or a list of them (one actor
    each, e.g. one per vLLM server). `num_cpus` / `num_gpus` / `resources` are each actor's Ray
    resources; `max_concurrency` bounds the requests one actor accepts at once.
    """

    def __init__(self, spec: GenerationSpec | Sequence[GenerationSpec], num_workers: int = 1, *,
                 num_cpus: float = 1.0, num_gpus: float = 0.0, resources: dict[str, float] | None = None,
                 max_restarts: int = 3, max_concurrency: int = 1024, policy_version: int = 0,
                 address: str | None = None):
        specs = [spec] * num_workers if isinstance(spec, GenerationSpec) else list(spec)
        if not specs:
            raise ValueError("at least one generation worker is needed")
        init_ray(address)
        worker_cls = ray.remote(GenerationWorker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {}, max_restarts=max_restarts,
            max_task_retries=0, max_concurrency=max_concurrency)
        self.specs = specs
        self.workers = [worker_cls.remote(to_plain(dataclasses.asdict(s))) for s in specs]
        self._inflight = [0] * len(specs)
        self._turn = 0
        self._version = policy_version
        self._weights_ref: Any = None  # the last pushed weights, for replicas that restart
        self._stale: set[int] = set()
        self._resyncs: dict[int, asyncio.Future] = {}
        self.stats = {"requests": [0] * len(specs), "worker_deaths": 0, "resyncs": 0}

    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def ready(self, timeout_s: float = 300.0) -> list[dict[str, Any]]:
        """Block until every replica has loaded its backend; their `info()`."""
        return ray.get([w.info.remote() for w in self.workers], timeout=timeout_s)

    def _pick(self) -> int:
        order = [(self._turn + k) % self.num_workers for k in range(self.num_workers)]
        index = min(order, key=lambda i: self._inflight[i])
        self._turn = (index + 1) % self.num_workers
        return index

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> GenerationResult:
        params = params or SamplingParams()
        if not prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        index = self._pick()
        self._inflight[index] += 1
        try:
            if index in self._stale:
                await self._resync(index)
            self.stats["requests"][index] += 1
            dispatched_at_version = self._version
            ref = self.workers[index].generate.remote([int(t) for t in prompt_ids], params_to_plain(params))
            try:
                data = await asyncio.wrap_future(ref.future())
            except asyncio.CancelledError:  # the episode was cancelled: drop the request remotely too
                _cancel(ref)
                raise
            if data["policy_version"] < dispatched_at_version and self._weights_ref is not None:
                self._stale.add(index)  # it restarted unseen (while idle) and lost the pushed weights
        except RayActorError as exc:
            self.stats["worker_deaths"] += 1
            if self._weights_ref is not None:
                self._stale.add(index)
            raise GenerationWorkerDied(f"generation worker {index} died: {type(exc).__name__}") from None
        finally:
            self._inflight[index] -= 1
        return GenerationResult(**data)

    async def _resync(self, index: int) -> None:
        """Push the last weights to a restarted replica (once, however many requests wait)."""
        pending = self._resyncs.get(index)
        if pending is None:
            ref = self.workers[index].update_weights.remote(self._weights_ref, self._version)
            pending = self._resyncs[index] = asyncio.wrap_future(ref.future())
            pending.add_done_callback(lambda _: self._resyncs.pop(index, None))
        await asyncio.shield(pending)
        self._stale.discard(index)
        self.stats["resyncs"] += 1

    def _broadcast(self, weights: Any, version: int) -> list[Any]:
        ref = ray.put(weights_to_arrays(weights))  # one copy in the object store, shared by all
        self._weights_ref = ref
        return [w.update_weights.remote(ref, int(version)) for w in self.workers]

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None:
        """Send new weights to every replica and wait until all report `version` (blocking)."""
        versions = ray.get(self._broadcast(weights, version))
        self._finish_update(versions, version)

    async def aupdate_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None:
        """`update_weights` for use inside the event loop (does not block it while replicas load)."""
        refs = self._broadcast(weights, version)
        versions = await asyncio.gather(*(asyncio.wrap_future(r.future()) for r in refs))
        self._finish_update(list(versions), version)

    def _finish_update(self, versions: list[int], version: int) -> None:
        if any(v != int(version) for v in versions):
            raise RuntimeError(f"replicas report versions {versions} after pushing version {version}")
        self._version = int(version)
        self._stale.clear()

    def close(self) -> None:
        """Close the hosted backends and end the actors."""
        try:
            ray.get([w.close.remote() for w in self.workers], timeout=30)
        except Exception:  # a dead replica has nothing to close
            pass
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []

    def __enter__(self) -> "RayGenerationBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
