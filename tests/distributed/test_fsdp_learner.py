"""The sharded learner (FSDP2, 2 processes, gloo) takes the single-process step: same weights
after each step (gathered), same reported metrics; a sharded checkpoint resumes exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_cases import STEPS, batch, make_updater

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_process_fsdp_steps_match_the_single_process_steps_and_resume(tmp_path):
    out = tmp_path / "fsdp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "fsdp_worker.py"), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(out)
    assert sharded["world"] == 2 and sharded["layers"] == ["LlamaDecoderLayer"]

    updater, tokenizer = make_updater(share_prefix=False)  # the sharded learner's one call per micro-batch
    full = {n: tuple(p.shape) for n, p in updater.model.named_parameters()}
    # really sharded: each rank holds half of dim 0 of every parameter
    assert all(sharded["local_shapes"][n][0] == (shape[0] + 1) // 2 for n, shape in full.items())
    initial = {k: v.clone() for k, v in updater.model.state_dict().items()}
    single = []
    for step in range(STEPS):
        samples, advantages = batch(updater, tokenizer, step)
        single.append(updater.step(samples, advantages))
        state = updater.model.state_dict()
        gathered = sharded["states"][step]
        assert set(gathered) == set(state)
        moved = max(float((state[k] - initial[k]).abs().max()) for k in state)
        worst = max(float((state[k] - gathered[k]).abs().max()) for k in state)
        # Adam's first steps divide by |g| + 1e-8: where a gradient is itself near 1e-8, float
        # rounding of the shards' differently cut micro-batches moves the update by up to ~0.2%
        # of the largest one (seen: 0.09-0.18%); a wrong normalisation would be of order `moved`
        assert moved > 1e-3 and worst < 5e-3 * moved, (step, moved, worst)
    partition_dependent = {"loss/ratio_max"}  # a max over micro-batches, which sharding cuts differently
    for ours, theirs in zip(sharded["metrics"], single, strict=True):
        assert set(ours) == set(theirs)
        for key in set(theirs) - partition_dependent:
            assert abs(ours[key] - theirs[key]) <= 1e-5 * max(1.0, abs(theirs[key])), (key, ours[key], theirs[key])
    assert single[0]["grad_norm"] > 0.5  # clipped: the norm checks the token normalisation across shards
    # the resumed run (fresh weights, sharded checkpoint of step 1) takes the same step 2
    assert sharded["resumed_version"] == 1
    last = sharded["states"][-1]
    assert all(torch.equal(sharded["resumed"][k], last[k]) for k in last)


@pytest.mark.slow
def test_spo_agents_train_with_the_sharded_learner_checkpoints_and_resumes(tmp_path):
    """`torchrun --nproc_per_node=2 -m spo_agents train --set learner_parallel=fsdp`, then --resume."""
    import json

    from safetensors.torch import load_file

    from spo_agents.backends.models import load_model

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "fsdp_train_worker.py"), str(run)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["policy/version"] for r in train] == [1, 2, 3] and [r["step"] for r in train] == [1, 2, 3]
    assert all(r["train_tokens"] > 0 and r["grad_norm"] > 0 for r in train)
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step-000003"
    for version in (1, 2, 3):  # the sharded state of each checkpoint, named by it
        assert (checkpoints / f"sharded-v{version:06d}" / ".metadata").exists()
    # model.safetensors holds the gathered weights: they moved from the start and load into the model
    final = load_file(str(checkpoints / "step-000003" / "model.safetensors"))
    start = load_model("tiny", seed=0).model.state_dict()
    assert max(float((final[k] - start[k]).abs().max()) for k in final) > 1e-4
    assert {k for k in start} >= set(final)


def test_the_sharded_learner_is_selected_by_config_and_refuses_what_it_cannot_do(monkeypatch):
    from spo_agents.distributed.learner_group import ShardedLearner
    from spo_agents.trainer.config import load_config

    assert load_config(None, ["learner_parallel=fsdp"]).learner_parallel.value == "fsdp"
    for extra in (["loss.kl_coef=0.1"], ["lora={r: 4}"]):
        with pytest.raises(ValueError, match="learner_parallel: fsdp supports neither lora nor loss.kl_coef"):
            load_config(None, ["learner_parallel=fsdp", *extra])
    with pytest.raises(ValueError, match="learner_parallel"):
        load_config(None, ["learner_parallel=zero3"])
    monkeypatch.delenv("RANK", raising=False)
    updater, _ = make_updater()
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node=2 -m spo_agents train"):
        ShardedLearner(updater.model, None, None, "cpu", Path("/nonexistent"))
