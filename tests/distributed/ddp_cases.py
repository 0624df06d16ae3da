"""The learner batch both sides of the data-parallel check train on (imported by the test and by
the torchrun worker script, so both build exactly the same samples and model)."""

import torch

from spo_agents.backends.models import load_model
from spo_agents.learner.update import OptimConfig, PolicyUpdater
from spo_agents.rollout.episode import TrainingSample

OPTIM = OptimConfig(lr=1e-2, microbatch_tokens=64, grad_clip=0.5)
STEPS = 2


def make_updater(share_prefix: bool = True) -> tuple[PolicyUpdater, object]:
    """The single-process learner; `share_prefix=False` makes the one forward call per micro-batch
    that the sharded learner makes (its arithmetic, for comparing weights)."""
    tiny = load_model("tiny", seed=0)
    return PolicyUpdater(tiny.model, OPTIM.model_copy(update={"share_prefix": share_prefix})), tiny.tokenizer


def batch(updater: PolicyUpdater, tokenizer, step: int) -> tuple[list[TrainingSample], list[float]]:
    """5 episodes of uneven lengths (shards of 3 and 2), behaviour log-probs a little off-policy."""
    generator = torch.Generator().manual_seed(100 + step)
    prompt = tokenizer.encode("<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n")
    replies = ["42", "it is 42 of course", "no", "the product of six and seven is forty two", "7 * 6 = 42"]
    samples = []
    for reply in replies:
        ids = prompt + tokenizer.encode(reply)
        mask = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        current = updater.logprobs([ids])[0]
        noise = 0.3 * torch.randn(len(ids), generator=generator).numpy()
        behaviour = [float(lp + n) if m else 0.0 for lp, n, m in zip(current, noise, mask)]
        samples.append(TrainingSample(ids, mask, behaviour))
    advantages = [1.0, -0.5, -1.5, 0.8, 0.25]
    return samples, advantages
