"""A real `vllm serve` against the client's vLLM weight-update path (run by scripts/gpu-check.sh).

Needs a CUDA GPU and a Python environment with vLLM and spo-agents. Steps:
1. write a small random Llama (the tiny tokenizer, hidden 256) and a second one with other
   weights to model folders;
2. start `VLLM_SERVER_DEV_MODE=1 vllm serve FIRST --worker-extension-cls
   spo_agents.backends.vllm_worker.SPOWorkerExtension` on 127.0.0.1;
3. with `OpenAICompatibleBackend(server="vllm")`: generate greedily, push the second model's
   weights (pause, collective_rpc, reset_prefix_cache, resume), generate, push the first back,
   generate; compare every generation with the transformers backend on the same weights (CUDA,
   fp32);
4. check the two clear errors: a server without dev mode is not started here (it would cost
   another server start), but a push of a tensor name the model lacks must fail and leave the
   server serving.
Writes one JSON object (to the path given as the first argument, and stdout).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from spo_agents.backends import SamplingParams
from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer
from spo_agents.backends.openai_client import OpenAICompatibleBackend
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.backends.vllm_worker import EXTENSION_PATH

PROMPTS = [[17, 230, 45, 9, 301], [5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [300, 200, 100, 50, 25, 12]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=())
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_tokens(model, tokenizer) -> list[list[int]]:
    with TransformersBackend(model.to("cuda"), tokenizer) as be:
        tokens = [r.token_ids for r in be.generate_many(PROMPTS, GREEDY)]
    model.to("cpu")
    return tokens


def start_server(folder: Path, port: int, log_path: Path, dtype: str) -> subprocess.Popen:
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), str(REPO / "envs"), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(folder), "--host", "127.0.0.1",
               "--port", str(port), "--worker-extension-cls", EXTENSION_PATH, "--enable-prefix-caching",
               "--generation-config", "vllm", "--logprobs-mode", "processed_logprobs", "--max-model-len", "1024",
               "--gpu-memory-utilization", "0.3", "--dtype", dtype, "--served-model-name", "check"]
    return subprocess.Popen(command, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 900) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {server.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"vllm serve was not healthy after {timeout_s:.0f} s")


async def generate(client: OpenAICompatibleBackend) -> list[list[int]]:
    results = await asyncio.gather(*(client.generate(p, GREEDY) for p in PROMPTS))
    return [r.token_ids for r in results]


async def exercise(url: str, first, second, weights_dir: Path) -> dict:
    client = OpenAICompatibleBackend(url, model="check", server="vllm", weights_dir=weights_dir, max_retries=0)
    record: dict = {"generations": {}}
    record["generations"]["first"] = await generate(client)
    for name, model, version in (("second", second, 1), ("first_again", first, 2)):
        started = time.monotonic()
        answer = await client.aupdate_weights(model.state_dict(), version)
        record[f"push_{name}_s"] = round(time.monotonic() - started, 3)
        record[f"push_{name}_answer"] = {k: v for k, v in answer.items() if k != "seconds"}
        record["generations"][name] = await generate(client)
    try:
        await client.aupdate_weights({"no.such.weight": torch.zeros(2)}, 3)
        record["bad_push"] = "accepted (unexpected)"
    except Exception as exc:  # the expected outcome: an error that names the failing step
        record["bad_push"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    record["after_bad_push"] = await generate(client)
    record["policy_version"] = client.policy_version
    await client.aclose()
    return record


def main(out_path: str) -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"vllm_server_check": "skipped: no CUDA"}))
        return 0
    import vllm

    tokenizer = build_tiny_tokenizer()
    first, second = (build_tiny_model(tokenizer, seed=s, hidden_size=256) for s in (0, 1))
    work = Path(tempfile.mkdtemp(prefix="spo-vllm-check-"))
    first.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    expected = {"first": reference_tokens(first, tokenizer), "second": reference_tokens(second, tokenizer)}
    expected["first_again"] = expected["first"]
    report: dict = {"vllm_version": vllm.__version__, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0)}
    for dtype in ("float32", "bfloat16"):  # fp32 compares exactly; bf16 if this vLLM build has no fp32 path
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(work / "model", port, work / f"vllm-{dtype}.log", dtype)
        try:
            report[f"{dtype}_startup_s"] = round(wait_healthy(url, server), 1)
            record = asyncio.run(exercise(url, first, second, work / "weights"))
        except Exception as exc:
            report[f"{dtype}_error"] = f"{type(exc).__name__}: {exc}"
            report[f"{dtype}_log_tail"] = (work / f"vllm-{dtype}.log").read_text()[-3000:]
            continue
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        record["dtype"] = dtype
        record["matches_transformers"] = {name: sum(a == b for a, b in zip(record["generations"][name], expected[name]))
                                          for name in expected}
        record["prompts"] = len(PROMPTS)
        record["outputs_changed_with_weights"] = record["generations"]["second"] != record["generations"]["first"]
        record["back_to_first"] = record["generations"]["first_again"] == record["generations"]["first"]
        record["still_serving_after_bad_push"] = record["after_bad_push"] == record["generations"]["first"]
        del record["generations"], record["after_bad_push"]
        report["server"] = record
        break
    Path(out_path).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0 if "server" in report else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "vllm-server-check.json"))
