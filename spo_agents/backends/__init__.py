"""Generation backends: one protocol (prompt ids + sampling params -> ids + log-probs).

`spo_agents.backends.base` is plain data and imports nothing heavy. The transformers backend and
the model presets import torch and transformers, the HTTP client httpx, the vLLM backend vLLM (on
use), so they are loaded on first attribute access (`spo_agents.backends.TransformersBackend`,
`spo_agents.backends.load_model`, `spo_agents.backends.OpenAICompatibleBackend`,
`spo_agents.backends.VLLMBackend`).
Backends never import the learner or the environments.
"""

from __future__ import annotations

import importlib
from typing import Any

from spo_agents.backends.base import (
    Backend,
    BackendClosedError,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)

_LAZY = {
    "TransformersBackend": "spo_agents.backends.transformers_backend",
    "LoadedModel": "spo_agents.backends.models",
    "load_model": "spo_agents.backends.models",
    "build_tiny_tokenizer": "spo_agents.backends.models",
    "PRESETS": "spo_agents.backends.models",
    "OpenAICompatibleBackend": "spo_agents.backends.openai_client",
    "BackendHTTPError": "spo_agents.backends.openai_client",
    "BackendTimeoutError": "spo_agents.backends.openai_client",
    "BackendProtocolError": "spo_agents.backends.openai_client",
    "VLLMBackend": "spo_agents.backends.vllm_backend",
}

__all__ = [
    "Backend",
    "BackendClosedError",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spo_agents.backends' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
