"""Weight updates on vLLM and SGLang servers, through the endpoints those servers offer.

Why a module of its own: `OpenAICompatibleBackend.update_weights` talks to three kinds of server
(`generation_server: spo | vllm | sglang`); `spo-agents serve` has one endpoint for it
(`/v1/load_weights`, in openai_client.py), vLLM and SGLang each need a short sequence of their
own control calls around the load, with their own failure modes. The sequences and the exact
request/response shapes follow the servers' source, at the versions named below; the contract
test (tests/backends/test_server_weights.py) serves exactly these shapes on loopback. Neither
server has run against this code here (no GPU): see docs/backends.md.

vLLM 0.34.0 (dev mode, `VLLM_SERVER_DEV_MODE=1`, which registers these routes:
`vllm/entrypoints/launchers/api_server/routers.py`), worker extension
`spo_agents.backends.vllm_worker.SPOWorkerExtension` loaded with `--worker-extension-cls`:
1. `POST /pause?mode=keep` -> `{"status": "paused"}`: requests in flight are frozen and new ones
   queue (`vllm/entrypoints/rl/online/api_router.py`, `pause_generation`);
2. `POST /collective_rpc {"method": "spo_load_weights_from_file", "args": [file]}` ->
   `{"results": [one dict per worker]}` (`vllm/entrypoints/serve/dev/rpc/api_router.py`);
   every worker (tensor-parallel rank) loads the same safetensors file;
3. `POST /reset_prefix_cache?reset_running_requests=true` -> `{"success": bool}`
   (`vllm/entrypoints/serve/dev/cache/api_router.py`; `Scheduler.reset_prefix_cache` preempts
   the running requests, so their KV is recomputed under the new weights when they resume);
4. `POST /resume` -> `{"status": "resumed"}`, also after a failed step 2 or 3.

SGLang 0.5.23 (`python/sglang/srt/entrypoints/http_server.py`, request types in
`python/sglang/srt/managers/io_struct.py`):
1. `POST /pause_generation {"mode": "retract"}` -> `{"message": ..., "status": "ok"}`: running
   requests go back to the waiting queue and their KV cache may be flushed (recomputed after);
2. `POST /update_weights_from_disk {"model_path": folder, "weight_version": "7", "flush_cache": true}`
   -> `{"success": bool, "message": str, "num_paused_requests": int}` (400 when not successful);
   `folder` holds `model.safetensors` (SGLang's DefaultModelLoader globs `*.safetensors` there);
3. `POST /continue_generation {}` -> `{"message": ..., "status": "ok"}`, also after a failed step 2.

Not used: vLLM's native weight-transfer routes (`/init_weight_transfer_engine`,
`/start_weight_update`, `/update_weights`, `/finish_weight_update`) and SGLang's
`/update_weights_from_distributed` / `/update_weights_from_tensor`: their data plane is an NCCL
group or CUDA IPC handles between the learner's GPUs and the server's, which needs vLLM or SGLang
and a GPU on the learner side; docs/backends.md says how to use them.

Both sequences move the weights through a file the server reads, so the folder must be visible
to the server at the same path (the same machine, or a shared filesystem).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from spo_agents.backends.openai_client import BackendHTTPError, BackendProtocolError, save_safetensors
from spo_agents.backends.vllm_worker import EXTENSION_PATH, LOAD_METHOD

__all__ = ["SERVERS", "Call", "write_weights", "remove_weights", "push_weights", "push_to_vllm", "push_to_sglang"]

SERVERS = ("spo", "vllm", "sglang")
# (method, path, json body or None) -> the decoded JSON answer; raises BackendHTTPError
Call = Callable[[str, str, Any], Awaitable[Any]]

VLLM_DEV_MODE_HINT = ("start vLLM with VLLM_SERVER_DEV_MODE=1 in its environment: /pause, /resume, /collective_rpc "
                      "and /reset_prefix_cache exist only in dev mode (followed: vLLM 0.34.0)")
VLLM_EXTENSION_HINT = (f"start vLLM with --worker-extension-cls {EXTENSION_PATH} (spo-agents installed in the "
                       "server's Python environment)")
SGLANG_HINT = ("this SGLang server has no such endpoint (followed: SGLang 0.5.23, whose HTTP server has "
               "/pause_generation, /update_weights_from_disk and /continue_generation)")
AUTH_HINT = ("the server refused the call: give the client the server's key (api_key); SGLang's weight endpoints "
             "take the admin key when the server has --admin-api-key")


def write_weights(server: str, weights: Any, folder: Path, version: int) -> Path:
    """Write the weights where `server` will read them: a file (vLLM) or a model folder (SGLang)."""
    folder.mkdir(parents=True, exist_ok=True)
    if server == "sglang":
        target = folder / f"policy-v{int(version)}"
        target.mkdir(exist_ok=True)
        save_safetensors(weights, target / "model.safetensors")
        return target
    target = folder / f"policy-v{int(version)}.safetensors"
    save_safetensors(weights, target)
    return target


def remove_weights(target: Path | None) -> None:
    if target is None:
        return
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


async def push_weights(server: str, call: Call, target: Path, version: int) -> dict[str, Any]:
    """Run `server`'s update sequence for the weights written at `target`; returns a summary."""
    if server == "vllm":
        return await push_to_vllm(call, target, version)
    if server == "sglang":
        return await push_to_sglang(call, target, version)
    raise ValueError(f"no weight-update sequence for server {server!r}; expected one of {SERVERS[1:]}")


async def _step(call: Call, server: str, path: str, body: Any, missing_hint: str) -> Any:
    """One control call; a missing route or a refused key becomes an error that says what to do."""
    try:
        return await call("POST", path, body)
    except BackendHTTPError as exc:
        hint = missing_hint if exc.status in (404, 405) else AUTH_HINT if exc.status in (401, 403) else None
        if hint is None:
            raise
        route = path.split("?")[0]
        raise BackendHTTPError(f"{server} weight update: POST {route} failed; {hint}", url=exc.url,
                               status=exc.status, body=exc.body, attempts=exc.attempts) from exc


async def _resume_after(call: Call, server: str, path: str, body: Any, error: BaseException) -> None:
    """Resume generation after a failed step; a failing resume is noted on the original error."""
    try:
        await call("POST", path, body)
    except Exception as resume_error:  # the original error matters more; keep both
        error.add_note(f"and resuming generation ({path}) failed too: {resume_error}; the server may still be paused")


# ---------------------------------------------------------------------------- vLLM
async def push_to_vllm(call: Call, path: Path, version: int) -> dict[str, Any]:
    """Pause (keep), load on every worker, reset the prefix cache, resume (see the module docstring)."""
    started = time.monotonic()
    await _step(call, "vLLM", "/pause?mode=keep", None, VLLM_DEV_MODE_HINT)
    try:
        results = await _load_on_vllm_workers(call, path)
        reset = await _step(call, "vLLM", "/reset_prefix_cache?reset_running_requests=true", None, VLLM_DEV_MODE_HINT)
        if not (isinstance(reset, dict) and reset.get("success") is True):
            raise BackendProtocolError(f"vLLM did not reset its prefix cache after the weight update (answer: {reset!r}); "
                                  "cached KV blocks would mix old and new weights")
    except BaseException as exc:
        await _resume_after(call, "vLLM", "/resume", None, exc)
        raise
    await _step(call, "vLLM", "/resume", None, VLLM_DEV_MODE_HINT)
    return {"policy_version": int(version), "tensors": results[0]["tensors"], "workers": len(results),
            "seconds": time.monotonic() - started}


async def _load_on_vllm_workers(call: Call, path: Path) -> list[dict[str, Any]]:
    try:
        answer = await _step(call, "vLLM", "/collective_rpc", {"method": LOAD_METHOD, "args": [str(path)]},
                             VLLM_DEV_MODE_HINT)
    except BackendHTTPError as exc:
        # vLLM's run_method raises NotImplementedError("Method ... is not implemented.") for a method
        # the workers lack (served as 501, or as a 500 if the engine core wraps it): no extension
        if exc.status == 501 or (LOAD_METHOD in exc.body and "not implemented" in exc.body.lower()):
            raise BackendHTTPError(f"vLLM weight update: the workers have no {LOAD_METHOD}; {VLLM_EXTENSION_HINT}",
                                   url=exc.url, status=exc.status, body=exc.body, attempts=exc.attempts) from exc
        raise
    results = answer.get("results") if isinstance(answer, dict) else None
    if not results or not all(isinstance(r, dict) and isinstance(r.get("tensors"), int) for r in results):
        raise BackendProtocolError(f"vLLM's /collective_rpc answered {str(answer)[:300]!r}; expected one "
                              f"{{'tensors': N, ...}} per worker from {EXTENSION_PATH}")
    if len({r["tensors"] for r in results}) != 1:
        raise BackendProtocolError(f"vLLM workers loaded different numbers of tensors: {[r['tensors'] for r in results]}")
    return results


# ---------------------------------------------------------------------------- SGLang
async def push_to_sglang(call: Call, folder: Path, version: int) -> dict[str, Any]:
    """Pause (retract), load the folder from disk, continue (see the module docstring)."""
    started = time.monotonic()
    await _step(call, "SGLang", "/pause_generation", {"mode": "retract"}, SGLANG_HINT)
    try:
        answer = await _step(call, "SGLang", "/update_weights_from_disk",
                             {"model_path": str(folder), "weight_version": str(int(version)), "flush_cache": True},
                             SGLANG_HINT)
        if not (isinstance(answer, dict) and answer.get("success") is True):
            raise BackendProtocolError(f"SGLang did not load the weights: {str(answer)[:300]}")
    except BaseException as exc:
        await _resume_after(call, "SGLang", "/continue_generation", {}, exc)
        raise
    await _step(call, "SGLang", "/continue_generation", {}, SGLANG_HINT)
    return {"policy_version": int(version), "message": answer.get("message", ""),
            "num_paused_requests": answer.get("num_paused_requests"), "seconds": time.monotonic() - started}
