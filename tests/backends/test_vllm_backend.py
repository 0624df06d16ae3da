"""The in-process vLLM backend.

vLLM cannot be installed on the development machine (no GPU, no network), so this file has two
parts:

- Protocol-compatibility checks that run everywhere: the translation of SamplingParams into
  `vllm.SamplingParams` keyword arguments, and the conversion of vLLM's final output into a
  GenerationResult. The outputs are small dataclasses shaped like vLLM's `RequestOutput`,
  `CompletionOutput` and `Logprob` (same attribute names and nesting); they stand in for vLLM's
  objects *only* for these pure functions. The worker-side weight loader is checked against a
  model that follows vLLM's `load_weights(iterable of (name, tensor))` contract.
- An end-to-end test of the real engine, skipped unless vLLM and a CUDA GPU are present. It has
  not been run here: the real engine is untested on this machine.
"""

import asyncio
import importlib.util
from dataclasses import dataclass, field

import pytest
import torch

from spo_agents.backends import FinishReason, SamplingParams
from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer
from spo_agents.backends.openai_client import BackendProtocolError, save_safetensors
from spo_agents.backends.vllm_backend import (
    ENGINE_DEFAULTS,
    SPOWorkerExtension,
    VLLMBackend,
    result_from_vllm_output,
    vllm_sampling_kwargs,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput (the fields used)
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def vllm_output(token_ids, logprobs, finish_reason, stop_reason=None, text="", extra_alternative=True):
    entries = []
    for rank, (t, lp) in enumerate(zip(token_ids, logprobs)):
        entry = {t: Logprob(lp, rank=1, decoded_token=f"<{t}>")}
        if extra_alternative:  # logprobs=0 can still carry the top-1 token when it differs from the sample
            entry[t + 1000] = Logprob(lp + 0.5, rank=1)
        entries.append(entry)
    completion = CompletionOutput(0, text, token_ids, sum(logprobs), entries, finish_reason, stop_reason)
    return RequestOutput("spo-1", [1, 2, 3], [completion])


# ---------------------------------------------------------------------------- runs everywhere
def test_sampling_params_translation():
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0.0, max_new_tokens=7))
    assert greedy["temperature"] == 0.0 and greedy["max_tokens"] == 7 and greedy["top_k"] == -1
    assert greedy["logprobs"] == 0 and greedy["include_stop_str_in_output"] and not greedy["skip_special_tokens"]
    assert "stop_token_ids" not in greedy and "ignore_eos" not in greedy and greedy["stop"] is None
    explicit = vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=4,
                                                   stop_token_ids=(5, 6), stop_strings=("</tool_call>",)))
    assert explicit["stop_token_ids"] == [5, 6] and explicit["ignore_eos"] is True
    assert (explicit["top_k"], explicit["top_p"], explicit["seed"]) == (20, 0.9, 4)
    assert explicit["stop"] == ["</tool_call>"] and explicit["n"] == 1
    assert vllm_sampling_kwargs(SamplingParams(stop_token_ids=()))["ignore_eos"] is True  # no stop ids at all


def test_engine_defaults_follow_the_logprob_convention():
    assert ENGINE_DEFAULTS["logprobs_mode"] == "processed_logprobs"
    assert ENGINE_DEFAULTS["generation_config"] == "vllm"
    assert ENGINE_DEFAULTS["worker_extension_cls"] == "spo_agents.backends.vllm_worker.SPOWorkerExtension"


def test_output_conversion_and_finish_reasons():
    params = SamplingParams()
    out = vllm_output([11, 12, 13], [-0.5, -1.0, -2.0], "length", text="abc")
    result = result_from_vllm_output(out, params, policy_version=3, final_policy_version=4, prompt_len=3)
    assert result.token_ids == [11, 12, 13] and result.logprobs == [-0.5, -1.0, -2.0]  # the sampled ids' entries
    assert result.finish_reason is FinishReason.LENGTH and (result.policy_version, result.final_policy_version) == (3, 4)

    by_string = vllm_output([11, 12], [-0.1, -0.2], "stop", "</tool_call>", text='{"a": 1}\n</tool_call>')
    assert result_from_vllm_output(by_string, params, policy_version=0, final_policy_version=0,
                                   prompt_len=3).finish_reason is FinishReason.TOOL_CALL
    by_token = vllm_output([11, 99], [-0.1, -0.2], "stop", 99, text="x</tool_call>")  # a one-token </tool_call>
    converted = result_from_vllm_output(by_token.outputs[0], params, policy_version=0, final_policy_version=0, prompt_len=3)
    assert converted.finish_reason is FinishReason.TOOL_CALL and converted.stop_reason == 99
    end_of_turn = vllm_output([11, 2], [-0.1, -0.2], "stop", None, text="x<|im_end|>")
    assert result_from_vllm_output(end_of_turn, params, policy_version=0, final_policy_version=0,
                                   prompt_len=3).finish_reason is FinishReason.STOP
    aborted = vllm_output([11], [-0.1], "abort")
    assert result_from_vllm_output(aborted, params, policy_version=0, final_policy_version=0,
                                   prompt_len=3).finish_reason is FinishReason.ABORT


def test_output_conversion_rejects_missing_logprobs():
    params = SamplingParams()
    no_logprobs = vllm_output([11], [-0.1], "length")
    no_logprobs.outputs[0].logprobs = None
    with pytest.raises(BackendProtocolError, match="logprobs=0"):
        result_from_vllm_output(no_logprobs, params, policy_version=0, final_policy_version=0, prompt_len=1)
    wrong_entry = vllm_output([11], [-0.1], "length", extra_alternative=False)
    wrong_entry.outputs[0].logprobs = [{12: Logprob(-0.3)}]
    with pytest.raises(BackendProtocolError, match="sampled token 11"):
        result_from_vllm_output(wrong_entry, params, policy_version=0, final_policy_version=0, prompt_len=1)


class VLLMStyleModel(torch.nn.Module):
    """A model with vLLM's loader contract: `load_weights(iterable of (hf_name, tensor)) -> loaded names`."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def load_weights(self, weights):
        own, loaded = self.inner.state_dict(), set()
        for name, tensor in weights:
            own[name].copy_(tensor)
            loaded.add(name)
        return loaded


def test_worker_extension_loads_a_saved_state_dict(tmp_path):
    tokenizer = build_tiny_tokenizer()
    target, source = build_tiny_model(tokenizer, seed=0), build_tiny_model(tokenizer, seed=3)
    path = tmp_path / "policy-v1.safetensors"
    assert save_safetensors(source, path) == len(source.state_dict())

    class Runner:
        def get_model(self):
            return model

    model = VLLMStyleModel(target)
    worker = type("Worker", (SPOWorkerExtension,), {"model_runner": Runner(), "device": "cpu"})()
    answer = worker.spo_load_weights_from_file(str(path))
    assert answer == {"tensors": len(source.state_dict()), "loader": "load_weights"}
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_worker_extension_prefers_the_in_place_reload_of_newer_workers(tmp_path):
    """vLLM 0.34's Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True) re-runs the
    weight post-processing; the extension hands it the file's tensors."""
    tokenizer = build_tiny_tokenizer()
    target, source = build_tiny_model(tokenizer, seed=0), build_tiny_model(tokenizer, seed=3)
    path = tmp_path / "policy-v1.safetensors"
    save_safetensors(source, path)
    calls = []

    class Worker(SPOWorkerExtension):
        device = "cpu"

        def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
            calls.append(is_checkpoint_format)
            VLLMStyleModel(target).load_weights(weights_iterator)

    assert Worker().spo_load_weights_from_file(str(path))["loader"] == "reload_weights" and calls == [True]
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_a_clear_import_error_without_vllm():
    with pytest.raises(ImportError, match="pip install"):
        VLLMBackend("some/model")


# ---------------------------------------------------------------------------- needs vLLM and a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM and a CUDA GPU")
def test_real_engine_matches_the_transformers_backend_and_updates_weights(tmp_path):
    from spo_agents.backends.transformers_backend import TransformersBackend

    tokenizer = build_tiny_tokenizer()
    first, second = (build_tiny_model(tokenizer, seed=s, hidden_size=256) for s in (0, 1))
    first.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    prompts = [[17, 230, 45, 9, 301], [5, 6, 7, 8, 9, 10, 11]]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=())
    references = []
    for model in (first, second):
        with TransformersBackend(model, tokenizer) as be:
            references.append(be.generate_many(prompts, params))

    backend = VLLMBackend(str(tmp_path / "model"), dtype="float32", enforce_eager=True, max_model_len=512,
                          gpu_memory_utilization=0.3, weights_dir=tmp_path / "weights")

    async def scenario():
        before = await asyncio.gather(*(backend.generate(p, params) for p in prompts))
        await backend.aupdate_weights(second.state_dict(), version=1)
        after = await asyncio.gather(*(backend.generate(p, params) for p in prompts))
        return before, after

    try:
        before, after = asyncio.run(scenario())
    finally:
        backend.close()
    for results, expected, version in ((before, references[0], 0), (after, references[1], 1)):
        for got, want in zip(results, expected):
            assert got.token_ids == want.token_ids and got.policy_version == version
            assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) < 2e-3
