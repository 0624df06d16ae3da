"""`spo-agents bench learner --against trl`: the shared model, task and reward, the rotation and
the summary arithmetic, and (slow) one real run of our side through the CLI."""

import hashlib
import json

import gymnasium
import pytest

from spo_agents.bench.learner_setup import ENV_ID, build_model_folder, register_env, sum_reward, sum_tasks
from spo_agents.bench.learner_vs_trl import json_line, rotated, summarise
from spo_agents.cli import main


def test_model_folder_is_a_deterministic_tied_qwen2_of_3_2m_parameters(tmp_path):
    first, second = build_model_folder(tmp_path / "a"), build_model_folder(tmp_path / "b")
    assert first == second and 3.1e6 < first["parameters"] < 3.3e6 and first["tied_embeddings"]
    digest = [hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest() for name in "ab"]
    assert digest[0] == digest[1]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    generation = json.loads((tmp_path / "a" / "generation_config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True
    assert len(generation["eos_token_id"]) == 3  # <|im_end|>, <|endoftext|>, </tool_call>: our stops


def test_tasks_reward_and_environment():
    tasks = sum_tasks()
    assert len(tasks) == 256 and len({t.prompt for t in tasks}) == 256
    assert tasks[0].prompt.startswith("What is ") and tasks[0].prompt.endswith("?")
    assert sum_reward("so 3+4 = 7", "7") == 1.0 and sum_reward("it is 8", "7") == 0.2 and sum_reward("no", "7") == 0.0
    register_env()
    env = gymnasium.make(ENV_ID)
    observation, info = env.reset(options={"task_id": tasks[5].task_id})
    assert observation == tasks[5].prompt and info["tools"] == [] and info["system_prompt"] == ""
    _, reward, terminated, _, _ = env.step(f"The answer is {tasks[5].answer}")
    assert reward == 1.0 and terminated


def test_rounds_rotate_and_the_summary_takes_medians_and_ratios():
    assert [rotated(["trl", "grpo", "spo"], r) for r in range(4)] == [
        ["trl", "grpo", "spo"], ["grpo", "spo", "trl"], ["spo", "trl", "grpo"], ["trl", "grpo", "spo"]]
    runs = []
    for seconds, rss in ((10.0, 600.0), (20.0, 700.0), (12.0, 650.0)):  # TRL: 1000 tokens per run
        runs.append({"system": "trl", "seconds": seconds, "steps": 10, "completion_tokens": 1000, "peak_rss_mib": rss})
    for seconds, rss in ((5.0, 660.0), (4.0, 640.0), (100.0, 700.0)):  # ours: one round hit by load
        runs.append({"system": "grpo", "seconds": seconds, "steps": 10, "completion_tokens": 1000, "peak_rss_mib": rss})
    summary = summarise(runs, ["trl", "grpo"])
    assert summary["systems"]["trl"]["tok_s"] == pytest.approx(1000 / 12)
    assert summary["systems"]["grpo"]["tok_s"] == pytest.approx(1000 / 5)  # the median ignores the outlier
    assert summary["ratios"]["grpo_vs_trl_tok_s"] == pytest.approx(12 / 5)
    assert summary["ratios"]["peak_rss_vs_trl"] == pytest.approx(660 / 650)
    line = json_line({**summary, "rounds": 3, "timed_steps": 10, "load_avg_before": (1, 1, 1),
                      "load_avg_after": (2, 2, 2)})
    assert line["grpo_vs_trl_tok_s"] == pytest.approx(2.4) and "spo_vs_trl_tok_s" not in line


@pytest.mark.slow
def test_cli_runs_our_grpo_side_end_to_end(tmp_path, capsys):
    assert main(["bench", "learner", "--systems", "grpo", "--rounds", "1", "--warmup", "1", "--timed", "1",
                 "--out", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["bench"] == "learner" and line["grpo_tok_s"] > 0 and line["grpo_peak_rss_mib"] > 100
    record = json.loads((tmp_path / "result.json").read_text())["runs"][0]
    assert record["system"] == "grpo" and record["completion_tokens"] > 64  # 64 completions were trained on
