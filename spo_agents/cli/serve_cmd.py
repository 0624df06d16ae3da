"""`spo-agents serve`: an OpenAI/vLLM-compatible HTTP server over the transformers backend.

Loads a model (`tiny`, `smollm2-135m`, a .gguf file, a folder or a Hub id), wraps it in the
continuous-batching `TransformersBackend` and serves `spo_agents.serve.create_app` with uvicorn,
so any number of clients (the `OpenAICompatibleBackend`, the `openai` package, curl) share one
decode batch.

Security: with an API key (the SPO_AGENTS_API_KEY environment variable, or --api-key-file; never a
command-line value, which other local users could read from the process list) every /v1 route
needs `Authorization: Bearer <key>`. A server bound to anything but loopback refuses to start
without one. `POST /v1/load_weights` replaces the model, so it is on only with a key and
--weights-dir, and reads only safetensors files inside that folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from spo_agents.cli.checks import check_device, check_model_spec, port_number, positive_int
from spo_agents.cli.errors import UserError

API_KEY_ENV = "SPO_AGENTS_API_KEY"


def _positive_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of MB")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="OpenAI/vLLM-compatible HTTP server over the continuous-batching transformers backend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m", help="preset (tiny, smollm2-135m), .gguf file, folder or Hub id")
    parser.add_argument("--served-model-name", default=None, help="the model id clients see (default: the preset or path)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (anything but loopback, e.g. 0.0.0.0, needs an API key)")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument("--api-key-file", default=None,
                        help=f"file holding the API key clients must send as a bearer token (default: ${API_KEY_ENV})")
    parser.add_argument("--weights-dir", default=None,
                        help="turn on POST /v1/load_weights for safetensors files inside this folder (needs an API key)")
    parser.add_argument("--max-body-mb", type=_positive_mb, default=4.0, help="largest request body accepted (413 over it)")
    parser.add_argument("--max-batch-size", type=positive_int, default=64, help="concurrent requests in the decode batch")
    parser.add_argument("--max-prefill-tokens", type=positive_int, default=8192, help="padded tokens in one prefill group")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="model seed (tiny preset) and sampler seed")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run_serve)


def api_key_from(args: argparse.Namespace) -> str | None:
    """The API key from --api-key-file, else $SPO_AGENTS_API_KEY; None when neither is set."""
    if args.api_key_file is not None:
        path = Path(args.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--api-key-file {path}: cannot read it ({exc.__class__.__name__})") from exc
        if not key:
            raise UserError(f"--api-key-file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


def check_serve_args(args: argparse.Namespace) -> str | None:
    """Everything checked before the model is loaded; returns the API key."""
    from spo_agents.serve.guards import is_loopback

    key = api_key_from(args)
    if key is None and not is_loopback(args.host):
        raise UserError(f"--host {args.host} exposes the server beyond this machine: set an API key "
                        f"(${API_KEY_ENV} or --api-key-file) or bind 127.0.0.1")
    if args.weights_dir is not None:
        if key is None:
            raise UserError(f"--weights-dir turns on /v1/load_weights, which replaces the model: it needs an API key "
                            f"(${API_KEY_ENV} or --api-key-file)")
        if not Path(args.weights_dir).is_dir():
            raise UserError(f"--weights-dir {args.weights_dir}: no such folder")
    check_model_spec(args.model, what="--model")
    check_device(args.device)
    return key


def run_serve(args: argparse.Namespace) -> int:
    key = check_serve_args(args)
    import torch

    from spo_agents.backends.models import load_model
    from spo_agents.backends.omp import in_own_thread
    from spo_agents.backends.transformers_backend import TransformersBackend
    from spo_agents.chat.formatter import load_template
    from spo_agents.serve.app import create_app
    from spo_agents.serve.runner import serve_forever

    # loaded in a thread that ends: the decoding thread's OpenMP team is the process's only one
    loaded = in_own_thread(load_model, args.model, dtype=getattr(torch, args.dtype), device=args.device,
                           seed=args.seed)
    name = args.served_model_name or loaded.name
    tool_template = load_template(loaded.tool_template) if loaded.tool_template else None
    backend = TransformersBackend(loaded.model, loaded.tokenizer, max_batch_size=args.max_batch_size,
                                  max_prefill_tokens=args.max_prefill_tokens, seed=args.seed)
    try:
        app = create_app(backend, loaded.tokenizer, name, tool_chat_template=tool_template, api_key=key,
                         weights_dir=args.weights_dir, max_body_bytes=int(args.max_body_mb * (1 << 20)))
        weights = f"on, from {Path(args.weights_dir).resolve()}" if args.weights_dir else "off"
        print(f"serving {name} on http://{args.host}:{args.port} (POST /v1/completions, /v1/chat/completions, "
              f"/v1/load_weights; GET /v1/models, /health); API key {'required' if key else 'off'}; "
              f"weight loading {weights}", flush=True)
        serve_forever(app, args.host, args.port, log_level=args.log_level)
    finally:
        backend.close()
    return 0
