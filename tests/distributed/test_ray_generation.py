"""Generation replicas as Ray actors: the same tokens as in-process (transformers replicas and
an actor speaking to an OpenAI-compatible server), weight broadcasts, and a replica that dies."""

import asyncio
import random
import time

import pytest
import torch

from spo_agents.backends import Backend, SamplingParams
from spo_agents.backends.models import load_model
from spo_agents.backends.transformers_backend import TransformersBackend

ray = pytest.importorskip("ray")
from spo_agents.distributed.generation import GenerationSpec, GenerationWorkerDied, RayGenerationBackend  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=())


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def local(tiny):
    with TransformersBackend(tiny.model, tiny.tokenizer) as backend:
        yield backend


@pytest.fixture(scope="module")
def remote(ray_cluster):
    backend = RayGenerationBackend(GenerationSpec(model="tiny"), num_workers=2, num_cpus=1)
    backend.ready()
    yield backend
    backend.close()


def prompts(tokenizer, count=6, seed=0):
    rng = random.Random(seed)
    texts = [f"<|im_start|>user\nWhat is {rng.randint(2, 99)} times {rng.randint(2, 99)}?<|im_end|>\n"
             f"<|im_start|>assistant\n" for _ in range(count)]
    return [tokenizer.encode(t) for t in texts]


def generate_all(backend, prompt_list, params):
    async def go():
        return await asyncio.gather(*(backend.generate(p, params) for p in prompt_list))

    return asyncio.run(go())


def assert_same(ours, theirs, version):
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert a.policy_version == version
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_replicas_give_the_in_process_tokens(local, remote, tiny):
    assert isinstance(remote, Backend)
    batch = prompts(tiny.tokenizer)
    seeded = SamplingParams(temperature=1.0, max_new_tokens=12, stop_token_ids=(), seed=7)
    for params in (GREEDY, seeded):
        assert_same(generate_all(remote, batch, params), generate_all(local, batch, params), version=0)
    assert all(n >= len(batch) for n in remote.stats["requests"])  # both replicas served
    assert [info["requests"] for info in remote.ready()] == remote.stats["requests"]


def perturbed(model, seed, scale=0.05):
    generator = torch.Generator().manual_seed(seed)
    return {name: t + scale * torch.randn(t.shape, generator=generator) for name, t in model.state_dict().items()}


def test_weight_broadcast_and_a_replica_that_dies(local, remote, tiny):
    batch = prompts(tiny.tokenizer, seed=1)
    before = generate_all(local, batch, GREEDY)
    weights = perturbed(tiny.model, seed=1)  # the local backend's model is tiny.model: update it last
    remote.update_weights(weights, version=1)
    local.update_weights(weights, version=1)
    after = generate_all(local, batch, GREEDY)
    assert any(a.token_ids != b.token_ids for a, b in zip(after, before))  # the update matters
    assert_same(generate_all(remote, batch, GREEDY), after, version=1)
    assert [info["policy_version"] for info in remote.ready()] == [1, 1]

    pid = remote.ready()[0]["pid"]
    ray.kill(remote.workers[0], no_restart=False)  # Ray restarts it with the spec's weights (version 0)
    deadline, died, results = time.monotonic() + 120, 0, []
    while time.monotonic() < deadline:
        try:
            results = generate_all(remote, batch, GREEDY)
        except GenerationWorkerDied:
            died += 1
            continue
        if all(r.policy_version == 1 for r in results):
            break
    assert remote.ready()[0]["pid"] != pid and remote.stats["resyncs"] >= 1
    assert_same(results, after, version=1)


def test_an_actor_can_host_the_http_client_of_a_server(local, tiny, ray_cluster, tmp_path):
    serve = pytest.importorskip("spo_agents.serve")
    app = serve.create_app(local, tiny.tokenizer, "tiny", api_key="ray-key", weights_dir=tmp_path)
    with serve.ServerThread(app) as server:
        options = {"max_retries": 1, "api_key": "ray-key", "weights_dir": str(tmp_path)}
        spec = GenerationSpec(kind="openai", base_url=server.url, model=None, options=options)
        with RayGenerationBackend(spec, num_workers=1, num_cpus=0.5, policy_version=local.policy_version) as remote:
            batch = prompts(tiny.tokenizer, seed=2)
            assert_same(generate_all(remote, batch, GREEDY), generate_all(local, batch, GREEDY),
                        version=local.policy_version)
            weights = perturbed(tiny.model, seed=2, scale=0.0)  # same values: only the version moves
            remote.update_weights(weights, version=5)
            assert local.policy_version == 5 and remote.policy_version == 5
            assert all(r.policy_version == 5 for r in generate_all(remote, batch, GREEDY))
