"""The vLLM worker extension: weight loading inside every vLLM worker, called by collective RPC.

Load it into a server with

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --worker-extension-cls spo_agents.backends.vllm_worker.SPOWorkerExtension

(spo-agents installed in the server's environment), or in process through
`VLLMBackend` (`worker_extension_cls` in its engine defaults). vLLM mixes the class into its
worker class, so `self` is the worker: `self.model_runner` holds the model, `self.device` its
GPU. `POST /collective_rpc {"method": "spo_load_weights_from_file", "args": [path]}` then runs
the method on every worker (every tensor-parallel rank), each loading the same file through the
model's own checkpoint loader, which shards and fuses as at start-up.

Followed: vLLM 0.34.0 (`vllm/entrypoints/serve/dev/rpc/api_router.py`: string args only,
results other than dict/list/None are stringified, hence the dict returned here;
`vllm/v1/worker/gpu_worker.py` `Worker.reload_weights(weights_iterator=...)`, the in-place reload
that also re-runs weight post-processing; `vllm/v1/serial_utils.py` `run_method`: an unknown
method raises NotImplementedError). Older workers without `reload_weights` get the model's
`load_weights` directly. This module imports neither vLLM nor httpx.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["SPOWorkerExtension", "LOAD_METHOD", "EXTENSION_PATH"]

LOAD_METHOD = "spo_load_weights_from_file"
EXTENSION_PATH = "spo_agents.backends.vllm_worker.SPOWorkerExtension"


class SPOWorkerExtension:
    """Methods mixed into every vLLM worker (`worker_extension_cls`), called via `collective_rpc`."""

    def spo_load_weights_from_file(self, path: str) -> dict[str, Any]:
        """Load a safetensors state dict (Hugging Face parameter names) into this worker's model.

        Returns `{"tensors": N, "loader": "reload_weights" | "load_weights"}` (a dict, because
        vLLM's HTTP route passes dicts through and stringifies anything else).
        """
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(getattr(self, "device", "cpu")))
        reload = getattr(self, "reload_weights", None)
        if reload is not None and "weights_iterator" in inspect.signature(reload).parameters:
            reload(weights_iterator=iter(list(state.items())), is_checkpoint_format=True)
            loader = "reload_weights"
        else:
            runner = self.model_runner  # type: ignore[attr-defined]
            model = runner.get_model() if hasattr(runner, "get_model") else runner.model
            model.load_weights(weights=list(state.items()))
            loader = "load_weights"
        return {"tensors": len(state), "loader": loader}
