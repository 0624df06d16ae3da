"""The OpenAI-compatible HTTP backend against `spo-agents serve` on loopback (tiny fp32 model).

Every server here is real: the FastAPI app over a TransformersBackend, served by uvicorn from a
background thread on 127.0.0.1 with an ephemeral port. Faults are injected by wrapping the real
backend (one that raises, one that is slow), never by mocking HTTP.
"""

import asyncio
import copy
import random
import time

import openai
import pytest
import torch
from fastapi import FastAPI

from spo_agents.backends import Backend, FinishReason, SamplingParams
from spo_agents.backends.models import build_tiny_model
from spo_agents.backends.openai_client import (
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeoutError,
    OpenAICompatibleBackend,
    build_completion_body,
    parse_completion_choice,
)
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.chat import ChatFormatter
from spo_agents.serve import ServerThread, create_app

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=())


@pytest.fixture(scope="module")
def backend(model, tokenizer):
    with TransformersBackend(model, tokenizer, max_batch_size=64) as be:
        yield be


@pytest.fixture(scope="module")
def server(backend, tokenizer):
    with ServerThread(create_app(backend, tokenizer, "tiny")) as srv:
        yield srv


def client_for(url, **kwargs):
    kwargs.setdefault("backoff_base", 0.01)
    return OpenAICompatibleBackend(url, **kwargs)


def random_prompts(count, seed=0, low=3, high=30):
    rng = random.Random(seed)
    return [[rng.randrange(3, 1000) for _ in range(rng.randint(low, high))] for _ in range(count)]


async def gather(client, prompts, params):
    try:
        return await asyncio.gather(*(client.generate(p, params) for p in prompts))
    finally:
        await client.aclose()


class FlakyBackend:
    """A real backend whose first `failures` generate calls raise (a server-side fault)."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.calls = inner, failures, 0

    @property
    def policy_version(self):
        return self.inner.policy_version

    async def generate(self, prompt_ids, params):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"injected failure {self.calls}")
        return await self.inner.generate(prompt_ids, params)

    def update_weights(self, weights, version):
        self.inner.update_weights(weights, version)


class SlowBackend(FlakyBackend):
    """A real backend that sleeps before generating; counts requests cancelled by disconnects."""

    def __init__(self, inner, delay):
        super().__init__(inner, failures=0)
        self.delay, self.cancelled = delay, 0

    async def generate(self, prompt_ids, params):
        self.calls += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await self.inner.generate(prompt_ids, params)


def test_satisfies_the_backend_protocol(server):
    client = client_for(server.url)
    assert isinstance(client, Backend) and client.policy_version == 0


@pytest.mark.parametrize("params", [GREEDY, SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=16, stop_token_ids=(), seed=5)],
                         ids=["greedy", "seeded-sampling"])
def test_token_ids_and_logprobs_match_the_in_process_backend(server, backend, params):
    prompts = random_prompts(6, seed=1)
    remote = asyncio.run(gather(client_for(server.url), prompts, params))
    local = backend.generate_many(prompts, params)
    for r, l, prompt in zip(remote, local, prompts):
        assert r.token_ids == l.token_ids and len(r.token_ids) == 16
        assert max(abs(a - b) for a, b in zip(r.logprobs, l.logprobs)) < 1e-5
        assert r.finish_reason is FinishReason.LENGTH and r.prompt_len == len(prompt)
        assert (r.policy_version, r.final_policy_version) == (0, 0)


def test_stop_at_tool_call_close_is_a_tool_call(model, tokenizer, scripted_tool_closer):
    fmt = ChatFormatter(tokenizer)
    tool_close = tokenizer.convert_tokens_to_ids("</tool_call>")
    prompt = fmt.initial_prompt_ids([{"role": "user", "content": "Multiply 17 by 23."}])
    scripted = scripted_tool_closer(model, tool_close, position=len(prompt) + 5)
    with TransformersBackend(scripted, tokenizer) as be, ServerThread(create_app(be, tokenizer, "scripted")) as srv:
        for stop_ids in (fmt.stop_token_ids, ()):  # matched as a stop token, then as a stop string
            params = SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=stop_ids, stop_strings=fmt.stop_strings)
            result = asyncio.run(gather(client_for(srv.url), [prompt], params))[0]
            assert result.finish_reason is FinishReason.TOOL_CALL
            assert result.token_ids[-1] == tool_close and len(result.token_ids) == 7
            assert result.stop_reason == (tool_close if stop_ids else "</tool_call>")
        # a stop string other than the tool-call close is an ordinary stop
        text = tokenizer.decode(result.token_ids[2:4], skip_special_tokens=False)
        params = SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=(), stop_strings=(text,))
        other = asyncio.run(gather(client_for(srv.url), [prompt], params))[0]
        assert other.finish_reason is FinishReason.STOP and other.stop_reason == text


def test_the_official_openai_client_works(server, backend, tokenizer):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    prompt = random_prompts(1, seed=2)[0]
    expected = backend.generate_many([prompt], GREEDY)[0]
    completion = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=16, temperature=0, logprobs=0,
        extra_body={"return_tokens_as_token_ids": True, "skip_special_tokens": False, "ignore_eos": True})
    choice = completion.choices[0]
    assert choice.logprobs.tokens == [f"token_id:{t}" for t in expected.token_ids]
    assert choice.text == tokenizer.decode(expected.token_ids, skip_special_tokens=False)
    assert choice.model_extra["token_ids"] == expected.token_ids and choice.model_extra["policy_version"] == 0
    assert completion.usage.completion_tokens == 16 and completion.model == "tiny"

    messages = [{"role": "user", "content": "What is 17 * 23?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, logprobs=True)
    chat_prompt = ChatFormatter(tokenizer).initial_prompt_ids(messages)
    reference = backend.generate_many([chat_prompt], SamplingParams(temperature=0.0, max_new_tokens=12))[0]
    message = chat.choices[0].message
    assert message.role == "assistant" and message.content == tokenizer.decode(reference.token_ids, skip_special_tokens=True)
    assert [c.logprob for c in chat.choices[0].logprobs.content] == pytest.approx(reference.logprobs, abs=1e-5)
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_server_errors_are_retried_then_reported_clearly(backend, tokenizer):
    flaky = FlakyBackend(backend, failures=2)
    with ServerThread(create_app(flaky, tokenizer, "tiny")) as srv:
        client = client_for(srv.url, max_retries=2)
        result = asyncio.run(gather(client, [[5, 6, 7]], GREEDY))[0]  # fails twice, then answers
        assert len(result.token_ids) == 16 and flaky.calls == 3 and client.stats["retries"] == 2

        flaky.failures, flaky.calls = 10**6, 0  # now it always fails
        with pytest.raises(BackendHTTPError, match="injected failure") as failed:
            asyncio.run(gather(client_for(srv.url, max_retries=2), [[5, 6, 7]], GREEDY))
        assert failed.value.status == 500 and failed.value.attempts == 3 and flaky.calls == 3

        flaky.calls = 0  # a 4xx is the caller's fault: reported at once, never retried
        with pytest.raises(BackendHTTPError, match="out of range") as rejected:
            asyncio.run(gather(client_for(srv.url, max_retries=2), [[10**7]], GREEDY))
        assert rejected.value.status == 400 and rejected.value.attempts == 1 and flaky.calls == 0


def test_timeouts_are_retried_then_reported_and_the_server_drops_the_work(backend, tokenizer):
    slow = SlowBackend(backend, delay=3.0)
    with ServerThread(create_app(slow, tokenizer, "tiny")) as srv:
        client = client_for(srv.url, timeout=0.3, max_retries=1)
        start = time.perf_counter()
        with pytest.raises(BackendTimeoutError, match="timed out") as timed_out:
            asyncio.run(gather(client, [[5, 6, 7]], GREEDY))
        assert time.perf_counter() - start < 2.0  # two short attempts, not the 3 s the server needs
        assert timed_out.value.attempts == 2 and isinstance(timed_out.value, TimeoutError)
        deadline = time.monotonic() + 5.0
        while slow.cancelled < 2 and time.monotonic() < deadline:  # disconnects cancel server-side work
            time.sleep(0.05)
        assert slow.calls == 2 and slow.cancelled == 2


def test_an_unreachable_server_is_a_clear_error_after_retries():
    with ServerThread(FastAPI()) as srv:
        url = srv.url  # a port that was just served and is now closed
    client = client_for(url, max_retries=2, connect_timeout=1.0)
    with pytest.raises(BackendHTTPError, match="cannot reach the server") as failed:
        asyncio.run(gather(client, [[5, 6, 7]], GREEDY))
    assert failed.value.status is None and failed.value.attempts == 3


def test_weight_reload_changes_version_and_outputs_without_dropping_requests(model, tokenizer, tmp_path):
    new_model = build_tiny_model(tokenizer, seed=1)
    prompts = random_prompts(3, seed=3)
    with TransformersBackend(new_model, tokenizer) as be:
        expected_new = be.generate_many(prompts, GREEDY)
    long = SamplingParams(temperature=0.0, max_new_tokens=1000, stop_token_ids=())
    app = lambda be: create_app(be, tokenizer, "tiny", api_key="push-key", weights_dir=tmp_path)  # noqa: E731
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be, ServerThread(app(be)) as srv:
        keyless = client_for(srv.url, weights_dir=tmp_path, max_retries=0)
        with pytest.raises(BackendHTTPError, match="refused the weights push") as refused:
            keyless.update_weights(new_model.state_dict(), version=1)
        assert refused.value.status == 401 and be.policy_version == 0
        client = client_for(srv.url, weights_dir=tmp_path, api_key="push-key")
        before = asyncio.run(gather(client, prompts, GREEDY))
        client.update_weights(new_model.state_dict(), version=1)  # blocking form, from this thread
        after = asyncio.run(gather(client, prompts, GREEDY))
        assert client.policy_version == 1 and be.policy_version == 1
        assert [r.token_ids for r in after] == [r.token_ids for r in expected_new] != [r.token_ids for r in before]
        assert {r.policy_version for r in after} == {1} and {r.policy_version for r in before} == {0}

        async def update_mid_flight():
            decoded = be.stats["generated_tokens"]
            running = asyncio.ensure_future(client.generate(prompts[0], long))
            while be.stats["generated_tokens"] < decoded + 20:  # the long request is decoding
                await asyncio.sleep(0.005)
            answer = await client.aupdate_weights(model.state_dict(), version=2)  # async form
            result = await running
            await client.aclose()
            return answer, result

        answer, result = asyncio.run(update_mid_flight())
        assert answer["policy_version"] == 2 and answer["tensors"] == len(model.state_dict())
        assert len(result.token_ids) == 1000 and (result.policy_version, result.final_policy_version) == (1, 2)
        assert list(tmp_path.iterdir()) == [tmp_path / "policy-v2.safetensors"]  # older files are removed

        with pytest.raises(BackendHTTPError, match="weights rejected") as rejected:
            client.update_weights({"no.such.weight": torch.zeros(2)}, version=3)
        assert rejected.value.status == 400 and client.policy_version == 2 and be.policy_version == 2


def test_weight_reload_against_a_server_without_the_endpoint_says_so():
    with ServerThread(FastAPI()) as srv:
        client = client_for(srv.url, max_retries=0)
        with pytest.raises(BackendHTTPError, match="no /v1/load_weights endpoint") as failed:
            client.update_weights({"w": torch.zeros(2)}, version=1)
    assert failed.value.status == 404 and client.policy_version == 0


def test_many_concurrent_requests_are_all_answered_in_one_batch(server, backend):
    prompts = random_prompts(32, seed=4)
    steps, rows = backend.stats["decode_steps"], backend.stats["batch_rows"]
    client = client_for(server.url)
    results = asyncio.run(gather(client, prompts, GREEDY))
    mean_batch = (backend.stats["batch_rows"] - rows) / (backend.stats["decode_steps"] - steps)
    assert len(results) == 32 and all(len(r.token_ids) == 16 for r in results)
    assert [r.token_ids for r in results] == [r.token_ids for r in backend.generate_many(prompts, GREEDY)]
    assert mean_batch > 4  # the HTTP requests really shared decode steps
    assert client.stats["retries"] == 0 and client.stats["failures"] == 0


# ---------------------------------------------------------------------------- wire translation
def test_request_body_for_vllm_and_sglang():
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, stop_token_ids=(2, 7),
                            stop_strings=("</tool_call>",), seed=3)
    vllm = build_completion_body([1, 2, 3], params, model="m")
    assert vllm["prompt"] == [1, 2, 3] and vllm["top_k"] == -1 and vllm["logprobs"] == 0
    assert vllm["stop_token_ids"] == [2, 7] and vllm["ignore_eos"] is True and vllm["seed"] == 3
    assert vllm["return_tokens_as_token_ids"] and vllm["include_stop_str_in_output"] and not vllm["skip_special_tokens"]
    sglang = build_completion_body([1, 2, 3], params, model="m", dialect="sglang")
    assert sglang["no_stop_trim"] is True and "include_stop_str_in_output" not in sglang
    assert "return_tokens_as_token_ids" not in sglang and sglang["return_token_ids"] is True
    default_stops = build_completion_body([1], SamplingParams(top_k=5), model=None)
    assert "stop_token_ids" not in default_stops and "ignore_eos" not in default_stops and default_stops["top_k"] == 5
    with pytest.raises(ValueError, match="dialect"):
        build_completion_body([1], params, model=None, dialect="tgi")


def test_response_parsing_from_token_id_strings_and_sglang_fields():
    params = SamplingParams()
    vllm_choice = {"text": "x</tool_call>", "finish_reason": "stop", "stop_reason": "</tool_call>",
                   "logprobs": {"tokens": ["token_id:11", "token_id:12"], "token_logprobs": [-0.5, -1.25]}}
    result = parse_completion_choice(vllm_choice, params, policy_version=4, final_policy_version=5, prompt_len=9)
    assert result.token_ids == [11, 12] and result.logprobs == [-0.5, -1.25]
    assert result.finish_reason is FinishReason.TOOL_CALL and (result.policy_version, result.final_policy_version) == (4, 5)
    sglang_choice = {"text": "ab", "finish_reason": "stop", "matched_stop": 2, "token_ids": [7, 2],
                     "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2]}}
    result = parse_completion_choice(sglang_choice, params, policy_version=0, final_policy_version=0, prompt_len=1)
    assert result.token_ids == [7, 2] and result.stop_reason == 2 and result.finish_reason is FinishReason.STOP
    with pytest.raises(BackendProtocolError, match="token_logprobs"):
        parse_completion_choice({"text": "", "finish_reason": "length", "token_ids": [1]}, params,
                                policy_version=0, final_policy_version=0, prompt_len=1)
    with pytest.raises(BackendProtocolError, match="token_id:N"):
        parse_completion_choice({"finish_reason": "length", "logprobs": {"tokens": ["a"], "token_logprobs": [-1.0]}},
                                params, policy_version=0, final_policy_version=0, prompt_len=1)


def test_the_trainer_generates_on_spo_serve_and_pushes_each_step(model, tokenizer, tmp_path):
    """The full training loop with `generation: openai` against `spo-agents serve` on loopback."""
    from spo_agents.trainer.config import load_config
    from spo_agents.trainer.loop import Trainer
    from spo_agents.trainer.metrics import read_metrics

    (tmp_path / "weights").mkdir()
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be, \
            ServerThread(create_app(be, tokenizer, "tiny", api_key="trainer-key", weights_dir=tmp_path / "weights")) as srv:
        config = load_config(None, [
            "model=tiny", "warm_start=null", "env_kwargs={}", "steps=2", "batch_size=2", "eval.num_tasks=2",
            "transcripts=0", "rollout.num_slots=2", "rollout.max_tokens_per_turn=8", "rollout.max_tokens_per_episode=16",
            "checkpoint_every=5", "generation=openai", f"generation_url={srv.url}", "generation_server=spo",
            f"generation_weights_dir={tmp_path / 'weights'}", f"output_dir={tmp_path / 'run'}",
            "generation_api_key=trainer-key"])
        summary = asyncio.run(Trainer(config, show_progress=False).run())
        assert be.policy_version == 2  # the initial sync (version 0), then one push per step
    assert "trainer-key" not in (tmp_path / "run" / "config.yaml").read_text()  # the key is never saved
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["steps"] == 2 and [r["policy/version"] for r in records if r["kind"] == "train"] == [1, 2]
    assert summary["episodes"] >= 4 and [r["kind"] for r in records].count("eval") == 2
