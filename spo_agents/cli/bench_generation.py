"""`spo-agents bench generation`: the batched engine against one request at a time.

Measures generated tokens per second of the continuous-batching TransformersBackend with N
concurrent requests (awaited from asyncio tasks, as the rollout engine does) against
`model.generate` called on one request at a time, with the same model, the same chat prompts and
the same number of new tokens per request (greedy, no early stop), in the same process. Prints a
table, then one JSON line. The sequential baseline is a rate, so it runs on the first
`--baseline-requests` prompts only to keep the benchmark short; both numbers are tokens/s.

Left out: sampling cost differences (both decode greedily) and prompt-processing throughput on
its own (prefill time is included in both timings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from spo_agents.cli.checks import check_device, check_model_spec, positive_int

QUESTIONS = (
    "What is the capital of France, and why is it famous?",
    "Explain how a binary search works.",
    "Write a short poem about the sea.",
    "How many legs does a spider have?",
    "Give three tips for learning a new language.",
    "What is 17 times 23? Show your steps.",
    "Describe the water cycle in simple words.",
    "Why is the sky blue?",
)


def register_bench(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser(
        "generation",
        help="tokens/s of the continuous-batching backend vs one request at a time with model.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m", help="preset (smollm2-135m, tiny), .gguf file, folder or Hub id")
    parser.add_argument("--requests", type=positive_int, default=16, help="concurrent requests for the batched engine")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per request")
    parser.add_argument("--baseline-requests", type=positive_int, default=4, help="requests timed one at a time for the baseline")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_bench)


def _prompts(tokenizer: Any, count: int) -> list[list[int]]:
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (request {i})"}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(list(tokenizer.encode(text, add_special_tokens=False)))
    return prompts


def _time_sequential(model: Any, prompts: list[list[int]], max_new_tokens: int) -> tuple[float, list[list[int]]]:
    import torch

    outputs = []
    device = next(model.parameters()).device
    start = time.perf_counter()
    for prompt in prompts:
        input_ids = torch.tensor([prompt], device=device)
        with torch.no_grad():
            sequence = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        outputs.append(sequence[0, len(prompt):].tolist())
    return time.perf_counter() - start, outputs


async def _run_concurrent(backend: Any, prompts: list[list[int]], params: Any) -> list[Any]:
    return await asyncio.gather(*(backend.generate(p, params) for p in prompts))


def _time_batched(backend: Any, prompts: list[list[int]], params: Any) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    results = asyncio.run(_run_concurrent(backend, prompts, params))
    return time.perf_counter() - start, results


def run_bench(args: argparse.Namespace) -> int:
    check_model_spec(args.model, what="--model")
    check_device(args.device)
    import torch

    from spo_agents.backends.base import SamplingParams
    from spo_agents.backends.models import load_model
    from spo_agents.backends.omp import in_own_thread
    from spo_agents.backends.transformers_backend import TransformersBackend

    # loading and the baseline run in threads that end, so the backend's decoding thread holds the
    # process's only OpenMP team and neither side is slowed by the other's (backends/omp.py)
    loaded = in_own_thread(load_model, args.model, device=args.device, seed=args.seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = _prompts(tokenizer, args.requests)
    baseline_prompts = prompts[: max(1, min(args.baseline_requests, len(prompts)))]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens, stop_token_ids=())

    in_own_thread(_time_sequential, model, prompts[:1], 4)  # warm-up: first-call allocations
    seq_seconds, seq_outputs = in_own_thread(_time_sequential, model, baseline_prompts, args.max_new_tokens)
    seq_tokens = sum(len(o) for o in seq_outputs)

    with TransformersBackend(model, tokenizer, max_batch_size=max(args.requests, 1), seed=args.seed) as backend:
        backend.generate_many(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=4, stop_token_ids=()))
        steps_before, rows_before = backend.stats["decode_steps"], backend.stats["batch_rows"]
        batch_seconds, results = _time_batched(backend, prompts, params)
        steps = backend.stats["decode_steps"] - steps_before
        rows = backend.stats["batch_rows"] - rows_before
    batch_tokens = sum(len(r.token_ids) for r in results)
    same = sum(r.token_ids == o for r, o in zip(results, seq_outputs))

    seq_rate = seq_tokens / seq_seconds
    batch_rate = batch_tokens / batch_seconds
    record = {
        "bench": "generation",
        "model": loaded.name,
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "sequential_requests": len(baseline_prompts),
        "sequential_tokens": seq_tokens,
        "sequential_seconds": round(seq_seconds, 3),
        "sequential_tokens_per_s": round(seq_rate, 2),
        "batched_tokens": batch_tokens,
        "batched_seconds": round(batch_seconds, 3),
        "batched_tokens_per_s": round(batch_rate, 2),
        "mean_batch_size": round(rows / steps, 2) if steps else 0.0,
        "speedup": round(batch_rate / seq_rate, 2),
        "greedy_identical": f"{same}/{len(baseline_prompts)}",
    }
    _print_table(record)
    print(json.dumps(record))
    return 0


def _print_table(r: dict[str, Any]) -> None:
    rows = [
        ("one at a time (model.generate)", r["sequential_requests"], r["sequential_tokens"], r["sequential_seconds"], r["sequential_tokens_per_s"]),
        ("continuous batching (backend)", r["requests"], r["batched_tokens"], r["batched_seconds"], r["batched_tokens_per_s"]),
    ]
    print(f"model {r['model']} on {r['device']} ({r['torch_threads']} threads), {r['max_new_tokens']} new tokens per request, greedy")
    print(f"{'engine':<32}{'requests':>10}{'tokens':>10}{'seconds':>10}{'tokens/s':>12}")
    for name, n, tokens, seconds, rate in rows:
        print(f"{name:<32}{n:>10}{tokens:>10}{seconds:>10.2f}{rate:>12.1f}")
    print(f"speedup {r['speedup']}x, mean batch size {r['mean_batch_size']}, "
          f"greedy outputs identical to model.generate: {r['greedy_identical']}")
