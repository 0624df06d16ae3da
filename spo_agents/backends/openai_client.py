"""The Backend protocol over HTTP: any OpenAI-compatible server that returns token ids and log-probs.

Why HTTP: on GPUs the fast engines (vLLM, SGLang) run as servers, often on other machines than
the learner, and `spo-agents serve` exposes the CPU transformers backend the same way. The client
sends the prompt as token ids to `POST /v1/completions` and reads back the sampled ids and one
log-prob per token, so nothing is ever re-tokenised (the drift problem of docs/rollouts.md).

Request (dialect "vllm", also what `spo-agents serve` speaks): `prompt` = token ids,
`logprobs: 0` (the sampled token only), `return_tokens_as_token_ids` and `return_token_ids`
(ids as `"token_id:N"` strings and as `choices[0].token_ids`), `skip_special_tokens: false`,
`include_stop_str_in_output: true`, `stop` strings, and `stop_token_ids` with `ignore_eos: true`
when the caller gave an explicit stop set (so exactly those ids stop, as `SamplingParams` means).
Dialect "sglang" differs only where SGLang does: `no_stop_trim` instead of
`include_stop_str_in_output`, `matched_stop` instead of `stop_reason`, no `"token_id:N"` tokens.
A stop whose string (or text) ends with `</tool_call>` becomes `FinishReason.TOOL_CALL`.

Transport: one pooled `httpx.AsyncClient` per event loop (httpx pools are bound to the loop that
made them), explicit connect/read timeouts, retries with exponential backoff and jitter on
connection errors, timeouts, 408, 429 (honouring `Retry-After`) and 5xx, never on other 4xx.
Failures raise `BackendHTTPError` (status, URL, attempts, an excerpt of the body);
timeouts raise its subclass `BackendTimeoutError`.

Weights: `update_weights(state_dict, version)` writes a safetensors file under `weights_dir`
(which the server must be able to read: same machine or a shared filesystem) and tells the
server to load it. `server` says how: `"spo"` calls `POST /v1/load_weights` of `spo-agents
serve`; `"vllm"` and `"sglang"` run those servers' own pause / load / resume sequences
(server_weights.py, which cites the versions and source files followed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import httpx

from spo_agents.backends.base import FinishReason, GenerationResult, SamplingParams

__all__ = [
    "OpenAICompatibleBackend",
    "BackendHTTPError",
    "BackendTimeoutError",
    "BackendProtocolError",
    "build_completion_body",
    "parse_completion_choice",
    "finish_reason_from",
    "parse_token_id",
    "save_safetensors",
]

Dialect = Literal["vllm", "sglang"]
Server = Literal["spo", "vllm", "sglang"]  # how weights are pushed (server_weights.SERVERS)
_BODY_EXCERPT = 500


class BackendHTTPError(RuntimeError):
    """An HTTP call to a generation server failed (after retries, where retrying made sense).

    `status` is the HTTP status (None for connection errors and timeouts), `body` an excerpt of
    the response body, `attempts` how many tries were made.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None, body: str = "", attempts: int = 1) -> None:
        self.url, self.status, self.body, self.attempts = url, status, body, attempts
        detail = f" [HTTP {status}]" if status is not None else ""
        excerpt = f": {body}" if body else ""
        super().__init__(f"{message}{detail} at {url} after {attempts} attempt(s){excerpt}")


class BackendTimeoutError(BackendHTTPError, TimeoutError):
    """The server did not answer within the configured timeout (after retries)."""


class BackendProtocolError(RuntimeError):
    """The server answered 2xx but not with token ids and one log-prob per token."""


# ---------------------------------------------------------------------------- pure translation
def build_completion_body(
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    model: str | None,
    dialect: Dialect = "vllm",
    logprobs: int = 0,
) -> dict[str, Any]:
    """The `/v1/completions` JSON body for one request (see the module docstring for the fields)."""
    body: dict[str, Any] = {
        "prompt": [int(t) for t in prompt_ids],
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # -1 disables in both vLLM and SGLang
        "n": 1,
        "logprobs": logprobs,
        "return_token_ids": True,
        "skip_special_tokens": False,
        "stop": list(params.stop_strings),
    }
    if model is not None:
        body["model"] = model
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop_token_ids is not None:  # an explicit stop set replaces the model's EOS
        body["stop_token_ids"] = list(params.stop_token_ids)
        body["ignore_eos"] = True
    if dialect == "vllm":
        body["return_tokens_as_token_ids"] = True
        body["include_stop_str_in_output"] = True
    elif dialect == "sglang":
        body["no_stop_trim"] = True
    else:
        raise ValueError(f"unknown dialect {dialect!r}; expected 'vllm' or 'sglang'")
    return body


def parse_token_id(token: str) -> int:
    """`"token_id:123"` (vLLM's `return_tokens_as_token_ids` form) -> 123."""
    prefix, _, number = str(token).partition(":")
    if prefix != "token_id" or not number.lstrip("-").isdigit():
        raise BackendProtocolError(f"expected a 'token_id:N' token, got {token!r}; "
                                   "ask the server for return_tokens_as_token_ids or return_token_ids")
    return int(number)


def finish_reason_from(finish: str | None, stop_reason: Any, text: str, tool_call_stop: str | None) -> FinishReason:
    """Map an OpenAI/vLLM finish reason (and what stopped it) to ours."""
    if finish == "length":
        return FinishReason.LENGTH
    if finish in (None, "abort", "cancelled"):
        return FinishReason.ABORT
    if finish == "stop" and tool_call_stop:
        by_string = isinstance(stop_reason, str) and stop_reason.endswith(tool_call_stop)
        if by_string or (text or "").endswith(tool_call_stop):
            return FinishReason.TOOL_CALL
    return FinishReason.STOP


def parse_completion_choice(
    choice: Mapping[str, Any],
    params: SamplingParams,
    *,
    policy_version: int,
    final_policy_version: int,
    prompt_len: int,
) -> GenerationResult:
    """A GenerationResult from `choices[0]` of a completion response.

    Token ids come from `token_ids` (vLLM with `return_token_ids`, SGLang, `spo-agents serve`)
    or else from the `"token_id:N"` strings of `logprobs.tokens`. Our server's `policy_version`
    fields, when present, replace the client-side versions.
    """
    block = choice.get("logprobs") or {}
    values = block.get("token_logprobs")
    if values is None:
        raise BackendProtocolError("the response has no logprobs.token_logprobs; the server must support `logprobs`")
    if any(v is None for v in values):
        raise BackendProtocolError("the response has null token log-probs")
    ids = choice.get("token_ids")
    token_ids = [int(t) for t in ids] if ids is not None else [parse_token_id(t) for t in block.get("tokens", [])]
    if len(token_ids) != len(values):
        raise BackendProtocolError(f"{len(token_ids)} token ids but {len(values)} log-probs in the response")
    stop_reason = choice.get("stop_reason", choice.get("matched_stop"))
    finish = finish_reason_from(choice.get("finish_reason"), stop_reason, choice.get("text") or "", params.tool_call_stop)
    return GenerationResult(
        token_ids=token_ids,
        logprobs=[float(v) for v in values],
        finish_reason=finish,
        policy_version=int(choice.get("policy_version", policy_version)),
        final_policy_version=int(choice.get("final_policy_version", final_policy_version)),
        stop_reason=stop_reason,
        prompt_len=prompt_len,
    )


def save_safetensors(weights: Any, path: str | Path) -> int:
    """Write a state dict (or a module's) to `path` atomically; returns the number of tensors.

    Tensors are copied to CPU; tensors sharing storage (tied embeddings) are cloned, because the
    safetensors format stores each name's bytes separately.
    """
    import torch
    from safetensors.torch import save_file

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
    tensors, seen = {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial))
    os.replace(partial, path)
    return len(tensors)


# ---------------------------------------------------------------------------- the backend
class OpenAICompatibleBackend:
    """The Backend protocol over an OpenAI-compatible completions endpoint (see the module docstring).

    `base_url` is the server root (`http://host:8000`; a trailing `/v1` is accepted). `model`
    None asks `/v1/models` once. `timeout` bounds one attempt of a generation (read time),
    `connect_timeout` the connection; `max_retries` retries follow the first attempt, waiting
    `backoff_base * 2**k` seconds (capped at `backoff_max`, with jitter). `weights_dir` is where
    `update_weights` writes safetensors files (default: a fresh temporary folder, fine when the
    server runs on this machine). `server` (`spo`, `vllm`, `sglang`) picks the weight-update
    route (see the module docstring). Close with `close()` / `aclose()` or use as a context manager.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        dialect: Dialect = "vllm",
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        max_connections: int = 512,
        max_keepalive_connections: int = 128,
        logprobs: int = 0,
        weights_dir: str | Path | None = None,
        weights_timeout: float = 600.0,
        policy_version: int = 0,
        server: Server = "spo",
    ) -> None:
        build_completion_body([0], SamplingParams(), model=None, dialect=dialect)  # validates the dialect
        if server not in ("spo", "vllm", "sglang"):
            raise ValueError(f"unknown generation server {server!r}; expected 'spo', 'vllm' or 'sglang'")
        self.server = server
        root = base_url.rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.model, self.dialect, self.logprobs = model, dialect, logprobs
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._weights_timeout = httpx.Timeout(weights_timeout, connect=connect_timeout)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive_connections)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._weights_dir = Path(weights_dir) if weights_dir is not None else None
        self._last_weights: Path | None = None
        self._version = policy_version
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self.stats = {"requests": 0, "retries": 0, "failures": 0}

    @property
    def policy_version(self) -> int:
        return self._version

    # ------------------------------------------------------------------ transport
    def _client(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop (clients of closed loops are dropped)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            self._clients = {lp: c for lp, c in self._clients.items() if not lp.is_closed()}
            client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits, headers=self._headers)
            self._clients[loop] = client
        return client

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            try:
                delay = max(delay, min(float(retry_after), self.backoff_max))
            except ValueError:
                pass
        return delay

    async def _request(self, client: httpx.AsyncClient, method: str, path: str, *, json: Any = None,
                       timeout: httpx.Timeout | None = None) -> Any:
        """One HTTP call with retries; returns the decoded JSON body or raises BackendHTTPError."""
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            self.stats["requests"] += 1
            retry_after = None
            try:
                response = await client.request(method, url, json=json, timeout=timeout or self._timeout)
            except httpx.TimeoutException as exc:
                error: BackendHTTPError = BackendTimeoutError(f"timed out ({type(exc).__name__})", url=url, attempts=attempt + 1)
            except httpx.TransportError as exc:
                error = BackendHTTPError(f"cannot reach the server ({type(exc).__name__}: {exc})", url=url, attempts=attempt + 1)
            else:
                if response.status_code < 400:
                    return self._decode(response, url)
                error = BackendHTTPError(f"{method} {path} failed", url=url, status=response.status_code,
                                         body=response.text[:_BODY_EXCERPT], attempts=attempt + 1)
                retry_after = response.headers.get("retry-after")
                if not _retryable(response.status_code):
                    break
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(self._backoff(attempt, retry_after))
        self.stats["failures"] += 1
        raise error

    @staticmethod
    def _decode(response: httpx.Response, url: str) -> Any:
        if not response.content:  # vLLM answers some control calls with an empty 200
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise BackendProtocolError(f"{url} answered {response.status_code} with a body that is not JSON: "
                                       f"{response.text[:_BODY_EXCERPT]!r}") from exc

    async def _model_name(self, client: httpx.AsyncClient) -> str:
        if self.model is None:
            listing = await self._request(client, "GET", "/v1/models")
            models = [m.get("id") for m in listing.get("data", [])]
            if not models:
                raise BackendProtocolError(f"{self.base_url}/v1/models lists no model")
            self.model = str(models[0])
        return self.model

    # ------------------------------------------------------------------ the protocol
    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> GenerationResult:
        """Generate one completion on the server; retried on transient failures."""
        params = params or SamplingParams()
        if not prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        client = self._client()
        start_version = self._version
        body = build_completion_body(prompt_ids, params, model=await self._model_name(client),
                                     dialect=self.dialect, logprobs=self.logprobs)
        data = await self._request(client, "POST", "/v1/completions", json=body)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            raise BackendProtocolError(f"the completion response has no choices: {str(data)[:_BODY_EXCERPT]}")
        return parse_completion_choice(choices[0], params, policy_version=start_version,
                                       final_policy_version=self._version, prompt_len=len(prompt_ids))

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None:
        """Push weights to the server (`server`: spo, vllm, sglang) and wait until they are live (blocking).

        Runs its HTTP call on a private event loop in a worker thread, so it may be called from any
        thread; inside a coroutine prefer `await aupdate_weights(...)`, which does not block the loop.
        """
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spo-weights") as pool:
            pool.submit(asyncio.run, self._update_with_own_client(weights, version)).result()

    async def aupdate_weights(self, weights: Mapping[str, Any] | Any, version: int) -> dict[str, Any]:
        """`update_weights` for use inside the event loop; returns the server's answer."""
        return await self._push_weights(self._client(), weights, version)

    async def _update_with_own_client(self, weights: Any, version: int) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=self._weights_timeout, headers=self._headers) as client:
            return await self._push_weights(client, weights, version)

    async def _push_weights(self, client: httpx.AsyncClient, weights: Any, version: int) -> dict[str, Any]:
        if self.server != "spo":
            return await self._push_to_inference_server(client, weights, version)
        folder = self._weights_dir or Path(tempfile.mkdtemp(prefix="spo-weights-"))
        folder.mkdir(parents=True, exist_ok=True)
        self._weights_dir = folder
        path = folder / f"policy-v{int(version)}.safetensors"
        await asyncio.to_thread(save_safetensors, weights, path)
        try:
            answer = await self._request(client, "POST", "/v1/load_weights", json={"path": str(path), "version": int(version)},
                                         timeout=self._weights_timeout)
        except BackendHTTPError as exc:
            path.unlink(missing_ok=True)
            if exc.status in (401, 403):
                raise BackendHTTPError(
                    "the server refused the weights push: give the client the server's API key (api_key; for the "
                    "trainer generation_api_key or SPO_AGENTS_API_KEY) and start `spo-agents serve` with --weights-dir",
                    url=exc.url, status=exc.status, body=exc.body, attempts=exc.attempts) from exc
            if exc.status in (404, 405):
                raise BackendHTTPError(
                    "the server has no /v1/load_weights endpoint (only `spo-agents serve` has it; for vLLM or "
                    "SGLang servers see 'Weight updates on vLLM and SGLang servers' in docs/backends.md)",
                    url=exc.url, status=exc.status, body=exc.body, attempts=exc.attempts) from exc
            raise
        if self._last_weights is not None and self._last_weights != path:
            self._last_weights.unlink(missing_ok=True)
        self._last_weights = path
        self._version = int(answer.get("policy_version", version))
        return answer

    async def _push_to_inference_server(self, client: httpx.AsyncClient, weights: Any, version: int) -> dict[str, Any]:
        """vLLM / SGLang: write the weights into this client's own subfolder (replicas sharing
        `weights_dir` never collide), run the server's update sequence, keep only the newest."""
        from spo_agents.backends import server_weights

        if self._weights_dir is None:
            self._weights_dir = Path(tempfile.mkdtemp(prefix="spo-weights-"))
        folder = self._weights_dir / f"{self.server}-{id(self):x}-{os.getpid()}"
        target = await asyncio.to_thread(server_weights.write_weights, self.server, weights, folder, version)

        async def call(method: str, path: str, body: Any) -> Any:
            return await self._request(client, method, path, json=body, timeout=self._weights_timeout)

        try:
            answer = await server_weights.push_weights(self.server, call, target, int(version))
        except BaseException:
            server_weights.remove_weights(target)
            raise
        if self._last_weights is not None and self._last_weights != target:
            server_weights.remove_weights(self._last_weights)
        self._last_weights = target
        self._version = int(version)
        return answer

    # ------------------------------------------------------------------ introspection and lifecycle
    async def health(self) -> dict[str, Any]:
        """`GET /health` (our server answers with the model and policy version; vLLM with an empty body)."""
        response = await self._client().get(f"{self.base_url}/health", timeout=self._timeout)
        if response.status_code >= 400:
            raise BackendHTTPError("health check failed", url=str(response.url), status=response.status_code,
                                   body=response.text[:_BODY_EXCERPT])
        return response.json() if response.content else {}

    async def aclose(self) -> None:
        """Close the pooled client of the running loop (and forget those of closed loops)."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()
        self._clients = {lp: c for lp, c in self._clients.items() if not lp.is_closed()}

    def close(self) -> None:
        """Drop every pooled client and delete the last weights file written by this client."""
        self._clients.clear()
        if self._last_weights is not None:
            if self._last_weights.is_dir():  # an SGLang model folder
                import shutil

                shutil.rmtree(self._last_weights, ignore_errors=True)
            else:
                self._last_weights.unlink(missing_ok=True)
            self._last_weights = None

    def __enter__(self) -> "OpenAICompatibleBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "OpenAICompatibleBackend":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
        self.close()


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500
