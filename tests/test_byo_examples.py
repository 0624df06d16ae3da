"""The bring-your-own examples (docs/training.md, docs/custom-environments.md) run as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(script, tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "envs"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--output-dir", str(tmp_path / "run"),
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_reward_function_example(tmp_path):
    train, evaluation = _run("reward_function/train.py", tmp_path, "--steps", "2")
    assert train["train"]["steps"] == 2 and train["train"]["heldout_tasks"] == 8
    assert evaluation["eval"]["tasks"] == 4 and evaluation["eval"]["errors"] == 0


def test_reward_function_config_through_the_cli(tmp_path, monkeypatch, capsys):
    from spo_agents.cli import main

    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root
    assert main(["train", "--config", "examples/reward_function/config.yaml", "--output-dir", str(tmp_path / "r"),
                 "--set", "steps=1", "--set", "eval.enabled=false", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1


def test_own_environment_example(tmp_path):
    [summary] = _run("own_env_train.py", tmp_path, "--steps", "2")
    assert summary["steps"] == 2 and summary["heldout_tasks"] == 4


def test_own_model_example(tmp_path):
    train, evaluation = _run("own_model_train.py", tmp_path, "--steps", "2")
    assert train["train"]["steps"] == 2 and evaluation["eval"]["tasks"] == 4
