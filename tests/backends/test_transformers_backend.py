"""The continuous-batching transformers backend on the tiny fp32 model."""

import asyncio
import random
import time

import pytest
import torch

from spo_agents.backends import Backend, BackendClosedError, FinishReason, SamplingParams
from spo_agents.backends.models import build_tiny_model
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.chat import ChatFormatter
from spo_agents.rollout import Episode, Turn

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=())


@pytest.fixture
def backend(model, tokenizer):
    with TransformersBackend(model, tokenizer, max_batch_size=32) as be:
        yield be


def random_prompts(count, seed=0, low=3, high=40):
    rng = random.Random(seed)
    return [[rng.randrange(3, 1000) for _ in range(rng.randint(low, high))] for _ in range(count)]


def teacher_forced_logprobs(model, prompt, completion, temperature=1.0):
    with torch.no_grad():
        logits_T_V = model(torch.tensor([prompt + completion])).logits[0].float()
    logprobs_T_V = torch.log_softmax(logits_T_V / temperature, dim=-1)
    return [logprobs_T_V[len(prompt) - 1 + i, t].item() for i, t in enumerate(completion)]


def test_satisfies_the_backend_protocol(backend):
    assert isinstance(backend, Backend)
    assert backend.policy_version == 0


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_logprobs_match_a_teacher_forced_forward_pass(backend, model, temperature):
    seeded = temperature == 0.7  # seeded rows draw from their own generator, others share one
    params = SamplingParams(temperature=temperature, top_k=50 if seeded else 0, max_new_tokens=20,
                            stop_token_ids=(), seed=1 if seeded else None)
    prompts = random_prompts(6, seed=1)
    results = backend.generate_many(prompts, params)
    for prompt, result in zip(prompts, results):
        assert len(result.token_ids) == 20 and result.finish_reason is FinishReason.LENGTH
        reference = teacher_forced_logprobs(model, prompt, result.token_ids, temperature or 1.0)
        assert max(abs(a - b) for a, b in zip(reference, result.logprobs)) < 1e-4


def test_batched_and_one_at_a_time_greedy_decoding_agree(backend, model):
    prompts = random_prompts(10, seed=2)
    batched = backend.generate_many(prompts, GREEDY)
    single = [backend.generate_many([p], GREEDY)[0] for p in prompts]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    reference = model.generate(torch.tensor([prompts[0]]), max_new_tokens=24, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
    assert reference[0, len(prompts[0]):].tolist() == batched[0].token_ids


def test_requests_joining_a_running_batch_get_the_same_tokens(model, tokenizer):
    long_params = SamplingParams(temperature=0.0, max_new_tokens=120, stop_token_ids=())
    short_prompt, long_prompt = random_prompts(1, seed=3, low=4, high=4)[0], random_prompts(1, seed=4, low=90, high=90)[0]
    first = random_prompts(1, seed=5, low=10, high=10)[0]
    with TransformersBackend(model, tokenizer) as be:
        alone = [be.generate_many([p], long_params)[0].token_ids for p in (first, short_prompt, long_prompt)]
        running = be.submit(first, long_params)
        while be.stats["generated_tokens"] < 3 * 120 + 20:  # the first request is mid-generation
            time.sleep(0.001)
        joined = [be.submit(p, long_params) for p in (short_prompt, long_prompt)]
        together = [f.result(timeout=60).token_ids for f in [running, *joined]]
        rows_per_step = be.stats["batch_rows"] / be.stats["decode_steps"]
    assert together == alone
    assert rows_per_step > 1.0  # they really shared decode steps


def test_same_seed_same_sample_regardless_of_batch_company(backend):
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=30, stop_token_ids=(), seed=7)
    prompts = random_prompts(4, seed=6)
    forward = backend.generate_many(prompts, params)
    reverse = backend.generate_many(prompts[::-1], params)[::-1]
    alone = backend.generate_many(prompts[:1], params)
    assert [r.token_ids for r in forward] == [r.token_ids for r in reverse]
    assert alone[0].token_ids == forward[0].token_ids


def test_top_k_one_is_greedy(backend):
    prompts = random_prompts(3, seed=8)
    greedy = backend.generate_many(prompts, GREEDY)
    top1 = backend.generate_many(prompts, SamplingParams(temperature=1.3, top_k=1, max_new_tokens=24, stop_token_ids=()))
    assert [r.token_ids for r in greedy] == [r.token_ids for r in top1]


def test_stop_token_and_stop_string_and_tool_call(backend, tokenizer):
    prompt = random_prompts(1, seed=9)[0]
    free = backend.generate_many([prompt], SamplingParams(temperature=0.0, max_new_tokens=40, stop_token_ids=()))[0]
    stop_token = free.token_ids[5]
    first = free.token_ids.index(stop_token)
    by_token = backend.generate_many([prompt], SamplingParams(temperature=0.0, max_new_tokens=40, stop_token_ids=(stop_token,)))[0]
    assert by_token.token_ids == free.token_ids[: first + 1] and by_token.stop_reason == stop_token
    assert by_token.finish_reason is FinishReason.STOP
    # a stop string spanning token boundaries, classified as a tool call via tool_call_stop
    text = tokenizer.decode(free.token_ids[10:14], skip_special_tokens=False)
    assert len(text) >= 2
    params = SamplingParams(temperature=0.0, max_new_tokens=40, stop_token_ids=(), stop_strings=(text,), tool_call_stop=text)
    by_string = backend.generate_many([prompt], params)[0]
    assert text in tokenizer.decode(by_string.token_ids, skip_special_tokens=False)
    assert text not in tokenizer.decode(by_string.token_ids[:-1], skip_special_tokens=False)
    assert by_string.finish_reason is FinishReason.TOOL_CALL and by_string.stop_reason == text
    assert by_string.token_ids == free.token_ids[: len(by_string.token_ids)]


def test_stops_right_after_tool_call_close(model, tokenizer, scripted_tool_closer):
    fmt = ChatFormatter(tokenizer)
    tool_close = tokenizer.convert_tokens_to_ids("</tool_call>")
    prompt = fmt.initial_prompt_ids([{"role": "user", "content": "Multiply 17 by 23."}])
    scripted = scripted_tool_closer(model, tool_close, position=len(prompt) + 5)  # 7th completion token
    with TransformersBackend(scripted, tokenizer) as be:
        for stop_ids in (fmt.stop_token_ids, ()):  # matched as a stop token, then as a stop string
            params = SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=stop_ids, stop_strings=fmt.stop_strings)
            result = be.generate_many([prompt], params)[0]
            assert result.finish_reason is FinishReason.TOOL_CALL
            assert result.token_ids[-1] == tool_close and len(result.token_ids) == 7
            assert result.stop_reason == (tool_close if stop_ids else "</tool_call>")


class PoisonedPrefill(torch.nn.Module):
    """The tiny model, except that a prefill containing token 13 raises."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        if input_ids.shape[1] > 1 and bool((input_ids == 13).any()):
            raise RuntimeError("poisoned prompt")
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)


def test_a_failing_prefill_fails_only_its_own_requests(model, tokenizer):
    params = SamplingParams(temperature=0.0, max_new_tokens=60, stop_token_ids=())
    healthy = random_prompts(2, seed=15)
    healthy = [[t if t != 13 else 14 for t in p] for p in healthy]
    with TransformersBackend(PoisonedPrefill(model), tokenizer, max_prefill_tokens=10) as be:
        running = be.submit(healthy[0], params)
        while be.stats["generated_tokens"] < 5:
            time.sleep(0.001)
        poisoned = be.submit([13] * 12, params)  # its own prefill group (token budget 10)
        later = be.submit(healthy[1], params)
        with pytest.raises(RuntimeError, match="poisoned prompt"):
            poisoned.result(timeout=60)
        assert len(running.result(timeout=60).token_ids) == 60
        assert len(later.result(timeout=60).token_ids) == 60


def test_episode_loss_mask_and_logprobs_line_up_with_the_model(backend, model, tokenizer):
    fmt = ChatFormatter(tokenizer)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=11, stop_token_ids=fmt.stop_token_ids,
                            stop_strings=fmt.stop_strings)
    prompt = fmt.initial_prompt_ids([{"role": "user", "content": "What is 17 * 23?"}])
    first = backend.generate_many([prompt], params)[0]
    observation = fmt.observation_ids([{"role": "tool", "content": "391"}], first.token_ids)
    second = backend.generate_many([prompt + first.token_ids + observation], params)[0]
    episode = Episode("test", "t0", [
        Turn(prompt, first.token_ids, first.logprobs, first.finish_reason, first.policy_version),
        Turn(observation, second.token_ids, second.logprobs, second.finish_reason, second.policy_version),
    ])
    sample = episode.training_view()
    sampled_positions = [i for i, m in enumerate(sample.loss_mask) if m]
    expected = list(range(len(prompt), len(prompt) + len(first.token_ids)))
    start = len(prompt) + len(first.token_ids) + len(observation)
    expected += list(range(start, start + len(second.token_ids)))
    assert sampled_positions == expected
    # teacher forcing the whole training sequence reproduces every behaviour log-prob
    with torch.no_grad():
        logits_T_V = model(torch.tensor([sample.token_ids])).logits[0].float()
    logprobs_T_V = torch.log_softmax(logits_T_V, dim=-1)
    for i in sampled_positions:
        assert abs(logprobs_T_V[i - 1, sample.token_ids[i]].item() - sample.behaviour_logprobs[i]) < 1e-4


def test_weight_update_mid_generation_keeps_in_flight_requests(model, tokenizer):
    new_model = build_tiny_model(tokenizer, seed=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=200, stop_token_ids=())
    prompts = random_prompts(4, seed=12)
    with TransformersBackend(model, tokenizer) as old_only:
        old = old_only.generate_many(prompts, params)
    local = build_tiny_model(tokenizer, seed=0)  # the backend updates its model in place
    with TransformersBackend(local, tokenizer) as be:
        futures = [be.submit(p, params) for p in prompts]
        while be.stats["decode_steps"] < 10:
            time.sleep(0.001)
        be.update_weights(new_model.state_dict(), version=1)
        steps_at_update = be.stats["decode_steps"]
        assert be.policy_version == 1
        late = be.generate_many(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=()))[0]
        results = [f.result(timeout=60) for f in futures]
    assert steps_at_update < 199  # the update landed while the requests were in flight
    for before, result in zip(old, results):
        assert len(result.token_ids) == 200 and result.finish_reason is FinishReason.LENGTH
        assert (result.policy_version, result.final_policy_version) == (0, 1)
        assert result.token_ids[:10] == before.token_ids[:10]  # sampled under the old weights
        assert result.token_ids != before.token_ids  # and continued under the new ones
    assert (late.policy_version, late.final_policy_version) == (1, 1)
    reference = teacher_forced_logprobs(new_model, prompts[0], late.token_ids)
    assert max(abs(a - b) for a, b in zip(reference, late.logprobs)) < 1e-4
    assert torch.equal(local.lm_head.weight, new_model.lm_head.weight)


def test_bad_weight_updates_are_rejected_without_harm(backend, model):
    with pytest.raises(KeyError, match="not in the model"):
        backend.update_weights({"nope.weight": torch.zeros(1)}, version=5)
    with pytest.raises(ValueError, match="shape"):
        backend.update_weights({"lm_head.weight": torch.zeros(3, 3)}, version=5)
    assert backend.policy_version == 0
    backend.update_weights(model, version=2)  # a module is accepted too (same weights here)
    assert backend.policy_version == 2


def test_asyncio_callers_and_cancellation(backend):
    prompts = random_prompts(8, seed=13)
    long = SamplingParams(temperature=0.0, max_new_tokens=3000, stop_token_ids=())

    async def main():
        doomed = asyncio.ensure_future(backend.generate(prompts[0], long))
        results = await asyncio.gather(*(backend.generate(p, GREEDY) for p in prompts[1:]))
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return results

    results = asyncio.run(main())
    assert all(len(r.token_ids) == 24 for r in results)
    deadline = time.monotonic() + 10
    while backend.active_rows and time.monotonic() < deadline:  # the cancelled row leaves the batch
        time.sleep(0.01)
    assert backend.active_rows == 0


def test_context_window_and_close(model, tokenizer):
    be = TransformersBackend(model, tokenizer)
    window = model.config.max_position_embeddings
    full = be.generate_many([[5] * window], GREEDY)[0]
    assert full.token_ids == [] and full.finish_reason is FinishReason.LENGTH
    near = be.generate_many([[5] * (window - 3)], GREEDY)[0]
    assert len(near.token_ids) == 3 and near.finish_reason is FinishReason.LENGTH
    pending = be.submit([5, 6, 7], SamplingParams(temperature=0.0, max_new_tokens=3500, stop_token_ids=()))
    be.close()
    aborted = pending.result(timeout=10)
    assert aborted.finish_reason is FinishReason.ABORT and len(aborted.token_ids) < 3500
    with pytest.raises(BackendClosedError):
        be.submit([1, 2], GREEDY)


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(stop_strings=("",))
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_gpu_batched_greedy_and_logprobs(tokenizer):
    model = build_tiny_model(tokenizer, seed=0).to("cuda")
    prompts = random_prompts(6, seed=14)
    with TransformersBackend(model, tokenizer) as be:
        batched = be.generate_many(prompts, GREEDY)
        single = [be.generate_many([p], GREEDY)[0] for p in prompts]
        sampled = be.generate_many(prompts, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=3, stop_token_ids=()))
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    cpu_model = model.to("cpu")
    for prompt, result in zip(prompts, sampled):
        reference = teacher_forced_logprobs(cpu_model, prompt, result.token_ids)
        assert max(abs(a - b) for a, b in zip(reference, result.logprobs)) < 1e-4


def test_shared_prompts_and_prefix_are_computed_once_with_the_same_results(model, tokenizer):
    fmt = ChatFormatter(tokenizer)
    questions = [f"What is {a}+{b}?" for a, b in ((3, 4), (17, 25), (9, 90))]
    prompts = [fmt.initial_prompt_ids([{"role": "user", "content": q}]) for q in questions for _ in range(4)]
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=())
    with TransformersBackend(model, tokenizer, min_shared_prefix=0) as plain:  # one at a time: nothing shared
        expected = [plain.generate_many([p], params)[0] for p in prompts]
        assert plain.stats["prefill_tokens"] == plain.stats["prompt_tokens"]
    with TransformersBackend(model, tokenizer) as shared:
        results = shared.generate_many(prompts, params)
        later = shared.generate_many([prompts[0]], params)[0]  # alone: reuses the kept prefix
        stats = shared.stats
    assert [r.token_ids for r in results] == [r.token_ids for r in expected] and later.token_ids == expected[0].token_ids
    assert stats["prefill_tokens"] < stats["prompt_tokens"] / 3  # 12 prompts, 3 distinct, one shared header
    for prompt, result in zip(prompts[::4], results[::4]):
        reference = teacher_forced_logprobs(model, prompt, result.token_ids)
        assert max(abs(a - b) for a, b in zip(reference, result.logprobs)) < 1e-4


def test_uneven_requests_leave_the_batch_as_they_finish_and_match_single_decoding(model, tokenizer):
    rng = random.Random(21)
    prompts = random_prompts(12, seed=21, low=3, high=150)  # longer prompts arrive later: the cache moves right
    budgets = [rng.randint(1, 90) for _ in prompts]
    with TransformersBackend(model, tokenizer) as be:
        alone = [be.generate_many([p], SamplingParams(temperature=0.0, max_new_tokens=m, stop_token_ids=()))[0]
                 for p, m in zip(prompts, budgets)]
        steps_before, rows_before = be.stats["decode_steps"], be.stats["batch_rows"]
        futures = []
        for prompt, budget in zip(prompts, budgets):
            futures.append(be.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=budget, stop_token_ids=())))
            time.sleep(0.01)  # staggered arrivals join a running batch
        together = [f.result(timeout=120) for f in futures]
        rows = be.stats["batch_rows"] - rows_before
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert all(len(r.token_ids) == m for r, m in zip(together, budgets))
    # every decode-step row produced a token someone asked for (the first comes from the prefill)
    assert rows == sum(m - 1 for m in budgets) and be.stats["decode_steps"] - steps_before < sum(budgets)


def test_stop_checks_do_python_work_only_for_flagged_rows(model, tokenizer):
    calls = []
    with TransformersBackend(model, tokenizer) as be:
        check = be._check_stop
        be._check_stop = lambda request, token_ids: calls.append(1) or check(request, token_ids)
        params = SamplingParams(temperature=1.0, max_new_tokens=40, stop_token_ids=(), stop_strings=("</tool_call>",))
        results = be.generate_many(random_prompts(32, seed=22), params)
    finished_by_length = sum(r.finish_reason is FinishReason.LENGTH for r in results)
    # one check per finished row plus the rows whose token could end "</tool_call>" (contains ">"),
    # not one per row and step (32 x 40)
    assert finished_by_length + sum(r.finish_reason is not FinishReason.LENGTH for r in results) == 32
    assert len(calls) < 32 * 40 / 5


def test_inverse_cdf_sampling_draws_each_token_with_its_probability():
    from spo_agents.backends.decode_rows import inverse_cdf_sample

    probs_B_V = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0], [0.1, 0.0, 0.0, 0.9]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros_like(probs_B_V)
    draws = 40_000
    for _ in range(draws // 1000):
        uniform_NB = torch.rand(1000, 3, generator=generator, dtype=torch.float64)
        for row in range(3):
            tokens = inverse_cdf_sample(probs_B_V[row].expand(1000, 4), uniform_NB[:, row])
            counts[row] += torch.bincount(tokens, minlength=4)
    frequencies = counts / draws
    assert torch.all(frequencies[probs_B_V == 0] == 0)  # a filtered-out token is never drawn
    assert torch.allclose(frequencies, probs_B_V, atol=0.01)  # ~4 standard errors at 40,000 draws
    edges = inverse_cdf_sample(torch.tensor([[0.25, 0.25, 0.25, 0.25]] * 2), torch.tensor([0.0, 1.0 - 1e-12],
                                                                                         dtype=torch.float64))
    assert edges.tolist() == [0, 3]


def test_sampled_first_tokens_follow_the_models_top_k_distribution(model, tokenizer):
    prompt = random_prompts(1, seed=9)[0]
    with torch.no_grad():
        logits_V = model(torch.tensor([prompt])).logits[0, -1].float()
    top_values, top_ids = torch.topk(logits_V, 3)
    expected = torch.softmax(top_values, dim=-1)
    params = SamplingParams(temperature=1.0, top_k=3, max_new_tokens=1, stop_token_ids=())
    with TransformersBackend(model, tokenizer, max_batch_size=64, seed=3) as backend:
        results = backend.generate_many([prompt] * 3000, params)
    drawn = torch.tensor([r.token_ids[0] for r in results])
    assert set(drawn.tolist()) <= set(top_ids.tolist())
    frequencies = torch.stack([(drawn == token).float().mean() for token in top_ids])
    assert torch.allclose(frequencies, expected, atol=0.035), (frequencies, expected)


def test_requests_arriving_during_decoding_are_prefilled_together(model, tokenizer):
    """While a batch decodes, arrivals wait until `admit_batch` of them can share one prefill
    call, or until the oldest has waited `admit_wait_steps` decode steps."""
    long = SamplingParams(temperature=0.0, max_new_tokens=400, stop_token_ids=())
    short = SamplingParams(temperature=0.0, max_new_tokens=4, stop_token_ids=())
    prompts = random_prompts(5, seed=11)
    with TransformersBackend(model, tokenizer, admit_batch=3, admit_wait_steps=10_000) as backend:
        running = backend.submit(prompts[0], long)
        while backend.stats["decode_steps"] < 3:
            time.sleep(0.005)
        early = [backend.submit(p, short) for p in prompts[1:3]]
        time.sleep(0.3)
        assert backend.active_rows == 1 and not any(f.done() for f in early)  # two of three: they wait
        prefills_before = backend.stats["prefill_tokens"]
        third = backend.submit(prompts[3], short)
        results = [f.result(timeout=60) for f in early + [third]]
        assert not running.done()  # admitted while the long request was still decoding
        assert backend.stats["prefill_tokens"] - prefills_before <= sum(len(p) for p in prompts[1:4])
        alone = backend.generate_many(prompts[1:4], short)
        assert [r.token_ids for r in results] == [r.token_ids for r in alone]
        running.cancel()
    with TransformersBackend(model, tokenizer, admit_batch=100, admit_wait_steps=2) as backend:
        running = backend.submit(prompts[0], long)
        while backend.stats["decode_steps"] < 3:
            time.sleep(0.005)
        assert len(backend.submit(prompts[4], short).result(timeout=60).token_ids) == 4  # by the step rule
        assert not running.done()
        running.cancel()
    with pytest.raises(ValueError):
        TransformersBackend(model, tokenizer, admit_batch=0)
