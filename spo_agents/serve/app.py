"""The FastAPI app of `spo-agents serve`: OpenAI/vLLM-compatible endpoints over any Backend.

Why a server of our own: the OpenAI-compatible HTTP backend must be tested end to end against a
real server, and on machines without vLLM (CPU, CI, laptops) users still want one process that
holds the model and many clients that send token ids. The app wraps anything that speaks the
`Backend` protocol (normally the continuous-batching `TransformersBackend`), so concurrent HTTP
requests land in one decode batch.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
and `POST /v1/load_weights` (swap weights in place from a safetensors file; requests in flight
keep going, as with `Backend.update_weights`). Errors use OpenAI's `{"error": {...}}` body: 400
for requests we cannot serve, 401 without the API key, 403 when weight loading is off, 409 for a
weights version that does not go up, 413 for a body over the size limit, 500 when the backend
raises, 503 once the backend is closed. Hostile input (any JSON) gets a 4xx, never a 500.

Prompts are tokenized (and chat templates rendered) in worker threads, never on the event loop,
so a huge prompt does not stall `/health` or other requests; bodies over `max_body_bytes` are
refused before they are parsed (`spo_agents.serve.guards`). Weight loading is confined to one
folder and needs the API key (`spo_agents.serve.weights`).

A request whose client disconnects is cancelled in the backend (its batch row is freed at the next
decode step), so clients that time out do not leave work behind. `create_app` does not own the
backend: whoever built it closes it (the CLI does, on shutdown).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spo_agents.backends.base import BackendClosedError, GenerationResult
from spo_agents.chat.tool_calls import chat_messages_with_tools
from spo_agents.serve import guards
from spo_agents.serve.guards import error_response as _error
from spo_agents.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadWeightsRequest,
    RequestError,
    chat_choice,
    completion_choice,
    message_text,
    sampling_params,
)
from spo_agents.serve.weights import WeightsFolder, WeightsRejected, check_version, load_safetensors_weights

__all__ = ["create_app", "load_safetensors_weights", "default_eos_token_ids", "BackendFailure", "ClientDisconnected",
           "DEFAULT_MAX_BODY_BYTES"]

logger = logging.getLogger(__name__)
_DISCONNECT_POLL_S = 0.5
DEFAULT_MAX_BODY_BYTES = 4 << 20  # a 32k-token prompt as JSON token ids is ~250 kB; 4 MiB leaves room for batches
# names the chat template call or its renderer set themselves: chat_template_kwargs may not set them
_RENDER_NAMES = frozenset({"messages", "conversation", "conversations", "chat", "tools", "documents",
                           "add_generation_prompt", "continue_final_message", "chat_template"})


class ClientDisconnected(Exception):
    """The HTTP client went away before its completion was ready."""


class BackendFailure(Exception):
    """The backend raised while generating (becomes HTTP 500 with the cause in the message)."""


def default_eos_token_ids(backend: Any, tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a completion by default: the model's generation-config EOS, else the tokenizer's."""
    model = getattr(backend, "model", None)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),)


class _Service:
    """What the routes share: the backend, the tokenizer and how to turn requests into prompts."""

    def __init__(self, backend: Any, tokenizer: Any, model_name: str, *, eos_token_ids: Sequence[int] | None,
                 max_model_len: int | None, chat_template: str | None, tool_chat_template: str | None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.eos_token_ids = tuple(default_eos_token_ids(backend, tokenizer) if eos_token_ids is None else eos_token_ids)
        model_config = getattr(getattr(backend, "model", None), "config", None)
        self.max_model_len = int(max_model_len or getattr(model_config, "max_position_embeddings", 0) or 1 << 20)
        self.vocab_size = len(tokenizer)
        self.chat_template = chat_template
        self.tool_chat_template = tool_chat_template or chat_template
        self.weights_lock = threading.Lock()
        self.weights: WeightsFolder | None = None  # set by create_app: weight loading on
        self.weights_loaded = False
        self.created = int(time.time())
        call = inspect.signature(tokenizer.apply_chat_template).parameters.values()
        self.reserved_template_names = _RENDER_NAMES | {p.name for p in call if p.kind is not p.VAR_KEYWORD}

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as exc:  # JSON may carry lone surrogates; tokenizers need valid Unicode
                raise RequestError(f"the prompt is not valid Unicode ({exc.reason} at {exc.start})", "prompt") from exc
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise RequestError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}", "prompt")
        if not ids:
            raise RequestError("the prompt encodes to no tokens", "prompt")
        if len(ids) >= self.max_model_len:
            raise RequestError(f"prompt of {len(ids)} tokens does not fit the context window of {self.max_model_len}", "prompt")
        return ids

    def max_new_tokens(self, requested: int | None, prompt_len: int) -> int:
        room = self.max_model_len - prompt_len
        if requested is not None and requested < 1:
            raise RequestError("max_tokens must be at least 1", "max_tokens")
        return room if requested is None else min(requested, room)

    def chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        """Render the chat template and tokenize (CPU work: run it off the event loop)."""
        extra = request.chat_template_kwargs or {}
        clash = sorted(set(extra) & self.reserved_template_names)
        if clash:
            raise RequestError(f"chat_template_kwargs may not set {clash}: the server sets those itself "
                               "(only template variables such as enable_thinking belong there)", "chat_template_kwargs")
        messages = []
        for message in request.messages:
            message = dict(message)
            message["content"] = message_text(message.get("content"))
            messages.append(message)
        template = self.tool_chat_template if request.tools else self.chat_template
        # tools through the template when it renders them, else in the system message (chat/tool_calls.py)
        try:
            messages, tools = chat_messages_with_tools(self.tokenizer, template, messages, request.tools)
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=template,
                add_generation_prompt=request.add_generation_prompt, tokenize=False, **extra,
            )
        except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
            # the messages, tools and template variables are the client's: their failures are its errors
            raise RequestError(f"the chat template cannot render this request: {type(exc).__name__}: "
                               f"{str(exc)[:300]}", "messages") from exc
        return self.encode_prompt(text)

    async def generate(self, http: Request, prompt_ids: list[int], request: Any, max_tokens: int | None) -> GenerationResult:
        params = sampling_params(request, self.max_new_tokens(max_tokens, len(prompt_ids)), self.eos_token_ids)
        try:
            return await _unless_disconnected(http, self.backend.generate(prompt_ids, params))
        except (ClientDisconnected, BackendClosedError, RequestError):
            raise
        except Exception as exc:
            logger.warning("generation failed: %s: %s", type(exc).__name__, exc)
            raise BackendFailure(f"generation failed: {type(exc).__name__}: {exc}") from exc


async def _unless_disconnected(http: Request, work: Awaitable[GenerationResult]) -> GenerationResult:
    """Await `work`, cancelling it (and so the backend request) if the client disconnects."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await http.is_disconnected():
                raise ClientDisconnected()
    finally:
        if not task.done():
            task.cancel()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}", "invalid_request_error", where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:  # unknown route, wrong method, 413
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(RequestError)
    async def _unservable(_: Request, exc: RequestError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error", exc.param)

    @app.exception_handler(BackendClosedError)
    async def _closed(_: Request, exc: BackendClosedError) -> JSONResponse:
        return _error(503, f"the backend is closed: {exc}", "service_unavailable")

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, exc: ClientDisconnected) -> JSONResponse:
        return _error(499, "client disconnected", "client_closed_request")

    @app.exception_handler(BackendFailure)
    async def _backend_failed(_: Request, exc: BackendFailure) -> JSONResponse:
        return _error(500, str(exc), "internal_server_error")

    @app.exception_handler(Exception)
    async def _failed(_: Request, exc: Exception) -> JSONResponse:  # a bug of ours: still a clean JSON 500
        return _error(500, f"{type(exc).__name__}: {exc}", "internal_server_error")


def _add_generation_routes(app: FastAPI, service: _Service) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request) -> dict[str, Any]:
        prompts = await asyncio.to_thread(lambda: [service.encode_prompt(p) for p in body.prompts()])
        tasks = [asyncio.ensure_future(service.generate(http, ids, body, body.max_tokens)) for ids in prompts]
        try:
            results = await asyncio.gather(*tasks)
        finally:  # one prompt failed: the others are not worth finishing
            for task in tasks:
                task.cancel()
        choices = [completion_choice(i, body, r, ids, service.tokenizer) for i, (r, ids) in enumerate(zip(results, prompts))]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": service.model_name,
            "choices": choices,
            "usage": _usage(sum(map(len, prompts)), sum(len(r.token_ids) for r in results)),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request) -> dict[str, Any]:
        prompt_ids = await asyncio.to_thread(service.chat_prompt, body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        result = await service.generate(http, prompt_ids, body, max_tokens)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": service.model_name,
            "choices": [chat_choice(body, result, prompt_ids, service.tokenizer)],
            "usage": _usage(len(prompt_ids), len(result.token_ids)),
        }


def _add_admin_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": service.model_name, "object": "model", "created": service.created,
                "owned_by": "spo-agents", "max_model_len": service.max_model_len,
                "policy_version": service.backend.policy_version}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_name, "policy_version": service.backend.policy_version}

    @app.post("/v1/load_weights")
    async def load_weights(body: LoadWeightsRequest) -> Any:
        if service.weights is None:
            return _error(403, "weight loading is off: start the server with an API key (SPO_AGENTS_API_KEY or "
                          "--api-key-file) and --weights-dir", "permission_error")
        try:
            seconds, count = await asyncio.to_thread(_load_weights, service, body)
        except WeightsRejected as exc:
            return _error(exc.status, str(exc), "conflict_error" if exc.status == 409 else "invalid_request_error",
                          exc.param)
        except (KeyError, ValueError) as exc:  # unknown names or shape mismatches: the model is untouched
            return _error(400, f"weights rejected: {exc}", "invalid_request_error", "path")
        return {"policy_version": service.backend.policy_version, "tensors": count, "seconds": round(seconds, 3)}


def _load_weights(service: _Service, body: LoadWeightsRequest) -> tuple[float, int]:
    """Check the version, read the file and hand it to the backend (in a worker thread, not the loop)."""
    assert service.weights is not None
    start = time.perf_counter()
    with service.weights_lock:  # one update at a time; generation continues meanwhile
        check_version(body.version, service.backend.policy_version, service.weights_loaded)
        state = service.weights.load(body.path)
        if not state:
            raise WeightsRejected(400, f"{body.path!r} holds no tensors")
        service.backend.update_weights(state, body.version)
        service.weights_loaded = True
    return time.perf_counter() - start, len(state)


def create_app(
    backend: Any,
    tokenizer: Any,
    model_name: str,
    *,
    eos_token_ids: Sequence[int] | None = None,
    max_model_len: int | None = None,
    chat_template: str | None = None,
    tool_chat_template: str | None = None,
    api_key: str | None = None,
    weights_dir: str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An OpenAI/vLLM-compatible app over `backend` (any object with the Backend protocol).

    `eos_token_ids` default to the backend model's generation-config EOS (else the tokenizer's);
    `max_model_len` to the model's `max_position_embeddings`. `chat_template` (Jinja source) is used
    for chat requests instead of the tokenizer's; `tool_chat_template` for requests with `tools`.
    `api_key`: every `/v1/...` route then needs `Authorization: Bearer <api_key>`. `weights_dir`
    turns on `/v1/load_weights` for files inside that folder (it needs `api_key`). Request bodies
    over `max_body_bytes` are refused with 413.
    """
    if weights_dir is not None and not api_key:
        raise ValueError("weight loading (weights_dir) needs an api_key: /v1/load_weights replaces the model")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    service = _Service(backend, tokenizer, model_name, eos_token_ids=eos_token_ids, max_model_len=max_model_len,
                       chat_template=chat_template, tool_chat_template=tool_chat_template)
    service.weights = WeightsFolder(weights_dir) if weights_dir is not None else None
    app = FastAPI(title="spo-agents serve", version="1", docs_url=None, redoc_url=None)
    app.state.service = service
    guards.install(app, api_key=api_key or None, max_body_bytes=max_body_bytes)
    _install_error_handlers(app)
    _add_generation_routes(app, service)
    _add_admin_routes(app, service)
    return app
