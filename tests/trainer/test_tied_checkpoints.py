"""Models with tied input/output embeddings (SmolLM2, small Qwen, Llama-3.2) through a real
`spo-agents train`, `train --resume` and `eval`, full fine-tuning and LoRA.

Before checkpoints went through safetensors' `save_model`, the final checkpoint of every such
run raised ("Some tensors share memory"), so `train` exited 1.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer
from spo_agents.cli import main
from spo_agents.trainer.checkpoint import latest_checkpoint, load_weights
from spo_agents.trainer.config import load_config
from spo_agents.trainer.api import policy_for_checkpoint
from spo_agents.trainer.lora import merged_state_dict
from spo_agents.trainer.loop import Trainer


@pytest.fixture(scope="module")
def tied_folder(tmp_path_factory):
    """A Hugging Face model folder (config.json, safetensors, tokenizer) with tied embeddings."""
    folder = tmp_path_factory.mktemp("tied-model")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _sets(folder, steps, extra=()):
    items = [f"model={folder}", "warm_start=null", "env_kwargs={}", f"steps={steps}", "batch_size=4",
             "checkpoint_every=1", "eval.num_tasks=2", "rollout.num_slots=4", "rollout.max_tokens_per_turn=12",
             "rollout.max_tokens_per_episode=32", "optim.lr=0.01", *extra]
    return [arg for item in items for arg in ("--set", item)]


def _is_tied(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_tied_model_trains_resumes_and_evaluates(tmp_path, capsys, tied_folder, lora):
    extra = ["lora={r: 2, alpha: 4}"] if lora else []
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--no-progress", *_sets(tied_folder, 2, extra)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "step-000002"

    # resume: the restored training model is still tied and holds the checkpoint's weights
    config = load_config(run / "config.yaml", ["steps=3"])
    trainer = Trainer(config, resume=True, show_progress=False)
    trainer._restore()
    assert trainer.step == 2 and _is_tied(trainer.policy.train_model)
    fresh = Trainer(config, resume=False, show_progress=False).policy.train_model
    load_weights(checkpoint, fresh)
    for (name, a), (_, b) in zip(trainer.policy.train_model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    trainer.policy.backend.close()
    assert main(["train", "--resume", "--output-dir", str(run), "--no-progress", *_sets(tied_folder, 3, extra)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3

    # eval of the checkpoint: the backend runs the checkpoint's weights (LoRA adapters merged in).
    # An untrained model scores 0 (no gradient), so mark the checkpoint's q_proj (or its
    # adapter) to see that exactly those weights arrive.
    step3 = latest_checkpoint(run)
    weights = load_file(str(step3 / "model.safetensors"))
    marked = [k for k in weights if "q_proj" in k and ("lora_B" in k if lora else True)]
    assert marked
    for k in marked:
        weights[k] = weights[k] + 0.5
    save_file(weights, str(step3 / "model.safetensors"))
    policy = policy_for_checkpoint(step3)
    try:
        assert _is_tied(policy.train_model)
        merged = merged_state_dict(policy.train_model)
        backend_state = policy.backend.model.state_dict()
        assert all(torch.equal(merged[k], backend_state[k]) for k in backend_state)
        untrained = build_tiny_model(build_tiny_tokenizer(), seed=0, tie_word_embeddings=True).state_dict()
        changed = {k for k in backend_state if not torch.equal(backend_state[k], untrained[k])}
        assert {k for k in changed if "q_proj" in k} == {k for k in untrained if "q_proj" in k}
    finally:
        policy.backend.close()
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(step3), "--tasks", "2", "-k", "1", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"] == 2


def test_load_weights_rejects_a_checkpoint_of_another_model(tmp_path, tied_folder):
    from safetensors.torch import save_model

    tokenizer = build_tiny_tokenizer()
    save_model(build_tiny_model(tokenizer, hidden_size=32), str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        load_weights(tmp_path, build_tiny_model(tokenizer, tie_word_embeddings=True))
