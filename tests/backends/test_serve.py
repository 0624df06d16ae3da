"""`spo-agents serve` on its own: the vLLM-shaped wire format, errors, weight reloads and the CLI.

The server runs for real on loopback (uvicorn in a background thread) over the continuous-batching
backend with the tiny fp32 model; requests are plain httpx calls, so what is checked is exactly
what a vLLM client would see.
"""

import argparse
import copy
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from spo_agents.backends import SamplingParams
from spo_agents.backends.models import build_tiny_model
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.chat import ChatFormatter
from spo_agents.cli import serve_cmd
from spo_agents.serve import ServerThread, create_app

NO_STOP = SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=())


@pytest.fixture(scope="module")
def backend(model, tokenizer):
    with TransformersBackend(model, tokenizer) as be:
        yield be


@pytest.fixture(scope="module")
def http(backend, tokenizer):
    with ServerThread(create_app(backend, tokenizer, "tiny")) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            yield client


def complete(http, **body):
    response = http.post("/v1/completions", json={"max_tokens": 24, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_string_and_token_id_prompts_give_the_same_completion(http, tokenizer):
    text = "<|im_start|>user\nWhat is the sum of 2 and 3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    by_text, by_ids = complete(http, prompt=text, ignore_eos=True), complete(http, prompt=ids, ignore_eos=True)
    assert by_text["choices"][0]["token_ids"] == by_ids["choices"][0]["token_ids"]
    assert by_text["usage"] == by_ids["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 24, "total_tokens": len(ids) + 24}
    batch = complete(http, prompt=[ids, ids[:-2]], ignore_eos=True)  # a list of prompts: one choice each
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert batch["choices"][0]["token_ids"] == by_ids["choices"][0]["token_ids"]


def test_logprob_tokens_as_ids_or_text(http, backend, tokenizer):
    prompt = [17, 230, 45, 9, 301]
    expected = backend.generate_many([prompt], NO_STOP)[0]
    as_ids = complete(http, prompt=prompt, ignore_eos=True, logprobs=0, return_tokens_as_token_ids=True)["choices"][0]
    assert as_ids["logprobs"]["tokens"] == [f"token_id:{t}" for t in expected.token_ids]
    assert as_ids["logprobs"]["token_logprobs"] == pytest.approx(expected.logprobs, abs=1e-5)
    as_text = complete(http, prompt=prompt, ignore_eos=True, logprobs=1)["choices"][0]
    pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in expected.token_ids]
    assert as_text["logprobs"]["tokens"] == pieces
    assert as_text["logprobs"]["text_offset"][1] == len(pieces[0])
    assert complete(http, prompt=prompt, ignore_eos=True)["choices"][0]["logprobs"] is None


def test_stop_strings_and_ids_follow_vllm_semantics(http, backend, tokenizer):
    prompt = [17, 230, 45, 9, 301]
    free = backend.generate_many([prompt], NO_STOP)[0].token_ids
    stop_id = free[4]
    by_id = complete(http, prompt=prompt, ignore_eos=True, stop_token_ids=[stop_id], skip_special_tokens=False)["choices"][0]
    cut = free[: free.index(stop_id) + 1]
    assert by_id["token_ids"] == cut and by_id["stop_reason"] == stop_id and by_id["finish_reason"] == "stop"
    assert by_id["text"] == tokenizer.decode(cut[:-1], skip_special_tokens=False)  # the stop token is not text
    kept = complete(http, prompt=prompt, ignore_eos=True, stop_token_ids=[stop_id], include_stop_str_in_output=True,
                    skip_special_tokens=False)["choices"][0]
    assert kept["text"] == tokenizer.decode(cut, skip_special_tokens=False)

    full_text = tokenizer.decode(free, skip_special_tokens=False)
    stop = full_text[len(tokenizer.decode(free[:8], skip_special_tokens=False)):][:3]
    for include in (False, True):
        choice = complete(http, prompt=prompt, ignore_eos=True, stop=[stop], include_stop_str_in_output=include,
                          skip_special_tokens=False)["choices"][0]
        at = full_text.index(stop)
        assert choice["stop_reason"] == stop and choice["text"] == full_text[: at + (len(stop) if include else 0)]
        assert choice["token_ids"] == free[: len(choice["token_ids"])]  # ids are never cut mid-token
        assert stop in tokenizer.decode(choice["token_ids"], skip_special_tokens=False)


def test_end_of_turn_stop_reports_no_stop_reason_like_vllm(http, backend, tokenizer):
    fmt = ChatFormatter(tokenizer)
    prompt = fmt.initial_prompt_ids([{"role": "user", "content": "Hello there"}])
    eos = tokenizer.eos_token_id
    forced = TransformersBackend(_ForceToken(backend.model, eos, len(prompt) + 3), tokenizer)
    with forced, ServerThread(create_app(forced, tokenizer, "forced")) as srv:
        body = {"prompt": prompt, "max_tokens": 30, "temperature": 0}
        by_eos = httpx.post(f"{srv.url}/v1/completions", json=body).json()["choices"][0]
        assert by_eos["finish_reason"] == "stop" and by_eos["stop_reason"] is None and by_eos["token_ids"][-1] == eos
        asked = httpx.post(f"{srv.url}/v1/completions", json={**body, "stop_token_ids": [eos]}).json()["choices"][0]
        assert asked["stop_reason"] == eos
        ignored = httpx.post(f"{srv.url}/v1/completions", json={**body, "ignore_eos": True}).json()["choices"][0]
        assert ignored["finish_reason"] == "length" and len(ignored["token_ids"]) == 30


class _ForceToken(torch.nn.Module):
    """The tiny model, except that `token` wins once the sequence reaches `position`."""

    def __init__(self, inner, token, position):
        super().__init__()
        self.inner, self.config, self.token, self.position = inner, inner.config, token, position
        self.generation_config = inner.generation_config

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)
        out.logits[position_ids[:, -1] >= self.position, -1, self.token] += 1000.0
        return out


def test_chat_renders_tools_with_the_template(http, backend, tokenizer):
    tools = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
                                               "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]
    messages = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": [{"type": "text", "text": "17*23?"}]}]
    response = http.post("/v1/chat/completions", json={"messages": messages, "tools": tools, "max_tokens": 10,
                                                       "temperature": 0, "return_token_ids": True})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    flat = [messages[0], {"role": "user", "content": "17*23?"}]
    assert choice["prompt_token_ids"] == ChatFormatter(tokenizer).initial_prompt_ids(flat, tools=tools)
    reference = backend.generate_many([choice["prompt_token_ids"]], SamplingParams(temperature=0.0, max_new_tokens=10))[0]
    assert choice["token_ids"] == reference.token_ids and choice["message"]["role"] == "assistant"


@pytest.mark.parametrize("body, message", [
    ({"prompt": [1, 2], "n": 2}, "only n=1"),
    ({"prompt": [1, 2], "stream": True}, "streaming"),
    ({"prompt": [1, 2], "logprobs": 5}, "sampled token's log-prob only"),
    ({"prompt": [1, -2]}, "out of range"),
    ({"prompt": []}, "must not be empty"),
    ({"prompt": "hi", "top_p": 0.0}, "top_p"),
    ({"prompt": [1, 2], "max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 3}, "prompt"),
])
def test_bad_requests_are_openai_style_400s(http, body, message):
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == 400 and error["type"] == "invalid_request_error"


def test_models_and_health(http):
    assert http.get("/health").json() == {"status": "ok", "model": "tiny", "policy_version": 0}
    card = http.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny" and card["max_model_len"] == 4096 and card["object"] == "model"


KEY = "test-key-0123456789"


def test_load_weights_endpoint(model, tokenizer, tmp_path):
    from safetensors.torch import save_file

    other = build_tiny_model(tokenizer, seed=2)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "model.safetensors"))
    save_file({"lm_head.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    prompt = [17, 230, 45, 9, 301]
    with TransformersBackend(other, tokenizer) as be:
        expected = be.generate_many([prompt], NO_STOP)[0].token_ids
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be, \
            ServerThread(create_app(be, tokenizer, "tiny", api_key=KEY, weights_dir=tmp_path)) as srv:
        headers = {"Authorization": f"Bearer {KEY}"}
        post = lambda path, body: httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=60)  # noqa: E731
        loaded = post("/v1/load_weights", {"path": str(folder), "version": 7})
        assert loaded.status_code == 200 and loaded.json()["policy_version"] == 7
        choice = post("/v1/completions", {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}).json()["choices"][0]
        assert choice["token_ids"] == expected and choice["policy_version"] == 7
        missing = post("/v1/load_weights", {"path": "nothing", "version": 8})
        assert missing.status_code == 400 and "no readable safetensors weights" in missing.json()["error"]["message"]
        bad = post("/v1/load_weights", {"path": "bad.safetensors", "version": 8})  # relative to the weights folder
        assert bad.status_code == 400 and "shape" in bad.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/health").json()["policy_version"] == 7


def test_cli_options():
    parser = argparse.ArgumentParser()
    serve_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "tiny", "--port", "0", "--max-batch-size", "8"])
    assert (args.model, args.host, args.port, args.max_batch_size) == ("tiny", "127.0.0.1", 0, 8)
    assert args.func is serve_cmd.run_serve


def test_the_serve_command_serves_until_interrupted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = ("import argparse, sys; from spo_agents.cli import serve_cmd; p = argparse.ArgumentParser(); "
              "serve_cmd.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    cmd = [sys.executable, "-c", script, "serve", "--model", "tiny", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline, health = time.monotonic() + 90, None
        while health is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert health == {"status": "ok", "model": "tiny", "policy_version": 0}
        body = {"prompt": "Hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
        assert len(httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30).json()["choices"][0]["token_ids"]) == 5
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and f"serving tiny on http://127.0.0.1:{port}" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
