"""End-to-end: `spo-agents train` then `spo-agents eval` on the tiny model; the run folder."""

import json
from pathlib import Path

import pytest

from spo_agents.cli import main
from spo_agents.trainer.evaluate import pass_at_k

# the built-in defaults (untrained tiny model, no warm start) rather than the cpu-default preset
FAST = ["--set", "model=tiny", "--set", "warm_start=null", "--set", "env_id=spo/Calculator-v0", "--set", "env_kwargs={}", "--set", "steps=3", "--set", "batch_size=4", "--set", "eval.num_tasks=4", "--set", "rollout.num_slots=4",
        "--set", "rollout.max_tokens_per_turn=16", "--set", "rollout.max_tokens_per_episode=48",
        "--set", "checkpoint_every=2", "--no-progress"]


@pytest.mark.parametrize("algo_args", [["--algo", "spo"], ["--algo", "grpo", "--set", "group_size=2"],
                                       ["--set", "spo_update=accumulate"],
                                       ["--algo", "grpo", "--set", "group_size=2", "--set", "grpo_mode=group"]])
def test_train_writes_a_complete_run_folder(tmp_path, capsys, algo_args):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *FAST, *algo_args]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["episodes"] >= 12
    assert (run / "config.yaml").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 3 and kinds.count("eval") == 2 and kinds[-1] == "summary"
    train = [r for r in records if r["kind"] == "train"]
    assert [r["policy/version"] for r in train] == [1, 2, 3]
    for key in ("reward/mean", "loss/pg", "grad_norm", "staleness/mean", "rollout/slot_utilisation"):
        assert key in train[-1]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "plots" / "reward_mean.png").exists() and (run / "plots" / "eval_accuracy.png").exists()
    assert (run / "checkpoints" / "latest").read_text() == "step-000003"
    assert (run / "checkpoints" / "step-000003" / "model.safetensors").exists()
    assert len((run / "episodes.jsonl").read_text().splitlines()) == summary["episodes"]
    assert list((run / "transcripts").glob("*.md"))


def test_eval_of_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--output-dir", str(run), *FAST])
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run / "checkpoints" / "step-000003"), "--tasks", "3", "-k", "4",
                 "--env-arg", "difficulty=1", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tasks"] == 3 and result["k"] == 4
    assert result["env_kwargs"] == {"difficulty": 1} and result["first_task"].startswith("calc-L1-")
    for key in ("pass@1", "pass@4", "maj@4", "avg@4"):
        assert 0.0 <= result[key] <= 1.0
    assert result["pass@4"] >= result["pass@1"]


@pytest.mark.parametrize("n, c, k, expected", [(10, 0, 1, 0.0), (10, 10, 5, 1.0), (10, 3, 1, 0.3),
                                               (4, 1, 2, 0.5), (5, 2, 2, 0.7), (32, 1, 32, 1.0)])
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_score_counts_tool_calls_and_turns_per_episode():
    from spo_agents.rollout.episode import Episode, Turn
    from spo_agents.trainer.evaluate import score

    def turn(finish, reward=0.0):
        return Turn([1], [2], [0.0], finish, 0, reward=reward)

    solved = Episode("env", "a", [turn("tool_call"), turn("stop"), turn("tool_call"), turn("stop", 1.0)])
    direct = Episode("env", "b", [turn("stop")])
    metrics = score([solved, direct], ks=(1,))
    assert metrics["tool_calls/mean"] == 1.0 and metrics["turns/mean"] == 2.5 and metrics["accuracy"] == 0.5


def test_config_file_and_overrides(tmp_path):
    from spo_agents.trainer.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("algo: grpo\ngroup_size: 4\nbatch_size: 8\nrollout:\n  num_slots: 3\n")
    config = load_config(path, ["optim.lr=3e-5", "rollout.num_slots=5"])
    assert config.algo.value == "grpo" and config.optim.lr == 3e-5 and config.rollout.num_slots == 5
    with pytest.raises(ValueError, match="multiple of group_size"):
        load_config(path, ["batch_size=6"])
    with pytest.raises(ValueError):
        load_config(None, ["no_such_field=1"])
    for preset in Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"):
        assert load_config(preset) == load_config(preset.stem)  # a file path or the shipped preset's name
    with pytest.raises(FileNotFoundError, match="cpu-default"):
        load_config("no-such-preset")
    with pytest.raises(ValueError, match="warm_start writes its model"):
        load_config("cpu-default", ["model=tiny"])
    from spo_agents.backends.models import PRESETS
    from spo_agents.trainer.config import MODEL_PRESETS

    assert MODEL_PRESETS == PRESETS


def test_train_without_arguments_uses_the_cpu_default_preset_with_its_warm_start(capsys):
    assert main(["train", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["algo"] == "spo" and config["env_id"] == "spo/ChainCalc-v0" and config["device"] == "cpu"
    assert config["warm_start"]["model"] == "tiny" and config["model"] == "runs/sft"
    assert config["warm_start"]["env_kwargs"] == config["env_kwargs"]  # demonstrations on the trained env


@pytest.mark.parametrize("preset, differences", [
    ("grpo-baseline", {"algo", "output_dir"}),
    ("learning-bench", {"train_tasks", "steps", "eval", "checkpoint_every", "output_dir"}),
])
def test_presets_share_the_default_model_warm_start_and_environment(preset, differences):
    from spo_agents.trainer.config import load_config

    default, other = load_config("cpu-default", []).model_dump(), load_config(preset, []).model_dump()
    assert {key for key in default if default[key] != other[key]} == differences


def test_lora_training_pushes_merged_weights(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from spo_agents.backends.models import load_model

    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *FAST, "--set", "lora={r: 4, alpha: 8}",
                 "--set", "optim.lr=0.05"]) == 0
    saved = load_file(str(run / "checkpoints" / "step-000003" / "model.safetensors"))
    assert any("lora_A" in name for name in saved)
    base = load_model("tiny", seed=0).model.state_dict()
    frozen = [n for n in saved if n.endswith("embed_tokens.weight")]
    assert frozen and all(torch.equal(saved[n], base[n.removeprefix("base_model.model.")]) for n in frozen)


def test_merged_state_dict_matches_plain_model_names_and_values():
    import copy

    import torch

    from spo_agents.backends.models import load_model
    from spo_agents.trainer.lora import LoraSettings, merged_state_dict, wrap_with_lora

    plain = load_model("tiny", seed=0).model
    wrapped = wrap_with_lora(copy.deepcopy(plain), LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    merged = merged_state_dict(wrapped)
    assert set(merged) == set(plain.state_dict())
    name = next(n for n in merged if n.endswith("q_proj.weight"))
    assert not torch.equal(merged[name], plain.state_dict()[name])  # adapters merged in
    other = next(n for n in merged if n.endswith("k_proj.weight"))
    assert torch.equal(merged[other], plain.state_dict()[other])
    # unmerged again afterwards: the wrapped model's base weights are back to the originals
    base_name = "base_model.model." + name.replace("q_proj.weight", "q_proj.base_layer.weight")
    # (float rounding of merge + unmerge only)
    torch.testing.assert_close(wrapped.state_dict()[base_name], plain.state_dict()[name], rtol=0, atol=1e-6)


def test_the_default_pipeline_runs_its_warm_start_then_trains_and_reports_the_gain(tmp_path, capsys):
    """`spo-agents train` on the cpu-default preset, shrunk: warm start into `model`, SPO, summary."""
    model, run = tmp_path / "sft", tmp_path / "run"
    shrink = [f"model={model}", "warm_start.num_demos=16", "warm_start.steps=4", "warm_start.batch_size=4",
              "warm_start.tiny_hidden_size=32", "warm_start.tiny_layers=1", "warm_start.tiny_tokenizer_env_episodes=20",
              "steps=2", "batch_size=4",
              "rollout.num_slots=4", "rollout.max_tokens_per_turn=16", "rollout.max_tokens_per_episode=48",
              "eval.num_tasks=5", "eval.every_steps=0"]
    argv = ["train", "--output-dir", str(run), "--no-progress"] + [a for item in shrink for a in ("--set", item)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warm start: no model at" in out and (model / "sft.json").is_file()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["heldout_tasks"] == 5
    assert summary["tool_calls_per_episode_before"] >= 0 and summary["turns_per_episode_after"] >= 1
    assert summary["gain"] == pytest.approx(summary["accuracy_after"] - summary["accuracy_before"])
    low, high = summary["gain_ci95"]
    assert -1.0 <= low <= summary["gain"] <= high <= 1.0
    sft_marker = json.loads((model / "sft.json").read_text())
    assert sft_marker["config"]["direct_answers"] == {"fraction": 0.6, "where": {}, "scope": "call",
                                                      "pattern": " (\\*|//|%) "}
    assert sft_marker["env_id"] == "spo/ChainCalc-v0"
    # `eval` of the final checkpoint, without --env: the run's env and kwargs, the same tasks, greedy
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run / "checkpoints" / "step-000002"), "--tasks", "5", "-k", "1",
                 "--temperature", "0", "--slots", "4", "--json-out", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["env"] == "spo/ChainCalc-v0" and evaluated["env_kwargs"]["instructions"] is False
    assert evaluated["accuracy"] == summary["accuracy_after"]
    assert main(argv[:2] + [str(tmp_path / "run2")] + argv[3:]) == 0  # a second run reuses the warm start
    assert "warm start: reusing" in capsys.readouterr().out


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "spo_agents" /
                                                              "configs").glob("*.yaml")))
def test_every_shipped_preset_is_a_valid_config(preset):
    from spo_agents.trainer.config import load_config

    config = load_config(preset, [])
    assert config.output_dir.startswith("runs/") and config.steps >= 1
