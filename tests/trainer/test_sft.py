"""`spo-agents sft`: demonstrations laid out as the rollout engine would, loss falls, the trainer loads the result."""

import argparse
import asyncio
import json

import gymnasium
import pytest
import torch
from safetensors.torch import load_file

from spo_agents.backends.models import build_tiny_tokenizer
from spo_agents.chat import ChatFormatter, load_template
from spo_agents.cli import sft_cmd
from spo_agents.trainer.config import load_config
from spo_agents.trainer.parts import build_policy, task_ids
from spo_agents.trainer.sft import SFT_MARKER, SFTConfig, demonstrations, ensure_warm_start, run_sft

ENV = "spo/Calculator-v0"
SMALL = {"tiny_hidden_size": 32, "tiny_layers": 1, "num_demos": 12, "steps": 8, "batch_size": 4, "lr": 3e-3}


def test_demonstrations_are_train_split_oracle_episodes_with_only_assistant_tokens_in_the_loss():
    formatter = ChatFormatter(build_tiny_tokenizer())
    demos = demonstrations(formatter, ENV, {"difficulty": 1}, num_demos=5)
    train, heldout = set(task_ids(ENV, {"difficulty": 1}, "train")), set(task_ids(ENV, {"difficulty": 1}, "heldout"))
    assert len({d.task_id for d in demos}) == 5
    assert all(d.task_id in train and d.task_id not in heldout for d in demos)
    for demo in demos:
        assert demo.reward == 1.0 and len(demo.token_ids) == len(demo.loss_mask)
        assistant = formatter.decode([t for t, m in zip(demo.token_ids, demo.loss_mask) if m])
        assert assistant.startswith('<tool_call>{"name": "calculator"') and assistant.endswith("}.<|im_end|>")
        assert "\\boxed{" in assistant and "<tool_response>" not in assistant and "user" not in assistant
        text = formatter.decode(demo.token_ids)
        assert text.count("<|im_start|>assistant") == 2 and text.endswith("<|im_end|>")


def test_sft_lowers_the_demonstration_loss_and_the_trainer_starts_from_its_weights(tmp_path):
    out = tmp_path / "sft"
    summary = run_sft(SFTConfig(**SMALL, output_dir=str(out)), log=lambda _: None)
    assert summary["loss_after"] < summary["loss_before"] - 0.5
    marker = json.loads((out / SFT_MARKER).read_text())
    assert marker["base_model"] == "tiny" and marker["demonstrations"] == 12
    saved = load_file(str(out / "model.safetensors"))
    policy = build_policy(str(out))
    try:
        for name, tensor in policy.train_model.state_dict().items():
            assert torch.equal(tensor, saved[name]), name
        assert policy.train_model.config.hidden_size == 32
        assert policy.formatter.template == load_template("chatml_compact")  # tiny's default, saved with it
    finally:
        policy.backend.close()

    from spo_agents.trainer.loop import Trainer

    config = load_config(None, [f"model={out}", "env_kwargs={difficulty: 1}", "steps=1", "batch_size=2",
                                "eval.enabled=false", "rollout.num_slots=2", "rollout.max_tokens_per_turn=8",
                                "rollout.max_tokens_per_episode=16", f"output_dir={tmp_path / 'run'}"])
    result = asyncio.run(Trainer(config, show_progress=False).run())
    assert result["steps"] == 1
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "step-000001" / "model.safetensors"))
    assert set(trained) == set(saved) and trained["model.embed_tokens.weight"].shape[1] == 32


def test_sft_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sft_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["sft", "--steps", "2", "--output-dir", str(tmp_path / "m"), "--set", "num_demos=4",
                              "--set", "batch_size=2", "--set", "tiny_hidden_size=32", "--set", "tiny_layers=1"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["demonstrations"] == 4
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / SFT_MARKER).exists()
    with pytest.raises(Exception):
        sft_cmd.load_sft_config(None, ["no_such_field=1"])


def test_shared_prefix_loss_equals_the_full_sequence_loss_and_its_gradient_reaches_the_weights():
    from spo_agents.learner.update import token_logprobs
    from spo_agents.trainer.sft import build_base, demonstration_loss, shared_prefix_length

    loaded = build_base(SFTConfig(tiny_hidden_size=32, tiny_layers=2))
    demos = demonstrations(ChatFormatter(loaded.tokenizer), ENV, {"difficulty": 1}, num_demos=4)
    prefix = shared_prefix_length(demos)
    assert 100 < prefix < min(d.loss_mask.index(1) for d in demos)
    total = sum(sum(d.loss_mask) for d in demos)
    with torch.no_grad():
        reference = sum(float(-(token_logprobs(loaded.model, torch.tensor([d.token_ids]),
                                               torch.ones(1, len(d.token_ids), dtype=torch.long))[0]
                                * torch.tensor(d.loss_mask, dtype=torch.float32)).sum()) for d in demos) / total
    loss = demonstration_loss(loaded.model, demos, microbatch_tokens=4096, backward=True)
    assert loss == pytest.approx(reference, rel=1e-5)
    assert loaded.model.lm_head.weight.grad is not None and loaded.model.lm_head.weight.grad.abs().sum() > 0


def test_sft_overrides_of_a_dict_field_add_to_its_defaults():
    config = sft_cmd.load_sft_config(None, ["env_kwargs.num_tasks=500"])
    assert config.env_kwargs == {**SFTConfig().env_kwargs, "num_tasks": 500}


def test_warm_start_runs_once_into_the_model_folder_and_reruns_only_when_its_settings_change(tmp_path):
    folder, lines = tmp_path / "warm", []
    settings = SFTConfig(**SMALL)
    ensure_warm_start(str(folder), settings, log=lines.append)
    marker = folder / SFT_MARKER
    first = json.loads(marker.read_text())
    assert first["config"]["output_dir"] == str(folder) and first["steps"] == SMALL["steps"]
    weights = (folder / "model.safetensors").read_bytes()
    ensure_warm_start(str(folder), settings, log=lines.append)  # same settings: reused, not retrained
    assert (folder / "model.safetensors").read_bytes() == weights and "reusing" in lines[-1]
    ensure_warm_start(str(folder), settings.model_copy(update={"steps": 3}), log=lines.append)
    assert json.loads(marker.read_text())["steps"] == 3
    foreign = tmp_path / "someone-elses-model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a warm start"):
        ensure_warm_start(str(foreign), settings, log=lines.append)
    assert (foreign / "config.json").read_text() == "{}"


def test_trainer_with_warm_start_config_runs_sft_first(tmp_path):
    from spo_agents.trainer.loop import Trainer

    model = tmp_path / "warm"
    warm = ", ".join(f"{k}: {v}" for k, v in SMALL.items())
    config = load_config(None, [f"model={model}", f"warm_start={{{warm}}}", "env_kwargs={difficulty: 1}", "steps=1",
                                "batch_size=2", "eval.enabled=false", "rollout.num_slots=2",
                                "rollout.max_tokens_per_turn=8", "rollout.max_tokens_per_episode=16",
                                f"output_dir={tmp_path / 'run'}"])
    result = asyncio.run(Trainer(config, show_progress=False).run())
    assert result["steps"] == 1 and (model / SFT_MARKER).is_file()
    assert load_file(str(tmp_path / "run" / "checkpoints" / "step-000001" / "model.safetensors"))[
        "model.embed_tokens.weight"].shape[1] == SMALL["tiny_hidden_size"]



def test_direct_answer_demonstrations_reply_at_once_on_the_matching_tasks_only():
    from spo_agents.trainer.config import DirectAnswers

    formatter = ChatFormatter(build_tiny_tokenizer(), "chatml_compact")
    env_kwargs = {"difficulty": 1}
    product = DirectAnswers(fraction=0.7, where={"template": "product"})
    mixed = demonstrations(formatter, ENV, env_kwargs, num_demos=80, direct=product)
    with_tool = {d.task_id: d for d in demonstrations(formatter, ENV, env_kwargs, num_demos=80)}
    assert [d.task_id for d in mixed] == list(with_tool)  # same tasks; only the strategy differs
    tasks = gymnasium.make(ENV, **env_kwargs, split="train").unwrapped.splits["train"]
    direct = [d for d in mixed if "<tool_call>" not in formatter.decode(d.token_ids)]
    products = [d for d in mixed if tasks.get(d.task_id).metadata["template"] == "product"]
    assert direct and all(tasks.get(d.task_id).metadata["template"] == "product" for d in direct)
    assert 0.4 * len(products) <= len(direct) <= 0.95 * len(products)
    assert all(d.reward == 1.0 for d in mixed)  # the demonstrator's direct answers are right
    for demo in direct:
        reply = formatter.decode([t for t, m in zip(demo.token_ids, demo.loss_mask) if m])
        full = with_tool[demo.task_id]
        assert formatter.decode([t for t, m in zip(full.token_ids, full.loss_mask) if m]).endswith(reply)
        assert "\\boxed{" in reply and formatter.decode(demo.token_ids).count("<|im_start|>assistant") == 1
    everything = demonstrations(formatter, ENV, env_kwargs, num_demos=5, direct=DirectAnswers(fraction=1.0))
    assert all("<tool_call>" not in formatter.decode(d.token_ids) for d in everything)


CHAIN = "spo/ChainCalc-v0"
SHORT_CHAINS = {"digits": 1, "max_steps": 4, "num_tasks": 300, "instructions": False}


def _assistant_turns(formatter, demo):
    """The assistant turns of a demonstration, as text (each run of loss-masked tokens)."""
    turns, current = [], []
    for token, in_loss in zip(demo.token_ids, demo.loss_mask):
        if in_loss:
            current.append(token)
        elif current:
            turns, current = turns + [formatter.decode(current)], []
    return turns + ([formatter.decode(current)] if current else [])


def test_call_scope_skips_the_matching_tool_calls_of_a_multi_turn_task():
    from spo_agents.trainer.config import DirectAnswers

    formatter = ChatFormatter(build_tiny_tokenizer(), "chatml_compact")
    tasks = gymnasium.make(CHAIN, **SHORT_CHAINS).unwrapped.splits["train"]
    full = demonstrations(formatter, CHAIN, SHORT_CHAINS, num_demos=60)
    adds_in_head = DirectAnswers(fraction=1.0, scope="call", pattern=r" \+ ")
    skipped = demonstrations(formatter, CHAIN, SHORT_CHAINS, num_demos=60, direct=adds_in_head)
    assert [d.task_id for d in skipped] == [d.task_id for d in full]
    assert all(d.reward == 1.0 for d in skipped)  # the skipped steps' reports are still right
    for with_tool, in_head in zip(full, skipped):
        ops = [op for op, _ in tasks.get(with_tool.task_id).metadata["steps"]]
        calls = [t for t in _assistant_turns(formatter, in_head) if "<tool_call>" in t]
        assert len(calls) == len(ops) - ops.count("add") and not any(" + " in c for c in calls)
        reports = [t for t in _assistant_turns(formatter, in_head) if "<tool_call>" not in t]
        assert reports == [t for t in _assistant_turns(formatter, with_tool) if "<tool_call>" not in t]
    assert sum(len(_assistant_turns(formatter, d)) for d in skipped) < sum(len(_assistant_turns(formatter, d))
                                                                             for d in full)
    every_call = demonstrations(formatter, CHAIN, SHORT_CHAINS, num_demos=60,
                                direct=DirectAnswers(fraction=0.5, scope="call"))
    calls = [sum("<tool_call>" in t for t in _assistant_turns(formatter, d)) for d in every_call]
    steps = [len(tasks.get(d.task_id).metadata["steps"]) for d in every_call]
    assert 0.25 * sum(steps) < sum(calls) < 0.75 * sum(steps)  # half of all calls, whatever their operation
    assert all(d.reward == 1.0 for d in every_call)


def test_env_text_corpus_makes_the_env_words_whole_tokens():
    from spo_agents.trainer.sft import build_base, env_text_corpus

    corpus = env_text_corpus(CHAIN, SHORT_CHAINS, num_episodes=30)
    heldout = gymnasium.make(CHAIN, **SHORT_CHAINS, split="heldout").unwrapped.splits["heldout"]
    assert not {t.prompt for t in heldout} & set(corpus)  # the train split only
    assert any(text.startswith("<tool_call>") for text in corpus) and any("Correct." in t for t in corpus)
    generic = build_base(SFTConfig(env_id=CHAIN, env_kwargs=SHORT_CHAINS, tiny_hidden_size=16, tiny_layers=1))
    fitted = build_base(SFTConfig(env_id=CHAIN, env_kwargs=SHORT_CHAINS, tiny_hidden_size=16, tiny_layers=1,
                                  tiny_tokenizer_env_episodes=30))
    text = "Step 2 of 3: take the remainder of the previous result divided by 7."
    lengths = [len(m.tokenizer.encode(text, add_special_tokens=False)) for m in (generic, fitted)]
    assert lengths[1] < lengths[0]
    assert len(fitted.tokenizer.encode("12345", add_special_tokens=False)) == 5  # digits stay single tokens
    assert fitted.tokenizer.decode(fitted.tokenizer.encode(text, add_special_tokens=False)) == text
