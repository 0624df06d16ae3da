"""`spo-agents serve`: an OpenAI/vLLM-compatible HTTP server over a generation backend.

`create_app(backend, tokenizer, model_name)` builds the FastAPI app (`spo_agents.serve.app`);
`ServerThread(app)` runs it on loopback from a background thread (`spo_agents.serve.runner`);
the wire format and our extension fields are in `spo_agents.serve.protocol`. Needs the `serve`
extra (fastapi, uvicorn); names are imported on first access so `import spo_agents.serve` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_app": "spo_agents.serve.app",
    "load_safetensors_weights": "spo_agents.serve.weights",
    "WeightsFolder": "spo_agents.serve.weights",
    "default_eos_token_ids": "spo_agents.serve.app",
    "ServerThread": "spo_agents.serve.runner",
    "serve_forever": "spo_agents.serve.runner",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spo_agents.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
