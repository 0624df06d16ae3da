"""Weight updates to vLLM and SGLang servers (`OpenAICompatibleBackend(server="vllm"|"sglang")`)
against loopback servers that implement exactly those servers' request/response shapes
(tests/backends/inference_contract.py cites the vLLM 0.34.0 and SGLang 0.5.23 source files).

The servers are real HTTP servers (uvicorn on 127.0.0.1) over a real TransformersBackend, and
the vLLM workers run our real worker extension; what is not real is vLLM and SGLang themselves,
which cannot run here (no GPU). A passing test shows the client sends the documented sequence
and handles the documented answers and failures.
"""

import asyncio
import copy

import pytest
import torch

from inference_contract import ExtendedWorker, ModuleModel, BackendModel, PlainWorker, sglang_app, vllm_app
from spo_agents.backends import SamplingParams
from spo_agents.backends.models import build_tiny_model
from spo_agents.backends.openai_client import BackendHTTPError, BackendProtocolError, OpenAICompatibleBackend
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.serve import ServerThread

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=())
PROMPTS = [[5, 6, 7, 8], [30, 31, 32], [100, 101, 102, 103, 104]]
VLLM_SEQUENCE = ["/pause", "/collective_rpc", "/reset_prefix_cache", "/resume"]
SGLANG_SEQUENCE = ["/pause_generation", "/update_weights_from_disk", "/continue_generation"]


@pytest.fixture(scope="module")
def new_model(tokenizer):
    return build_tiny_model(tokenizer, seed=1)


@pytest.fixture(scope="module")
def expected(model, new_model, tokenizer):
    """Greedy tokens of the old and of the new weights, in process."""
    out = {}
    for name, weights in (("old", model), ("new", new_model)):
        with TransformersBackend(copy.deepcopy(weights), tokenizer) as be:
            out[name] = [r.token_ids for r in be.generate_many(PROMPTS, GREEDY)]
    assert out["old"] != out["new"]
    return out


def client(url, server, tmp_path, **kwargs):
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("max_retries", 1)
    dialect = "sglang" if server == "sglang" else "vllm"
    return OpenAICompatibleBackend(url, model="contract", server=server, dialect=dialect, weights_dir=tmp_path, **kwargs)


def generate_all(backend, prompts=PROMPTS):
    async def go():
        try:
            return await asyncio.gather(*(backend.generate(p, GREEDY) for p in prompts))
        finally:
            await backend.aclose()

    return asyncio.run(go())


# ---------------------------------------------------------------------------- vLLM
def test_vllm_push_runs_pause_load_on_every_worker_reset_resume(model, new_model, tokenizer, expected, tmp_path):
    second = build_tiny_model(tokenizer, seed=0)  # a second tensor-parallel worker's model
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be:
        workers = [ExtendedWorker(BackendModel(be)), ExtendedWorker(ModuleModel(second))]
        app = vllm_app(be, workers)
        with ServerThread(app) as srv:
            backend = client(srv.url, "vllm", tmp_path)
            assert [r.token_ids for r in generate_all(backend)] == expected["old"]
            backend.update_weights(new_model.state_dict(), version=1)
            log = app.state.contract["log"]
            assert log.paths() == VLLM_SEQUENCE
            (_, pause_query, _), (_, _, rpc_body), (_, reset_query, _), _ = log.calls
            assert pause_query == {"mode": "keep"} and reset_query == {"reset_running_requests": "true"}
            (weights_file,) = rpc_body["args"]
            assert rpc_body == {"method": "spo_load_weights_from_file", "args": [weights_file]}
            assert weights_file.startswith(str(tmp_path)) and weights_file.endswith("policy-v1.safetensors")
            # both workers loaded the file: generation uses it, and the second worker's model equals it
            after = generate_all(backend)
            assert [r.token_ids for r in after] == expected["new"] and backend.policy_version == 1
            assert {(r.policy_version, r.final_policy_version) for r in after} == {(1, 1)}
            assert all(torch.equal(second.state_dict()[k], v) for k, v in new_model.state_dict().items())
            backend.update_weights(model.state_dict(), version=2)
            assert [r.token_ids for r in generate_all(backend)] == expected["old"]
            files = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
            assert files == ["policy-v2.safetensors"]  # the previous file is removed
            backend.close()
            assert not list(tmp_path.rglob("*.safetensors"))


def test_vllm_requests_sent_during_the_pause_wait_and_run_on_the_new_weights(model, new_model, tokenizer,
                                                                          expected, tmp_path):
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be:
        app = vllm_app(be, [ExtendedWorker(BackendModel(be), delay_s=0.6)])
        state = app.state.contract
        with ServerThread(app) as srv:
            backend = client(srv.url, "vllm", tmp_path)

            async def go():
                push = asyncio.ensure_future(backend.aupdate_weights(new_model.state_dict(), 1))
                while not state["log"].calls:  # the server has received /pause
                    await asyncio.sleep(0.01)
                answers = await asyncio.gather(*(backend.generate(p, GREEDY) for p in PROMPTS))
                summary = await push
                await backend.aclose()
                return answers, summary

            answers, summary = asyncio.run(go())
            assert state["paused_mode"] == "keep" and state["log"].paths() == VLLM_SEQUENCE
            assert [r.token_ids for r in answers] == expected["new"]  # queued until /resume
            assert summary["workers"] == 1 and summary["tensors"] == len(new_model.state_dict())
            assert summary["policy_version"] == 1 and backend.policy_version == 1


def test_vllm_without_dev_mode_says_which_variable_to_set(model, new_model, tokenizer, tmp_path):
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be, \
            ServerThread(vllm_app(be, [], dev_mode=False)) as srv:
        backend = client(srv.url, "vllm", tmp_path)
        with pytest.raises(BackendHTTPError, match="VLLM_SERVER_DEV_MODE=1") as failed:
            backend.update_weights(new_model.state_dict(), version=1)
        assert failed.value.status == 404 and "/pause" in str(failed.value)
        assert backend.policy_version == 0 and not list(tmp_path.rglob("*.safetensors"))


def test_vllm_without_the_worker_extension_says_which_flag_to_set_and_resumes(model, new_model, tokenizer,
                                                                             expected, tmp_path):
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be:
        app = vllm_app(be, [PlainWorker(BackendModel(be))])
        with ServerThread(app) as srv:
            backend = client(srv.url, "vllm", tmp_path)
            with pytest.raises(BackendHTTPError, match="--worker-extension-cls spo_agents.backends.vllm_worker."
                                                       "SPOWorkerExtension") as failed:
                backend.update_weights(new_model.state_dict(), version=1)
            assert failed.value.status == 501
            log = app.state.contract["log"].paths()
            assert log[0] == "/pause" and log[-1] == "/resume" and "/reset_prefix_cache" not in log
            assert app.state.contract["gate"].is_set()  # not left paused
            assert backend.policy_version == 0 and not list(tmp_path.rglob("*.safetensors"))
            assert [r.token_ids for r in generate_all(backend)] == expected["old"]


def test_vllm_prefix_cache_not_reset_is_an_error_and_the_server_resumes(model, new_model, tokenizer, tmp_path):
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be:
        app = vllm_app(be, [ExtendedWorker(BackendModel(be))], reset_succeeds=False)
        with ServerThread(app) as srv:
            backend = client(srv.url, "vllm", tmp_path)
            with pytest.raises(BackendProtocolError, match="prefix cache"):
                backend.update_weights(new_model.state_dict(), version=1)
            assert app.state.contract["log"].paths() == VLLM_SEQUENCE
            assert backend.policy_version == 0


# ---------------------------------------------------------------------------- SGLang
def test_sglang_push_runs_pause_load_from_disk_continue(model, new_model, tokenizer, expected, tmp_path):
    with TransformersBackend(copy.deepcopy(model), tokenizer) as be:
        app = sglang_app(be)
        state = app.state.contract
        with ServerThread(app) as srv:
            backend = client(srv.url, "sglang", tmp_path)
            assert [r.token_ids for r in generate_all(backend)] == expected["old"]
            answer = asyncio.run(backend.aupdate_weights(new_model.state_dict(), 3))
            assert state["log"].paths() == SGLANG_SEQUENCE and state["paused_mode"] == "retract"
            (_, _, pause), (_, _, load), (_, _, resume) = state["log"].calls
            assert pause == {"mode": "retract"} and resume == {}
            assert load == {"model_path": load["model_path"], "weight_version": "3", "flush_cache": True}
            assert load["model_path"].startswith(str(tmp_path)) and load["model_path"].endswith("policy-v3")
            assert answer["message"] == "Succeeded to update model weights." and state["weight_version"] == "3"
            assert [r.token_ids for r in generate_all(backend)] == expected["new"] and backend.policy_version == 3

            # weights SGLang refuses: 400 {"success": false, "message"}; generation continues, version kept
            with pytest.raises(BackendHTTPError, match="Failed to update weights") as failed:
                backend.update_weights({"no.such.weight": torch.zeros(2)}, version=4)
            assert failed.value.status == 400 and state["log"].paths()[-1] == "/continue_generation"
            assert state["gate"].is_set() and backend.policy_version == 3
            assert [p.name for p in tmp_path.rglob("policy-v*")] == ["policy-v3"]


def test_sglang_without_the_endpoints_is_a_clear_error(tmp_path):
    from fastapi import FastAPI

    with ServerThread(FastAPI()) as srv:
        backend = client(srv.url, "sglang", tmp_path)
        with pytest.raises(BackendHTTPError, match="SGLang weight update: POST /pause_generation failed"):
            backend.update_weights({"w": torch.zeros(2)}, version=1)
    assert backend.policy_version == 0


def test_an_unknown_server_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown generation server 'tgi'"):
        OpenAICompatibleBackend("http://127.0.0.1:9", server="tgi")


# ---------------------------------------------------------------------------- from the training config
def test_config_selects_the_server_and_rejects_settings_that_would_do_nothing(tmp_path):
    from spo_agents.trainer.config import load_config
    from spo_agents.trainer.parts import remote_backend

    config = load_config(None, ["generation=openai", "generation_url=http://gpu-0:8000", "generation_server=sglang",
                                f"generation_weights_dir={tmp_path}"])
    backend = remote_backend("openai", "tiny", "cpu", 0, 1, config.generation_url, config.generation_client_options())
    assert (backend.server, backend.dialect, backend.base_url) == ("sglang", "sglang", "http://gpu-0:8000")
    assert backend._weights_dir == tmp_path
    bad = {
        "generation_server=vllm": "generation is local",
        "generation_weights_dir=/shared": "generation is local",
        "generation=openai": "exactly one generation_url",
        "generation=openai\ngeneration_url=[http://a:1, http://b:1]": "exactly one generation_url",
        "generation=ray\ngeneration_url=[http://a:1, http://b:1]\ngeneration_workers=3": "must be 1 or 2",
        "generation=ray\ngeneration_server=vllm": "need generation_url",
        "generation=openai\ngeneration_url=http://a:1\ngeneration_server=tgi": "generation_server",
    }
    for overrides, message in bad.items():
        with pytest.raises(ValueError, match=message):
            load_config(None, overrides.split("\n"))


def test_the_trainer_pushes_every_step_through_the_vllm_sequence(model, tokenizer, tmp_path):
    from spo_agents.trainer.config import load_config
    from spo_agents.trainer.loop import Trainer

    with TransformersBackend(copy.deepcopy(model), tokenizer) as be:
        app = vllm_app(be, [ExtendedWorker(BackendModel(be))])
        with ServerThread(app) as srv:
            config = load_config(None, [
                "model=tiny", "warm_start=null", "env_kwargs={}", "steps=2", "batch_size=2", "eval.enabled=false",
                "transcripts=0", "rollout.num_slots=2", "rollout.max_tokens_per_turn=8",
                "rollout.max_tokens_per_episode=16", "checkpoint_every=5", "generation=openai",
                f"generation_url={srv.url}", "generation_server=vllm", f"generation_weights_dir={tmp_path / 'w'}",
                f"output_dir={tmp_path / 'run'}"])
            summary = asyncio.run(Trainer(config, show_progress=False).run())
            paths = app.state.contract["log"].paths()
    assert summary["steps"] == 2 and app.state.contract["log"].completions >= 4
    assert paths == VLLM_SEQUENCE * 3  # the initial sync, then one push per step
    assert be.policy_version == 3  # each push reached the model that generates
