"""Loopback stand-ins for vLLM and SGLang servers: exactly their weight-update routes' request and
response shapes, read from their source, over a real TransformersBackend (tiny model, CPU).

vLLM 0.34.0 (dev mode):
- `POST /pause` (query `mode`: abort | wait | keep, default abort; `clear_cache`: bool) ->
  `{"status": "paused"}`; `POST /resume` -> `{"status": "resumed"}`
  (vllm/entrypoints/rl/online/api_router.py, `pause_generation`, `resume_generation`);
- `POST /collective_rpc {"method", "args": [str], "kwargs": {str: str}, "timeout"}` ->
  `{"results": [...]}`, results other than dict/list/None stringified; a body that is not an
  object or has no method is a 400 (vllm/entrypoints/serve/dev/rpc/api_router.py); a method the
  workers lack raises NotImplementedError("Method 'x' is not implemented.")
  (vllm/v1/serial_utils.py `run_method`), which vLLM's error handler serves as a 501 with an
  OpenAI-style error body (vllm/entrypoints/serve/exception_handling/error_response.py);
- `POST /reset_prefix_cache` (query `reset_running_requests`, `reset_external`: bool) ->
  `{"success": bool}`, false while requests hold blocks unless reset_running_requests
  (vllm/entrypoints/serve/dev/cache/api_router.py, vllm/v1/core/sched/scheduler.py).
In `keep` mode requests in flight stay and new ones are accepted and queued until `/resume`.

SGLang 0.5.23 (python/sglang/srt/entrypoints/http_server.py, python/sglang/srt/managers/io_struct.py):
- `POST /pause_generation` `PauseGenerationReqInput {mode: abort | retract | in_place}` ->
  `{"message": "Generation paused successfully.", "status": "ok"}`;
- `POST /update_weights_from_disk` `UpdateWeightFromDiskReqInput {model_path, load_format,
  abort_all_requests, weight_version, is_async, torch_empty_cache, keep_pause,
  recapture_cuda_graph, token_step, flush_cache, manifest}` -> `{"success", "message",
  "num_paused_requests"}`, HTTP 400 when not successful; the weights are the folder's
  `*.safetensors` (DefaultModelLoader._prepare_weights, load_format auto);
- `POST /continue_generation` `ContinueGenerationReqInput {torch_empty_cache}` ->
  `{"message": "Generation continued successfully.", "status": "ok"}`.

`GET /v1/models` and completions are served in each server's dialect (token ids in, `choices[0].token_ids` and
`logprobs.token_logprobs` out; no spo-agents version fields), enough for the client's generate.
"""

from __future__ import annotations

import asyncio
import glob
import os
from typing import Any, Literal, Optional

import pydantic
import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from spo_agents.backends import SamplingParams
from spo_agents.backends.vllm_worker import SPOWorkerExtension


class BackendModel:
    """What a vLLM worker's `model_runner.get_model()` returns: `load_weights(weights)`, here into a
    running TransformersBackend (between two of its decode steps)."""

    def __init__(self, backend):
        self.backend, self.loaded = backend, 0

    def load_weights(self, weights):
        state = dict(weights)
        self.backend.update_weights(state, self.backend.policy_version + 1)
        self.loaded += 1
        return set(state)


class ModuleModel:
    """A plain torch module with vLLM's `load_weights` contract (a second tensor-parallel worker)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def load_weights(self, weights):
        own = self.module.state_dict()
        for name, tensor in weights:
            own[name].copy_(tensor)
        return {name for name, _ in weights}


class Runner:
    def __init__(self, model):
        self.model = model

    def get_model(self):
        return self.model


class ExtendedWorker(SPOWorkerExtension):
    """A worker started with `--worker-extension-cls spo_agents.backends.vllm_worker.SPOWorkerExtension`."""

    device = "cpu"

    def __init__(self, model, delay_s: float = 0.0):
        self.model_runner, self.delay_s = Runner(model), delay_s

    def spo_load_weights_from_file(self, path):
        import time

        time.sleep(self.delay_s)  # a slow load keeps the pause open long enough to observe it
        return super().spo_load_weights_from_file(path)


class PlainWorker:
    """A worker started without the extension."""

    device = "cpu"

    def __init__(self, model):
        self.model_runner = Runner(model)


class CallLog:
    """Every control call the server received: (path, query dict, JSON body or None)."""

    def __init__(self):
        self.calls: list[tuple[str, dict[str, str], Any]] = []
        self.completions = 0

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]


def _completion_handler(app_state, dialect: str):
    """POST /v1/completions in the server's dialect over the real backend, gated by the pause."""

    async def completions(request: Request):
        body = await request.json()
        await app_state["gate"].wait()  # keep / retract: a request arriving during a pause waits for resume
        app_state["in_flight"] += 1
        try:
            params = SamplingParams(temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                                    top_k=max(0, body.get("top_k", -1)), max_new_tokens=body["max_tokens"],
                                    stop_token_ids=tuple(body["stop_token_ids"]) if body.get("ignore_eos") else None,
                                    stop_strings=tuple(body.get("stop") or ()), seed=body.get("seed"))
            result = await app_state["backend"].generate(list(body["prompt"]), params)
        finally:
            app_state["in_flight"] -= 1
        app_state["log"].completions += 1
        finish = "length" if result.finish_reason.value == "length" else "stop"
        choice = {"index": 0, "text": "", "token_ids": result.token_ids, "finish_reason": finish,
                  "logprobs": {"tokens": [f"token_id:{t}" for t in result.token_ids] if dialect == "vllm"
                               else ["?"] * len(result.token_ids), "token_logprobs": result.logprobs}}
        choice["stop_reason" if dialect == "vllm" else "matched_stop"] = result.stop_reason
        return {"id": "cmpl-contract", "object": "text_completion", "model": "contract", "choices": [choice]}

    return completions


def _models(app: FastAPI) -> None:
    @app.get("/v1/models")
    async def models():  # the OpenAI model list both servers serve
        return {"object": "list", "data": [{"id": "contract", "object": "model", "owned_by": "contract"}]}


def _state(backend) -> dict[str, Any]:
    gate = asyncio.Event()
    gate.set()
    return {"backend": backend, "gate": gate, "in_flight": 0, "log": CallLog(), "paused_mode": None}


def _logged(app: FastAPI, state: dict[str, Any]) -> None:
    @app.middleware("http")
    async def record(request: Request, call_next):
        if request.method == "POST" and request.url.path != "/v1/completions":
            raw = await request.body()
            import json

            state["log"].calls.append((request.url.path, dict(request.query_params), json.loads(raw) if raw else None))
        return await call_next(request)


# ---------------------------------------------------------------------------- vLLM 0.34.0
def vllm_app(backend, workers: list, *, dev_mode: bool = True, reset_succeeds: bool = True) -> FastAPI:
    app, state = FastAPI(), _state(backend)
    app.state.contract = state
    _logged(app, state)
    app.post("/v1/completions")(_completion_handler(state, "vllm"))
    _models(app)
    if not dev_mode:  # routers.py registers the dev and RL routes only with VLLM_SERVER_DEV_MODE=1
        return app

    @app.post("/pause")
    async def pause(mode: Literal["abort", "wait", "keep"] = Query("abort"), clear_cache: bool = Query(True)):
        state["paused_mode"] = mode
        state["gate"].clear()
        return JSONResponse({"status": "paused"}, status_code=200)

    @app.post("/resume")
    async def resume():
        state["gate"].set()
        return JSONResponse({"status": "resumed"}, status_code=200)

    @app.post("/collective_rpc")
    async def collective_rpc(request: Request):
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"detail": "Request body must be a JSON object"}, status_code=400)
        method = body.get("method")
        if method is None:
            return JSONResponse({"detail": "Missing 'method' in request body"}, status_code=400)
        args, kwargs = tuple(body.get("args", [])), body.get("kwargs", {})
        results = []
        for worker in workers:
            func = getattr(worker, method, None)
            if func is None:  # run_method: NotImplementedError -> create_error_response: 501
                message = f"Method {method!r} is not implemented."
                return JSONResponse({"error": {"message": message, "type": "NotImplementedError", "param": None,
                                               "code": 501}}, status_code=501)
            results.append(await asyncio.to_thread(func, *args, **kwargs))
        return JSONResponse({"results": [r if r is None or isinstance(r, (dict, list)) else str(r) for r in results]})

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(reset_running_requests: bool = Query(False), reset_external: bool = Query(False)):
        success = reset_succeeds and (reset_running_requests or state["in_flight"] == 0)
        return JSONResponse({"success": bool(success)})

    return app


# ---------------------------------------------------------------------------- SGLang 0.5.23
class PauseGenerationReqInput(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    mode: Literal["abort", "retract", "in_place"] = "abort"


class ContinueGenerationReqInput(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    torch_empty_cache: bool = True


class UpdateWeightFromDiskReqInput(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    model_path: str
    load_format: Optional[str] = None
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    is_async: bool = False
    torch_empty_cache: bool = False
    keep_pause: bool = False
    recapture_cuda_graph: bool = False
    token_step: int = 0
    flush_cache: bool = True
    manifest: Optional[dict[str, Any]] = None


def sglang_app(backend) -> FastAPI:
    app, state = FastAPI(), _state(backend)
    app.state.contract = state
    state["weight_version"] = None
    _logged(app, state)
    app.post("/v1/completions")(_completion_handler(state, "sglang"))
    _models(app)

    @app.post("/pause_generation")
    async def pause_generation(obj: PauseGenerationReqInput):
        state["paused_mode"] = obj.mode
        state["gate"].clear()
        return JSONResponse({"message": "Generation paused successfully.", "status": "ok"}, status_code=200)

    @app.post("/continue_generation")
    async def continue_generation(obj: ContinueGenerationReqInput):
        state["gate"].set()
        return JSONResponse({"message": "Generation continued successfully.", "status": "ok"}, status_code=200)

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(obj: UpdateWeightFromDiskReqInput):
        from safetensors.torch import load_file

        files = sorted(glob.glob(os.path.join(obj.model_path, "*.safetensors")))
        try:
            if not files:
                raise RuntimeError(f"Cannot find any model weights with `{obj.model_path}`")
            weights = {k: v for f in files for k, v in load_file(f).items()}
            await asyncio.to_thread(backend.update_weights, weights, backend.policy_version + 1)
        except Exception as exc:
            content = {"success": False, "message": f"Failed to update weights: {exc}.\nRolling back to original "
                       "weights.", "num_paused_requests": 0}
            return JSONResponse(content, status_code=400)
        if obj.weight_version is not None:
            state["weight_version"] = obj.weight_version
        content = {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
        return JSONResponse(content, status_code=200)

    return app
