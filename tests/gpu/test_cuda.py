"""GPU tests (marker `gpu`, skipped without CUDA; `scripts/gpu-check.sh` runs them on a GPU machine).

What the CPU suite cannot check: the learner's bf16 autocast on CUDA (fp32 master weights) agrees
with the fp32 CPU step; the transformers backend generates on CUDA with exact log-probs; and the
trainer runs end to end on CUDA with a bf16 inference copy.
"""

import asyncio
import copy

import pytest
import torch

from spo_agents.backends import FinishReason, SamplingParams
from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer
from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.learner.update import OptimConfig, PolicyUpdater
from spo_agents.rollout.episode import TrainingSample

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=())


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _batch(updater, tokenizer):
    generator = torch.Generator().manual_seed(5)
    prompt = tokenizer.encode("<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n")
    samples, advantages = [], [1.0, -0.5, 0.8, -1.2]
    for reply in ["42", "it is 42", "no idea at all", "6 * 7 = 42"]:
        ids = prompt + tokenizer.encode(reply)
        mask = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        current = updater.logprobs([ids])[0]
        noise = 0.3 * torch.randn(len(ids), generator=generator).numpy()
        samples.append(TrainingSample(ids, mask, [float(c + n) if m else 0.0 for c, n, m in zip(current, noise, mask)]))
    return samples, advantages


def test_bf16_learner_step_on_cuda_agrees_with_the_fp32_cpu_step(tokenizer):
    optim = OptimConfig(lr=1e-3, microbatch_tokens=256)
    cpu_model = build_tiny_model(tokenizer, seed=0)
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    cpu, gpu = PolicyUpdater(cpu_model, optim), PolicyUpdater(gpu_model, optim, device="cuda")
    samples, advantages = _batch(cpu, tokenizer)
    ids = [s.token_ids for s in samples]
    for a, b in zip(cpu.logprobs(ids), gpu.logprobs(ids)):  # bf16 autocast on CUDA, fp32 on CPU
        assert abs(a - b).max() < 0.05
    # the gradients agree up to bf16 rounding (compared before AdamW: its first step moves each
    # weight by about lr * sign(gradient), so a gradient near zero may flip sign under rounding)
    cpu.accumulate(samples, advantages)
    gpu.accumulate(samples, advantages)
    cpu_grad = torch.cat([p.grad.flatten() for p in cpu_model.parameters()])
    gpu_grad = torch.cat([p.grad.flatten().cpu() for p in gpu_model.parameters()])
    assert float((gpu_grad - cpu_grad).norm() / cpu_grad.norm()) < 0.05
    before = {k: v.detach().clone() for k, v in gpu_model.state_dict().items()}
    cpu_metrics, gpu_metrics = cpu.apply(), gpu.apply()
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in gpu_model.parameters())
    assert all(torch.isfinite(p).all() for p in gpu_model.parameters())
    moved = max(float((gpu_model.state_dict()[k] - before[k]).abs().max()) for k in before)
    assert moved > 1e-4
    assert abs(gpu_metrics["grad_norm"] - cpu_metrics["grad_norm"]) < 0.05 * cpu_metrics["grad_norm"]
    assert gpu_metrics["train_tokens"] == cpu_metrics["train_tokens"]


def test_backend_generation_on_cuda_batched_equals_single_and_bf16_runs(tokenizer):
    model = build_tiny_model(tokenizer, seed=0).to("cuda")
    prompts = [[17, 230, 45, 9, 301], [5, 6, 7, 8, 9, 10, 11], [40, 41], [300, 200, 100, 50, 25, 12]]
    with TransformersBackend(model, tokenizer) as be:  # fp32 on CUDA: exact
        batched = be.generate_many(prompts, GREEDY)
        single = [be.generate_many([p], GREEDY)[0] for p in prompts]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert all(len(r.token_ids) == 16 and r.finish_reason is FinishReason.LENGTH for r in batched)
    half = copy.deepcopy(model).to(dtype=torch.bfloat16)  # what the trainer's inference copy is on CUDA
    with TransformersBackend(half, tokenizer) as be:
        results = be.generate_many(prompts, SamplingParams(temperature=1.0, max_new_tokens=16, seed=1,
                                                           stop_token_ids=()))
    assert all(len(r.token_ids) == 16 and all(lp <= 0 and lp > -50 for lp in r.logprobs) for r in results)


def test_a_short_training_run_on_cuda(tmp_path):
    from spo_agents.trainer.config import load_config
    from spo_agents.trainer.loop import Trainer

    config = load_config(None, ["model=tiny", "warm_start=null", "env_kwargs={}", "device=cuda", "steps=3",
                                "batch_size=4", "eval.num_tasks=4", "rollout.num_slots=4",
                                "rollout.max_tokens_per_turn=16", "rollout.max_tokens_per_episode=32",
                                f"output_dir={tmp_path / 'run'}"])
    trainer = Trainer(config, show_progress=False)
    summary = asyncio.run(trainer.run())
    assert summary["steps"] == 3 and trainer.updater.version == 3
    assert next(trainer.policy.train_model.parameters()).device.type == "cuda"
    assert next(trainer.policy.train_model.parameters()).dtype == torch.float32
    assert next(trainer.policy.backend.model.parameters()).dtype == torch.bfloat16
