"""kill -9 during training, then --resume: tracker restored exactly, no finished episode lost."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from spo_agents.rollout.episode import read_episode_log
from spo_agents.trainer.checkpoint import latest_checkpoint
from spo_agents.trainer.config import load_config
from spo_agents.trainer.loop import Trainer

ARGS = ["model=tiny", "warm_start=null", "env_kwargs={}", "steps=200", "batch_size=4", "checkpoint_every=1", "eval.enabled=false", "rollout.num_slots=4",
        "rollout.max_tokens_per_turn=12", "rollout.max_tokens_per_episode=40", "optim.lr=1e-3"]


def test_kill_and_resume(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "spo_agents", "train", "--output-dir", str(run), "--no-progress"]
    for item in ARGS:
        command += ["--set", item]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        path = latest_checkpoint(run)
        if path is not None and json.loads((path / "state.json").read_text())["step"] >= 3:
            break
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    logged_before = read_episode_log(run / "episodes.jsonl")
    checkpoint = latest_checkpoint(run)
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["counters"]["episodes"] <= len(logged_before)  # every episode used was logged first

    target = saved["step"] + 2
    config = load_config(run / "config.yaml", [f"steps={target}"])
    trainer = Trainer(config, resume=True, show_progress=False)
    trainer._restore()
    assert trainer.step == saved["step"]
    assert trainer.tracker.state_dict() == saved["tracker"]
    assert trainer.drift_cache.state_dict() == saved["drift_cache"]
    assert trainer.updater.version == saved["step"]
    summary = asyncio.run(trainer.run())
    assert summary["steps"] == target
    logged_after = read_episode_log(run / "episodes.jsonl")
    assert [e.to_json() for e in logged_after[: len(logged_before)]] == [e.to_json() for e in logged_before]
    assert len(logged_after) > len(logged_before)
