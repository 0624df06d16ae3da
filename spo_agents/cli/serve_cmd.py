"""`spo-agents serve`: an OpenAI/vLLM-compatible HTTP server over the transformers backend.

Loads a model (`tiny`, `smollm2-135m`, a .gguf file, a folder or a Hub id), wraps it in the
continuous-batching `TransformersBackend` and serves `spo_agents.serve.create_app` with uvicorn,
so any number of clients (the `OpenAICompatibleBackend`, the `openai` package, curl) share one
decode batch. Weights can be swapped in place with `POST /v1/load_weights`.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="OpenAI/vLLM-compatible HTTP server over the continuous-batching transformers backend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m", help="preset (tiny, smollm2-135m), .gguf file, folder or Hub id")
    parser.add_argument("--served-model-name", default=None, help="the model id clients see (default: the preset or path)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=64, help="concurrent requests in the decode batch")
    parser.add_argument("--max-prefill-tokens", type=int, default=8192, help="padded tokens in one prefill group")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="model seed (tiny preset) and sampler seed")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import torch

    from spo_agents.backends.models import load_model
    from spo_agents.backends.transformers_backend import TransformersBackend
    from spo_agents.chat.formatter import load_template
    from spo_agents.serve.app import create_app
    from spo_agents.serve.runner import serve_forever

    loaded = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device, seed=args.seed)
    name = args.served_model_name or loaded.name
    tool_template = load_template(loaded.tool_template) if loaded.tool_template else None
    backend = TransformersBackend(loaded.model, loaded.tokenizer, max_batch_size=args.max_batch_size,
                                  max_prefill_tokens=args.max_prefill_tokens, seed=args.seed)
    try:
        app = create_app(backend, loaded.tokenizer, name, tool_chat_template=tool_template)
        print(f"serving {name} on http://{args.host}:{args.port} (POST /v1/completions, /v1/chat/completions, "
              f"/v1/load_weights; GET /v1/models, /health)", flush=True)
        serve_forever(app, args.host, args.port, log_level=args.log_level)
    finally:
        backend.close()
    return 0
