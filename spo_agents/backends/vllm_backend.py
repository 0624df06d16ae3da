"""The Backend protocol over an in-process vLLM engine (GPU only; the `vllm` extra).

Why in-process: with the learner and the engine in one program there is no HTTP hop per turn and
no server to babysit, and weights can be pushed straight into the engine's workers. vLLM's V1
`AsyncLLM` does the continuous batching, paged attention and prefix caching; this module only
translates between spo-agents' protocol and vLLM's:

- requests: `TokensPrompt(prompt_token_ids=...)` and `vllm.SamplingParams` with `logprobs=0`
  (the sampled token's log-prob only), `skip_special_tokens=False`,
  `include_stop_str_in_output=True`, stop strings, and `stop_token_ids` with `ignore_eos=True`
  when the caller gave an explicit stop set;
- results: the final `RequestOutput.outputs[0]` (`token_ids`, `logprobs[i][token_id].logprob`,
  `finish_reason`, `stop_reason`, `text`) becomes a `GenerationResult`; a stop ending in
  `</tool_call>` becomes `FinishReason.TOOL_CALL`.
- engine defaults: `logprobs_mode="processed_logprobs"` (log-probs after temperature, which with
  `top_k=0, top_p=1` is exactly `log_softmax(logits / T)`; the default `raw_logprobs` matches
  only at T = 1), `generation_config="vllm"` (the model's generation_config.json must not inject
  sampling defaults) and prefix caching.

Weight updates: the state dict is written to a safetensors file under `weights_dir` and loaded by
every worker through `collective_rpc` into our worker extension (`SPOWorkerExtension` of
vllm_worker.py, installed with `worker_extension_cls`), which calls vLLM's in-place reload (or the
model's own `load_weights`) (the HF-name loader vLLM
uses for checkpoints, so fused projections are handled). vLLM runs utility calls between engine
steps, so requests in flight keep going under the new weights (as in PipelineRL); the prefix
cache is then reset, because cached KV blocks were computed by the old weights.

vLLM is imported only inside functions that need it; without it, `VLLMBackend(...)` raises an
ImportError that says how to install it. The conversion functions are pure and tested without
vLLM; the real engine is tested only where vLLM and a GPU are present (tests/backends/test_vllm_backend.py).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from spo_agents.backends.base import GenerationResult, SamplingParams
from spo_agents.backends.openai_client import BackendProtocolError, finish_reason_from, save_safetensors
from spo_agents.backends.vllm_worker import EXTENSION_PATH, LOAD_METHOD, SPOWorkerExtension

__all__ = [
    "VLLMBackend",
    "SPOWorkerExtension",
    "ENGINE_DEFAULTS",
    "WORKER_EXTENSION",
    "import_vllm",
    "vllm_sampling_kwargs",
    "result_from_vllm_output",
]

WORKER_EXTENSION = EXTENSION_PATH  # the worker side lives in vllm_worker.py (no vLLM or httpx import)
ENGINE_DEFAULTS: dict[str, Any] = {
    "enable_prefix_caching": True,
    "generation_config": "vllm",
    "logprobs_mode": "processed_logprobs",
    "worker_extension_cls": WORKER_EXTENSION,
}
_INSTALL_HINT = ("the vLLM backend needs vLLM on a CUDA machine: pip install 'spo-agents[vllm]' (or pip install vllm); "
                 "on CPU use the transformers backend, or a remote server through OpenAICompatibleBackend")


def import_vllm() -> Any:
    """`import vllm`, or an ImportError that says what to install."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return vllm


# ---------------------------------------------------------------------------- pure translation
def vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` that mean what `params` means."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # -1 disables in every vLLM release
        "max_tokens": params.max_new_tokens,
        "seed": params.seed,
        "stop": list(params.stop_strings) or None,
        "logprobs": 0,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
        "detokenize": True,  # stop strings are matched on text
    }
    if params.stop_token_ids is not None:  # an explicit stop set replaces the model's EOS
        kwargs["stop_token_ids"] = list(params.stop_token_ids)
        kwargs["ignore_eos"] = True
    return kwargs


def _sampled_logprob(entry: Any, token_id: int, position: int) -> float:
    """The sampled token's log-prob from one `logprobs[i]` entry ({id: Logprob} or {id: float})."""
    if entry is None or token_id not in entry:
        raise BackendProtocolError(f"vLLM returned no log-prob for sampled token {token_id} at position {position}")
    value = entry[token_id]
    return float(getattr(value, "logprob", value))


def result_from_vllm_output(
    output: Any,
    params: SamplingParams,
    *,
    policy_version: int,
    final_policy_version: int,
    prompt_len: int,
) -> GenerationResult:
    """A GenerationResult from a final vLLM `RequestOutput` (or directly its `CompletionOutput`)."""
    completion = output.outputs[0] if hasattr(output, "outputs") else output
    token_ids = [int(t) for t in completion.token_ids]
    entries = completion.logprobs
    if entries is None:
        raise BackendProtocolError("vLLM returned no log-probs; the request must set logprobs=0")
    if len(entries) != len(token_ids):
        raise BackendProtocolError(f"{len(token_ids)} token ids but {len(entries)} log-prob entries")
    logprobs = [_sampled_logprob(entries[i], t, i) for i, t in enumerate(token_ids)]
    finish = finish_reason_from(completion.finish_reason, completion.stop_reason, completion.text or "",
                                params.tool_call_stop)
    return GenerationResult(
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=finish,
        policy_version=policy_version,
        final_policy_version=final_policy_version,
        stop_reason=completion.stop_reason,
        prompt_len=prompt_len,
    )


# ---------------------------------------------------------------------------- the backend
class VLLMBackend:
    """The Backend protocol over vLLM's `AsyncLLM`, in this process (see the module docstring).

    `model` is a Hub id or a local folder; `engine_kwargs` go to `vllm.AsyncEngineArgs` on top of
    `ENGINE_DEFAULTS` (e.g. `gpu_memory_utilization=0.5, max_model_len=8192, dtype="bfloat16"`).
    `weights_dir` holds the transient safetensors files of weight updates (default: a temporary
    folder). Call `close()` when done.
    """

    def __init__(self, model: str, *, policy_version: int = 0, weights_dir: str | Path | None = None,
                 **engine_kwargs: Any) -> None:
        vllm = import_vllm()
        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:  # older layouts export it at the top level
            AsyncLLM = vllm.AsyncLLMEngine
        from vllm.sampling_params import RequestOutputKind

        args = vllm.AsyncEngineArgs(model=model, **{**ENGINE_DEFAULTS, **engine_kwargs})
        self.engine = AsyncLLM.from_engine_args(args)
        self._vllm = vllm
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._version = policy_version
        self._updating_to: int | None = None
        self._weights_dir = Path(weights_dir) if weights_dir is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._update_lock: asyncio.Lock | None = None

    @property
    def policy_version(self) -> int:
        return self._version

    def _version_now(self) -> int:
        """The newest version that may have produced a token (an update in progress counts)."""
        return self._version if self._updating_to is None else self._updating_to

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> GenerationResult:
        """Generate one completion; cancelling the awaiting task aborts the request in vLLM."""
        params = params or SamplingParams()
        if not prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        self._loop = asyncio.get_running_loop()
        sampling = self._vllm.SamplingParams(**vllm_sampling_kwargs(params), output_kind=self._final_only)
        prompt = {"prompt_token_ids": [int(t) for t in prompt_ids]}  # a vllm.inputs.TokensPrompt
        start, final = self._version, None
        async for output in self.engine.generate(prompt, sampling, f"spo-{uuid.uuid4().hex}"):
            final = output
        if final is None:
            raise BackendProtocolError("vLLM finished the request without an output")
        return result_from_vllm_output(final, params, policy_version=start, final_policy_version=self._version_now(),
                                       prompt_len=len(prompt_ids))

    async def aupdate_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None:
        """Load new weights into every worker between engine steps; requests in flight continue."""
        if self._update_lock is None:
            self._update_lock = asyncio.Lock()
        async with self._update_lock:
            folder = self._weights_dir or Path(tempfile.mkdtemp(prefix="spo-vllm-weights-"))
            folder.mkdir(parents=True, exist_ok=True)
            self._weights_dir = folder
            path = folder / f"policy-v{int(version)}.safetensors"
            self._updating_to = int(version)
            try:
                await asyncio.to_thread(save_safetensors, weights, path)
                await self.engine.collective_rpc(LOAD_METHOD, args=(str(path),))
                await self.engine.reset_prefix_cache()
                self._version = int(version)
            finally:
                self._updating_to = None
                path.unlink(missing_ok=True)

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None:
        """Blocking `aupdate_weights` for a thread other than the one running the engine's event loop."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            raise RuntimeError("no running event loop drives this vLLM engine yet; "
                               "call `await backend.aupdate_weights(weights, version)` inside it")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("update_weights would block the event loop that drives the engine; "
                               "use `await backend.aupdate_weights(weights, version)` there")
        asyncio.run_coroutine_threadsafe(self.aupdate_weights(weights, version), loop).result()

    def close(self) -> None:
        """Shut the engine down (its worker processes exit)."""
        self.engine.shutdown()

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
